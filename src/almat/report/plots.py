"""Campaign figures: learning curve, model-deviation histograms, force parity, labels per source.

Each ``*_data`` function gathers the values from the store; each ``plot_*`` function draws exactly
those values and writes a PNG. The values are returned with the figures (``ReportData``), so what a
figure shows can be checked against the stored metrics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from almat.campaign.kinds import KINDS
from almat.query import query_labels
from almat.schemas import CalibrationDoc, IterationDoc
from almat.stores import CampaignDB

logger = logging.getLogger(__name__)

#: paper-ready defaults: readable at a column width
STYLE = {
    "font.size": 12,
    "axes.labelsize": 13,
    "axes.titlesize": 13,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


@dataclass
class ReportData:
    """The values each figure plots, and the files written."""

    campaign: str
    learning_curve: dict[str, list] = field(default_factory=dict)
    deviation: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[int, dict[str, Any]] = field(default_factory=dict)
    labels_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    calibration: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def load_iterations(db: CampaignDB, campaign: str, kind: str = "md") -> list:
    """The campaign's per-iteration records by iteration, as the documents of its ``kind``
    (``almat.campaign.kinds``: ``IterationDoc`` for md)."""
    spec = KINDS[kind]
    return sorted((spec.record_class.from_store(d) for d in getattr(db, spec.records).query({"campaign": campaign})),
                  key=lambda d: d.iteration)


# -- learning curve ----------------------------------------------------------------------------------


def learning_curve_data(iterations: list[IterationDoc]) -> dict[str, list]:
    """Per iteration: labels the committee was trained on, its held-out errors, the accurate ratio."""
    return {
        "iteration": [it.iteration for it in iterations],
        "n_train_labels": [it.n_train_labels for it in iterations],
        "n_test_structures": [it.test_errors.n_structures for it in iterations],
        "force_rmse": [it.test_errors.force_rmse for it in iterations],
        "energy_rmse_per_atom": [it.test_errors.energy_rmse_per_atom for it in iterations],
        "accurate_ratio": [it.accurate_ratio for it in iterations],
    }


def error_limits(values: list, pad: float = 1.25) -> tuple[float, float]:
    """A linear error axis: from 0 to the largest finite value (times ``pad``); (0, 1) without one."""
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[np.isfinite(v)]
    top = float(v.max()) * pad if v.size else 0.0
    return 0.0, top if top > 0 else 1.0


def plot_learning_curve(data: dict[str, list], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        x = np.array(data["n_train_labels"], dtype=float)
        rmse = np.array([np.nan if v is None else v for v in data["force_rmse"]], dtype=float)
        acc = np.array(data["accurate_ratio"], dtype=float)
        ax.plot(x, rmse, "o-", color=COLORS[0], lw=2, ms=7, label="held-out force RMSE")
        for xi, yi, it in zip(x, rmse, data["iteration"]):
            if np.isfinite(yi):
                ax.annotate(f"it {it}", (xi, yi), textcoords="offset points", xytext=(5, 6), fontsize=9,
                            color=COLORS[0])
        ax.set_xlabel("training labels (structures)")
        ax.set_ylabel("force RMSE on held-out labels (eV/Å)", color=COLORS[0])
        ax.tick_params(axis="y", colors=COLORS[0])
        ax.set_ylim(*error_limits(data["force_rmse"]))
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        ax2.plot(x, acc, "s--", color=COLORS[1], lw=2, ms=6, label="accurate ratio")
        ax2.set_ylabel("accurate ratio (fraction of explored frames)", color=COLORS[1])
        ax2.tick_params(axis="y", colors=COLORS[1])
        ax2.set_ylim(0, 1.05)
        ax2.grid(False)
        lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", frameon=False)
        ax.set_title(title or "learning curve")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# -- model deviation -----------------------------------------------------------------------------------


def deviation_data(iterations: list[IterationDoc]) -> list[dict[str, Any]]:
    """Per iteration: the stored histogram of max force deviation and the trust levels."""
    out = []
    for it in iterations:
        if it.deviation_histogram is None:
            continue
        out.append({
            "iteration": it.iteration,
            "bin_edges": list(it.deviation_histogram.bin_edges),
            "counts": list(it.deviation_histogram.counts),
            "trust_lo": it.trust_lo,
            "trust_hi": it.trust_hi,
        })
    return out


def _plot_edges(edges: list[float]) -> np.ndarray:
    """Edges for a log axis: a 0 first edge and a huge last edge (open bins) are drawn finite."""
    e = np.array(edges, dtype=float)
    if e[0] <= 0:
        e[0] = e[1] / 2
    if len(e) > 2 and e[-1] > 10 * e[-2]:
        e[-1] = e[-2] * 2
    return e


def plot_deviation_histograms(data: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    n = max(len(data), 1)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(n, 1, figsize=(6.4, 1.9 * n + 1.2), sharex=True, squeeze=False)
        for ax, d in zip(axes[:, 0], data):
            edges = _plot_edges(d["bin_edges"])
            ax.stairs(d["counts"], edges, fill=True, color=COLORS[0], alpha=0.75)
            ax.axvline(d["trust_lo"], color=COLORS[2], lw=2, ls="--", label=f"trust_lo = {d['trust_lo']:g} eV/Å")
            ax.axvline(d["trust_hi"], color=COLORS[1], lw=2, ls="-.", label=f"trust_hi = {d['trust_hi']:g} eV/Å")
            ax.set_xscale("log")
            ax.set_ylim(0, max(max(d["counts"], default=0), 1) * 1.5)  # room for the legend and the title
            ax.set_ylabel("frames")
            ax.text(0.01, 0.92, f"iteration {d['iteration']}  ({sum(d['counts'])} frames)", transform=ax.transAxes,
                    va="top", fontsize=11)
            ax.legend(loc="upper right", frameon=False)
        if not data:
            axes[0, 0].text(0.5, 0.5, "no explored frames recorded", ha="center", transform=axes[0, 0].transAxes)
        axes[-1, 0].set_xlabel("max atomic force deviation of the committee (eV/Å)")
        fig.suptitle(title or "model deviation of explored frames")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# -- parity --------------------------------------------------------------------------------------------


def parity_labels(db: CampaignDB, campaign: str, iteration: int, oracle_fingerprint: str | None = None,
                  max_labels: int = 200) -> list:
    """Up to ``max_labels`` ok labels selected in ``iteration``: those its committee had not seen."""
    q = query_labels(db, campaign=campaign, iteration=iteration, oracle_fingerprint=oracle_fingerprint,
                     allow_mixed_oracles=oracle_fingerprint is None)
    return [lab for _, lab in zip(range(max_labels), q.docs())]


def committee_class() -> type:
    """``almat.learner.committee.Committee``, imported on first use (torch: only when there is something to
    predict)."""
    from almat.learner.committee import Committee

    return Committee


def parity_entry(labels: list, committee: Any, model_ids: list[str]) -> dict[str, Any]:
    """The committee-mean against the oracle force components of ``labels``, and their RMSE."""
    pred = committee.predict([lab.to_atoms() for lab in labels])
    ref = np.concatenate([np.asarray(lab.forces, dtype=float).ravel() for lab in labels])
    mean = np.concatenate([pred.mean_forces(i).ravel() for i in range(len(labels))])
    return {"label_ids": [lab.label_id for lab in labels], "model_ids": list(model_ids), "oracle_forces": ref,
            "committee_forces": mean, "rmse": float(np.sqrt(np.mean((mean - ref) ** 2)))}


def parity_data(db: CampaignDB, campaign: str, iterations: list[IterationDoc], oracle_fingerprint: str | None = None,
                max_labels: int = 200) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Committee-mean vs oracle force components on labels each committee had not seen.

    The labels selected and computed in iteration ``i`` are predicted by the committee of iteration
    ``i`` (``IterationDoc.model_ids``), which was trained before they existed.
    """
    out: dict[int, dict[str, Any]] = {}
    notes: list[str] = []
    for it in iterations:
        if not it.model_ids:
            continue
        labels = parity_labels(db, campaign, it.iteration, oracle_fingerprint, max_labels)
        if not labels:
            continue
        try:
            committee = committee_class().from_store(db, it.model_ids)
        except Exception as exc:  # noqa: BLE001 - a report without parity beats no report
            notes.append(f"iteration {it.iteration}: no parity plot, committee not loadable ({exc})")
            continue
        out[it.iteration] = parity_entry(labels, committee, it.model_ids)
    return out, notes


