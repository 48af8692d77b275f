"""Learning curves of pool-based campaigns: held-out force RMSE against the number of labels (log y)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from almat.pool.documents import PoolIterationDoc
from almat.report.plots import COLORS, STYLE

__all__ = ["learning_curves", "plot_learning_curve", "plot_method_comparison"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
        from almat.pool.runner import load_pool_iterations
        from almat.stores import CampaignDB

        names = [source] if isinstance(source, str) else list(source)
        own = db is None
        db = CampaignDB.from_settings().connect() if own else db
        try:
            groups = {name: load_pool_iterations(db, name) for name in names}
        finally:
            if own:
                db.close()
        missing = [n for n, r in groups.items() if not r]
        if missing:
            raise KeyError(f"no pool_iterations records for campaign(s) {', '.join(missing)}")
    elif isinstance(source, Mapping):
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


def plot_learning_curve(source: Any, path: str | Path, db=None, title: str = "",
                        target: float | None = None) -> Path:
    """Held-out force RMSE against training labels, one line per campaign, log y; writes a PNG.

    ``source`` as in :func:`learning_curves` (records, results, ``{label: records}`` or campaign names).
    """
    curves = learning_curves(source, db)
    path = Path(path)
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k, (label, c) in enumerate(curves.items()):
            x = np.array(c["n_labels"], dtype=float)
            y = np.array([np.nan if v is None else v for v in c["force_rmse"]], dtype=float)
            ax.plot(x, y, "o-", color=COLORS[k % len(COLORS)], lw=2, ms=6, label=label)
        if target is not None:
            ax.axhline(target, color="0.4", ls=":", lw=1.5, label=f"target {target:g} eV/Å")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training labels (oracle calls)")
        ax.set_ylabel("held-out force RMSE (eV/Å)")
        ax.legend(frameon=False)
        ax.set_title(title or "pool-based active learning")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def plot_method_comparison(curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
                           path: str | Path, title: str = "", target: float | None = None) -> Path:
    """Several seeds per method: the geometric mean of the held-out force RMSE (line) and the
    min-max over seeds (band) against the number of labels, log y.

    ``curves[method]`` is a list of ``(n_labels, force_rmse)`` pairs of sequences, one per seed.
    """
    path = Path(path)
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k, (method, runs) in enumerate(curves.items()):
            xs = sorted({float(x) for xr, _ in runs for x in xr})
            table = np.full((len(runs), len(xs)), np.nan)
            for r, (xr, yr) in enumerate(runs):
                for x, y in zip(xr, yr):
                    if y is not None:
                        table[r, xs.index(float(x))] = y
            with np.errstate(all="ignore"):
                logs = np.log(table)
                mean = np.exp(np.nanmean(logs, axis=0))
                lo, hi = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
            color = COLORS[k % len(COLORS)]
            ax.plot(xs, mean, "o-", color=color, lw=2, ms=5, label=f"{method} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
        if target is not None:
            ax.axhline(target, color="0.4", ls=":", lw=1.5, label=f"target {target:.3g} eV/Å")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training labels (oracle calls)")
        ax.set_ylabel("held-out force RMSE (eV/Å)")
        ax.legend(frameon=False)
        ax.set_title(title or "label efficiency")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path
