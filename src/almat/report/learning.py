"""Progress of pool-based and NFT campaigns: learning curves (held-out force RMSE against labels, log y)
and the NFT target's atomic uncertainty per iteration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from almat.report.plots import COLORS, STYLE, _pyplot, load_iterations
from almat.schemas import NftIterationDoc, PoolIterationDoc
from almat.stores import CampaignDB


def _records(item: Any) -> list[PoolIterationDoc]:
    if hasattr(item, "records"):  # PoolRunResult
        item = item.records
    elif hasattr(item, "iterations"):  # PoolCampaignResult
        item = item.iterations
    out = [r if isinstance(r, PoolIterationDoc) else PoolIterationDoc.from_store(r) for r in item]
    return sorted(out, key=lambda r: r.iteration)


def learning_curves(source: Any, db=None) -> dict[str, dict[str, list]]:
    """``{label: {n_labels, force_rmse, energy_rmse_per_atom, iteration}}`` from records.

    ``source``: a list of ``PoolIterationDoc`` (one campaign), a run result, a dict of label ->
    records/result, or campaign name(s), read from ``db`` (default: the store of the settings).
    """
    if isinstance(source, str) or (isinstance(source, Sequence) and source and all(isinstance(s, str) for s in source)):
        names = [source] if isinstance(source, str) else list(source)
        own = db is None
        db = CampaignDB.from_settings().connect() if own else db
        try:
            groups = {name: load_iterations(db, name, "pool") for name in names}
        finally:
            if own:
                db.close()
        missing = [n for n, r in groups.items() if not r]
        if missing:
            raise KeyError(f"no pool_iterations records for campaign(s) {', '.join(missing)}")
    elif isinstance(source, dict):
        groups = {str(k): _records(v) for k, v in source.items()}
    else:
        records = _records(source)
        if not records:
            raise ValueError("no records to plot")
        groups = {records[0].campaign: records}
    return {
        label: {
            "iteration": [r.iteration for r in recs],
            "n_labels": [r.n_labels for r in recs],
            "force_rmse": [r.test_errors.force_rmse for r in recs],
            "energy_rmse_per_atom": [r.test_errors.energy_rmse_per_atom for r in recs],
        }
        for label, recs in groups.items()
    }


def plot_learning_curves(source: Any, path: str | Path, db=None, title: str = "",
                        target: float | None = None) -> Path:
    """Held-out force RMSE against training labels, one line per campaign, log y; writes a PNG.

    ``source`` as in :func:`learning_curves` (records, results, ``{label: records}`` or campaign names).
    """
    curves = learning_curves(source, db)
    path = Path(path)
    plt = _pyplot()

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k, (label, c) in enumerate(curves.items()):
            x = np.array(c["n_labels"], dtype=float)
            y = np.array([np.nan if v is None else v for v in c["force_rmse"]], dtype=float)
            ax.plot(x, y, "o-", color=COLORS[k % len(COLORS)], lw=2, ms=6, label=label)
        if target is not None:
            ax.axhline(target, color="0.4", ls=":", lw=1.5, label=f"target {target:g} eV/Å")
        ax.set_yscale("log")
        ax.locator_params(axis="x", integer=True)
        ax.set_xlabel("training labels (oracle calls)")
        ax.set_ylabel("held-out force RMSE (eV/Å)")
        ax.legend(frameon=False)
        ax.set_title(title or "pool-based active learning")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def plot_nft_progress(records: Sequence[NftIterationDoc], path: str | Path, stop_delta: float | None = None,
                      title: str = "") -> Path:
    """Left: the distribution of the target's atomic uncertainties per iteration (box: quartiles,
    whiskers: 5-95 %, dot: max) with the selection threshold and ``stop_delta``. Right: the
    committee's force errors on the target when the oracle evaluated it (``evaluate_with_oracle``)."""
    if not records:
        raise ValueError("no NFT iteration records to plot")
    plt = _pyplot()
    path = Path(path)
    its = [r.iteration for r in records]
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.2))
        ax1.boxplot([np.asarray(r.atomic_uncertainties) for r in records], positions=its, whis=(5, 95),
                    showfliers=False, widths=0.5)
        ax1.plot(its, [r.max_uncertainty for r in records], "o-", color=COLORS[1], lw=1.5, ms=6,
                 label="max atomic uncertainty")
        ax1.plot(its, [r.threshold for r in records], "s--", color=COLORS[0], lw=1.2, ms=5,
                 label="selection threshold (percentile)")
        if stop_delta is not None:
            ax1.axhline(stop_delta, color="black", ls=":", lw=1.2, label=f"stop_delta {stop_delta:g} eV/Å")
        ax1.set_yscale("log")
        ax1.set_xlabel("iteration")
        ax1.set_ylabel("atomic force uncertainty (eV/Å)")
        ax1.legend(frameon=False, fontsize=9)
        rmse = np.array([np.nan if r.target_force_rmse is None else r.target_force_rmse for r in records])
        worst = np.array([np.nan if r.target_max_force_error is None else r.target_max_force_error for r in records])
        if np.isfinite(rmse).any():
            ax2.plot(its, rmse, "o-", color=COLORS[2], lw=2, ms=6, label="force RMSE on the target")
            ax2.plot(its, worst, "s--", color=COLORS[3], lw=1.5, ms=5, label="max atomic force error")
            ax2.set_yscale("log")
            ax2.legend(frameon=False)
        else:
            ax2.text(0.5, 0.5, "target not evaluated by the oracle\n(target.evaluate_with_oracle: false)",
                     ha="center", va="center", transform=ax2.transAxes, color="0.4")
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("committee error vs oracle (eV/Å)")
        for ax in (ax1, ax2):
            ax.set_xticks(its)
        fig.suptitle(title or f"{records[0].campaign}: nearsighted force training "
                     f"({records[0].n_target_atoms}-atom target)")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path