def plot_parity(data: dict[int, dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.4, 5.2))
        lo, hi = np.inf, -np.inf
        for k, (it, d) in enumerate(sorted(data.items())):
            x, y = d["oracle_forces"], d["committee_forces"]
            ax.scatter(x, y, s=10, alpha=0.6, color=COLORS[k % len(COLORS)], edgecolors="none",
                       label=f"it {it}: {len(d['label_ids'])} labels, RMSE {d['rmse']:.3f} eV/Å")
            lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        if np.isfinite(lo):
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.legend(loc="upper left", frameon=False, markerscale=2)
        else:
            ax.text(0.5, 0.5, "no held-out labels with a committee", ha="center", transform=ax.transAxes)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("oracle force component (eV/Å)")
        ax.set_ylabel("committee mean force component (eV/Å)")
        ax.set_title(title or "forces on held-out labels")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# -- labels per source and oracle ------------------------------------------------------------------------


def labels_by_source_data(db: CampaignDB, campaign: str) -> dict[str, dict[str, int]]:
    """``{"oracle [fingerprint]": {source: n ok labels}}`` for the campaign (one entry per oracle setting)."""
    out: dict[str, dict[str, int]] = {}
    fingerprints = query_labels(db, campaign=campaign, allow_mixed_oracles=True).group_count("oracle_fingerprint")
    for fp in sorted(f for f in fingerprints if f is not None):
        q = query_labels(db, campaign=campaign, oracle_fingerprint=fp)
        oracle = next(iter(q.group_count("oracle")), None)
        counts = q.group_count("source")
        out[f"{oracle} [{fp}]"] = {str(k if k is not None else "unknown"): int(v)
                                   for k, v in sorted(counts.items(), key=str)}
    return out


