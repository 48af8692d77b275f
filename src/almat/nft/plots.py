"""NFT campaign progress: the target's atomic uncertainty per iteration, against ``stop_delta``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from almat.nft.documents import NftIterationDoc

__all__ = ["plot_nft_progress"]


def plot_nft_progress(records: Sequence[NftIterationDoc], path: str | Path, stop_delta: float | None = None,
                      title: str = "") -> Path:
    """Left: the distribution of the target's atomic uncertainties per iteration (box: quartiles,
    whiskers: 5-95 %, dot: max) with the selection threshold and ``stop_delta``. Right: the
    committee's force errors on the target when the oracle evaluated it (``evaluate_with_oracle``)."""
    from almat.report.plots import COLORS, STYLE, _pyplot

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
