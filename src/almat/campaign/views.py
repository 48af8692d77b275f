"""How the per-iteration records of each campaign kind read as table rows; ``almat.campaign.kinds``
names them for each kind.

- ``*_status_row``: a stored record (a dict) as a row of ``almat status`` (and its ``--json``);
- ``*_page_row``: a record document as a row of the campaign page of ``almat serve`` (and its JSON API).
"""

from __future__ import annotations

from typing import Any

from almat.schemas import IterationDoc, NftIterationDoc, PoolIterationDoc


def when(value: Any) -> str:
    """A date as ``YYYY-MM-DD hh:mm:ss`` ("" for None)."""
    return "" if value is None else str(value)[:19].replace("T", " ")


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _stage(it: dict) -> str | None:
    """The exploration stage of an MD iteration: its name, else its index (None for records without stages)."""
    if it.get("stage_name"):
        return str(it["stage_name"])
    return None if it.get("stage") is None else str(it["stage"])


def md_status_row(it: dict) -> dict[str, Any]:
    calibration, test = it.get("calibration") or {}, it.get("test_errors") or {}
    return {
        "iteration": it["iteration"], "stage": _stage(it), "trust_lo": it.get("trust_lo"),
        "frames_explored": it.get("n_frames_explored", 0),
        "accurate_pct": _pct(it.get("accurate_ratio", 0.0)), "candidate_pct": _pct(it.get("candidate_ratio", 0.0)),
        "failed_pct": _pct(it.get("failed_ratio", 0.0)), "train_labels": it.get("n_train_labels", 0),
        "new_labels": it.get("n_labelled", 0), "failed_labels": it.get("n_failed_labels", 0),
        "test_force_rmse": test.get("force_rmse"), "test_structures": test.get("n_structures", 0),
        "calibration_factor": calibration.get("factor"), "calibration_spearman": calibration.get("spearman"),
        "calibration_samples": calibration.get("n_samples", 0),
        "below_tolerance_pct": _pct(it.get("calibrated_fraction")),
        "below_tolerance_bound_pct": _pct(it.get("calibrated_fraction_bound")),
        "converged": it.get("converged", False), "stop_reason": it.get("stop_reason"),
    }


def nft_status_row(r: dict) -> dict[str, Any]:
    keys = ("iteration", "n_train_labels", "max_uncertainty", "threshold", "n_chunks", "target_force_rmse",
            "stop_reason")
    return {**{k: r.get(k) for k in keys}, "n_chunks": len(r.get("chunks") or [])}


def md_page_row(it: IterationDoc) -> dict[str, Any]:
    return {"iteration": it.iteration, "train_labels": it.n_train_labels, "frames": it.n_frames_explored,
            "accurate": it.accurate_ratio, "candidate": it.candidate_ratio, "failed": it.failed_ratio,
            "selected": it.n_selected, "new_labels": it.n_labelled, "failed_labels": it.n_failed_labels,
            "reused_labels": it.n_reused_labels, "held_out": it.test_errors.n_structures,
            "force_rmse": it.test_errors.force_rmse, "energy_rmse": it.test_errors.energy_rmse_per_atom,
            "trust_lo": it.trust_lo, "trust_hi": it.trust_hi,
            "k": it.calibration.factor if it.calibration else None, "below_tol": it.calibrated_fraction,
            "below_tol_bound": it.calibrated_fraction_bound,
            "exploded": it.exploded_trajectories, "stop_reason": it.stop_reason or "", "created": when(it.created_at)}


def pool_page_row(r: PoolIterationDoc) -> dict[str, Any]:
    return {"iteration": r.iteration, "acquisition": r.acquisition, "labels": r.n_labels,
            "train_labels": r.n_train_labels, "new": r.n_new_labels, "failed": len(r.failed_indices),
            "unlabelled": r.n_unlabelled, "held_out": r.test_errors.n_structures,
            "force_rmse": r.test_errors.force_rmse, "energy_rmse": r.test_errors.energy_rmse_per_atom,
            "wall_time": r.wall_time, "stop_reason": r.stop_reason or "", "created": when(r.created_at)}


def nft_page_row(r: NftIterationDoc) -> dict[str, Any]:
    return {"iteration": r.iteration, "train_labels": r.n_train_labels, "target_atoms": r.n_target_atoms,
            "max_unc": r.max_uncertainty, "mean_unc": r.mean_uncertainty, "threshold": r.threshold,
            "uncertain": len(r.uncertain_atoms), "chunks": r.n_chunks or len(r.chunks),
            "new_labels": r.n_labelled, "failed_labels": r.n_failed_labels,
            "target_force_rmse": r.target_force_rmse, "target_max_error": r.target_max_force_error,
            "stop_reason": r.stop_reason or "", "created": when(r.created_at)}