def plot_labels_by_source(data: dict[str, dict[str, int]], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    sources = sorted({s for counts in data.values() for s in counts})
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        width = 0.8 / max(len(data), 1)
        x = np.arange(len(sources))
        for k, (oracle, counts) in enumerate(sorted(data.items())):
            heights = [counts.get(s, 0) for s in sources]
            bars = ax.bar(x + (k - (len(data) - 1) / 2) * width, heights, width, label=oracle,
                          color=COLORS[k % len(COLORS)])
            ax.bar_label(bars, fontsize=10, padding=2)
        ax.set_xticks(x, sources)
        ax.set_xlabel("structure source")
        ax.set_ylabel("ok labels")
        if data:
            ax.legend(title="oracle [settings fingerprint]", frameon=False, loc="upper center",
                      bbox_to_anchor=(0.5, -0.2))
            ax.set_ylim(0, max(max(c.values(), default=0) for c in data.values()) * 1.15 + 0.5)
        else:
            ax.text(0.5, 0.5, "no labels", ha="center", transform=ax.transAxes)
        ax.set_title(title or "labels per source and oracle")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# -- calibration ---------------------------------------------------------------------------------------


def calibration_data(iterations: list[IterationDoc]) -> dict[str, list]:
    """Per calibrated iteration: the recalibration factor k, the conformal quantile q (target and
    achieved coverage), the Spearman correlation, and the fraction of explored frames below tolerance."""
    its = [it for it in iterations if it.calibration is not None]
    return {
        "iteration": [it.iteration for it in its],
        "n_samples": [it.calibration.n_samples for it in its],
        "factor": [it.calibration.factor for it in its],
        "quantile": [it.calibration.quantile for it in its],
        "coverage": [it.calibration.coverage for it in its],
        "empirical_coverage": [it.calibration.empirical_coverage for it in its],
        "spearman": [it.calibration.spearman for it in its],
        "calibrated_fraction": [it.calibrated_fraction for it in its],
        "stop_rule": [it.stop_rule for it in its],
    }


def plot_calibration_trend(data: dict[str, list], path: Path, conv_accuracy: float | None = None,
                           title: str = "") -> Path:
    """Left: k and the conformal multiplier q k per iteration (how much the committee underestimates
    its error). Right: Spearman ρ and the fraction of explored frames below the force tolerance."""
    plt = _pyplot()
    it = np.array(data["iteration"], dtype=float)
    k = np.array(data["factor"], dtype=float)
    qk = np.array([q * f if np.isfinite(q) else np.nan for q, f in zip(data["quantile"], data["factor"])])
    rho = np.array([np.nan if v is None else v for v in data["spearman"]], dtype=float)
    frac = np.array([np.nan if v is None else v for v in data["calibrated_fraction"]], dtype=float)
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.2))
        ax1.plot(it, k, "o-", color=COLORS[0], lw=2, ms=7, label="recalibration factor $k$")
        if np.isfinite(qk).any():
            cov = data["coverage"][0] if data["coverage"] else 0.9
            ax1.plot(it, qk, "s--", color=COLORS[1], lw=2, ms=6, label=f"conformal $q\\,k$ ({100 * cov:.0f}%)")
        ax1.axhline(1.0, color="black", lw=1, ls=":", label="calibrated committee ($k$ = 1)")
        ax1.set_xlabel("iteration")
        ax1.set_ylabel("true error / committee deviation")
        ax1.set_ylim(0, max(np.nanmax(np.concatenate([k, qk, [1.0]])) * 1.2, 1.2))
        ax1.legend(frameon=False)
        ax2.plot(it, rho, "o-", color=COLORS[2], lw=2, ms=7, label="Spearman ρ (deviation vs error)")
        ax2.plot(it, frac, "s--", color=COLORS[3], lw=2, ms=6, label="explored frames below tolerance")
        if conv_accuracy is not None:
            ax2.axhline(conv_accuracy, color=COLORS[3], lw=1, ls=":", label=f"conv_accuracy {conv_accuracy:g}")
        ax2.set_xlabel("iteration")
        ax2.set_ylim(-0.05, 1.05)
        ax2.legend(frameon=False, loc="lower right")
        for ax in (ax1, ax2):
            ax.set_xticks(it)
        fig.suptitle(title or "calibration per iteration")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def plot_calibration(doc: CalibrationDoc, path: str | Path, title: str | None = None,
                     log: bool | None = None) -> Path:
    """Observed error vs calibrated uncertainty ``k u``, with the ideal line and the conformal band
    ``error <= q k u`` (shaded), written as a PNG. ``log=None`` picks log axes when the values span
    more than two decades."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = doc.calibrated(doc.predicted)
    y = np.asarray(doc.observed, dtype=float)
    positive = np.concatenate([x[x > 0], y[y > 0]])
    if log is None:
        log = positive.size > 1 and positive.max() / positive.min() > 100
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 6.8), constrained_layout=True)
        hi = float(max(x.max(initial=0), y.max(initial=0))) * 1.1 or 1.0
        lo = float(positive.min()) / 1.5 if log and positive.size else 0.0
        line = np.geomspace(max(lo, 1e-12), hi, 200) if log else np.linspace(0, hi, 200)
        if math.isfinite(doc.quantile):
            ax.fill_between(line, 0 if not log else lo, np.minimum(doc.quantile * line, hi * 10),
                            color="#56B4E9", alpha=0.25, lw=0,
                            label=f"conformal bound $q\\,k\\,\\sigma$, target {100 * doc.coverage:.0f}%\n"
                                  f"($q$ = {doc.quantile:.2f}; {100 * doc.empirical_coverage:.0f}% of frames inside)")
            ax.plot(line, doc.quantile * line, color="#0072B2", lw=1.2)
        ax.plot(line, line, color="black", lw=1.0, ls="--", label="error = calibrated uncertainty")
        ax.scatter(x, y, s=22, color="#D55E00", edgecolor="white", lw=0.4, zorder=3,
                   label=f"held-out frames (n = {doc.n_samples})")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        else:
            ax.set_xlim(0, hi)
            ax.set_ylim(0, hi)
        ax.set_xlabel(rf"calibrated uncertainty $k\,\sigma_{{F,\max}}$ (eV/Å), $k$ = {doc.factor:.2f}")
        ax.set_ylabel("max atomic force error (eV/Å)")
        rho = "n/a" if doc.spearman is None else f"{doc.spearman:.2f}"
        it = f"iteration {doc.iteration}: " if doc.iteration is not None else ""
        ax.set_title(title or f"{it}calibration, Spearman ρ = {rho}")
        fig.legend(loc="outside lower center", frameon=False)
        fig.savefig(path)
        plt.close(fig)
    return path
