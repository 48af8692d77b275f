"""Is the committee's deviation an honest error bar? Recalibration, conformal bounds, a stopping rule.

Details: ``docs/architecture.md``, module notes (almat/uncertainty/calibration.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from almat.schemas import CalibrationDoc

FACTOR_METHODS = ("lstsq", "median")


def _pair(predicted: Sequence[float], observed: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=float).ravel()
    o = np.asarray(observed, dtype=float).ravel()
    if p.shape != o.shape:
        raise ValueError(f"{p.size} predicted uncertainties but {o.size} observed errors")
    if p.size == 0:
        raise ValueError("no frames to calibrate on")
    if not (np.isfinite(p).all() and np.isfinite(o).all()):
        raise ValueError("predicted uncertainties and observed errors must be finite")
    if (p < 0).any() or (o < 0).any():
        raise ValueError("predicted uncertainties and observed errors must be >= 0")
    return p, o


def stratified_sample(uncertainty: Sequence[float], n: int, rng: np.random.Generator,
                      eligible: Sequence[bool] | None = None) -> list[int]:
    """Indices of ``n`` held-out frames spread over the whole range of uncertainty.

    The eligible frames are sorted by uncertainty and cut into ``n`` strata of equal size; one
    frame is drawn at random from each. Every eligible frame has (up to rounding) the same chance
    ``n / N``, so the sample stays representative of the explored frames (what the conformal bound
    assumes), while the low-uncertainty frames, where an overconfident committee hides its errors,
    are never left out. Fewer than ``n`` eligible frames: all of them.
    """
    u = np.asarray(uncertainty, dtype=float).ravel()
    mask = np.ones(u.size, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).ravel()
    if mask.size != u.size:
        raise ValueError(f"{u.size} uncertainties but {mask.size} eligibility flags")
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    candidates = np.flatnonzero(mask & np.isfinite(u))
    if n == 0 or candidates.size == 0:
        return []
    if candidates.size <= n:
        return sorted(int(i) for i in candidates)
    ordered = candidates[np.argsort(u[candidates], kind="stable")]
    return sorted(int(rng.choice(stratum)) for stratum in np.array_split(ordered, n))


def _check_coverage(coverage: float) -> float:
    coverage = float(coverage)
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be strictly between 0 and 1, got {coverage}")
    return coverage


def fit_factor(predicted: Sequence[float], observed: Sequence[float], method: str = "lstsq") -> float:
    """Recalibration factor ``k`` (``observed ~ k * predicted``), see the module doc for the methods."""
    p, o = _pair(predicted, observed)
    if method == "lstsq":
        denom = float(np.dot(p, p))
        if denom == 0:
            raise ValueError("all predicted uncertainties are 0: no factor can be fitted")
        return float(np.dot(p, o) / denom)
    if method == "median":
        mask = p > 0
        if not mask.any():
            raise ValueError("all predicted uncertainties are 0: no factor can be fitted")
        return float(np.median(o[mask] / p[mask]))
    raise ValueError(f"unknown factor method {method!r}; valid: {', '.join(FACTOR_METHODS)}")


def _scores(p: np.ndarray, o: np.ndarray, factor: float) -> np.ndarray:
    scale = factor * p
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(scale > 0, o / np.where(scale > 0, scale, 1.0), np.where(o > 0, np.inf, 0.0))
    return s


def conformal_quantile(predicted: Sequence[float], observed: Sequence[float], coverage: float = 0.9,
                       factor: float = 1.0) -> float:
    """Split-conformal quantile ``q`` of ``observed / (factor * predicted)`` at level ``coverage``.

    The ``ceil((n + 1) * coverage)``-th smallest score; ``inf`` when ``n`` is too small for that
    coverage (``ceil((n + 1) c) > n``).
    """
    coverage = _check_coverage(coverage)
    if not factor > 0:
        raise ValueError(f"the recalibration factor must be > 0, got {factor}")
    p, o = _pair(predicted, observed)
    s = np.sort(_scores(p, o, factor))
    n = s.size
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        return math.inf
    return float(s[rank - 1])


def empirical_coverage(predicted: Sequence[float], observed: Sequence[float], bound_factor: float) -> float:
    """Fraction of frames with ``observed <= bound_factor * predicted``."""
    p, o = _pair(predicted, observed)
    return float(np.mean(o <= bound_factor * p))


def spearman(predicted: Sequence[float], observed: Sequence[float]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``); ``nan`` when either side is constant."""
    from scipy.stats import spearmanr

    p, o = _pair(predicted, observed)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(o) == 0:
        return math.nan
    return float(spearmanr(p, o).statistic)


def calibrate(predicted: Sequence[float], observed: Sequence[float], coverage: float = 0.9,
              method: str = "lstsq", campaign: str | None = None, iteration: int | None = None) -> CalibrationDoc:
    """Fit ``k``, the conformal ``q`` and the Spearman correlation on one held-out sample."""
    coverage = _check_coverage(coverage)
    p, o = _pair(predicted, observed)
    k = fit_factor(p, o, method)
    if not k > 0:
        raise ValueError(f"fitted recalibration factor is {k}: the errors do not grow with the deviation")
    q = conformal_quantile(p, o, coverage, k)
    rho = spearman(p, o)
    return CalibrationDoc(
        campaign=campaign,
        iteration=iteration,
        factor=k,
        method=method,
        quantile=q,
        coverage=coverage,
        empirical_coverage=empirical_coverage(p, o, q * k) if math.isfinite(q) else 1.0,
        spearman=None if math.isnan(rho) else rho,
        n_samples=int(p.size),
        predicted=p.tolist(),
        observed=o.tolist(),
    )


def committee_errors(committee, labelled_atoms: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (max atomic force deviation, max atomic force error of the committee mean) in eV/Å.

    ``labelled_atoms`` carry the oracle forces as ``atoms.calc`` results (``LabelDoc.to_atoms()``).
    """
    atoms_list = list(labelled_atoms)
    if not atoms_list:
        return np.zeros(0), np.zeros(0)
    pred = committee.predict(atoms_list)
    deviation = pred.model_deviation
    error = np.array([
        float(np.linalg.norm(pred.mean_forces(i) - np.asarray(a.get_forces()), axis=1).max())
        for i, a in enumerate(atoms_list)
    ])
    return np.asarray(deviation, dtype=float), error


@dataclass
class StopDecision:
    stop: bool
    fraction_below: float
    n_frames: int
    tolerance: float
    conv_accuracy: float
    bound: str
    reason: str


def convergence_check(
    uncertainty: Sequence[float],
    calibration: CalibrationDoc | float,
    tolerance: float,
    conv_accuracy: float = 0.95,
    bound: Literal["calibrated", "conformal"] = "calibrated",
) -> StopDecision:
    """Stop when the calibrated uncertainty of the explored frames is below ``tolerance`` (eV/Å)
    for a fraction ``>= conv_accuracy`` of them.

    ``uncertainty``: per-frame model deviations of the explored frames (eV/Å). ``calibration``: a
    ``CalibrationDoc`` or a bare factor ``k``. ``bound="calibrated"`` compares ``k u``;
    ``"conformal"`` compares the upper bound ``q k u`` (needs a ``CalibrationDoc``).
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 eV/Å, got {tolerance}")
    if not 0.0 < conv_accuracy <= 1.0:
        raise ValueError(f"conv_accuracy must be in (0, 1], got {conv_accuracy}")
    u = np.asarray(uncertainty, dtype=float).ravel()
    if isinstance(calibration, CalibrationDoc):
        factor, quantile = calibration.factor, calibration.quantile
    else:
        factor, quantile = float(calibration), None
    if bound == "calibrated":
        values = factor * u
    elif bound == "conformal":
        if quantile is None:
            raise ValueError("the conformal bound needs a CalibrationDoc (with its quantile)")
        values = quantile * factor * u
    else:
        raise ValueError(f"unknown bound {bound!r}; valid: calibrated, conformal")
    if u.size == 0:
        return StopDecision(False, 0.0, 0, tolerance, conv_accuracy, bound, "no explored frames")
    fraction = float(np.mean(values < tolerance))
    stop = fraction >= conv_accuracy
    what = "k·u" if bound == "calibrated" else "q·k·u"
    reason = (f"{100 * fraction:.1f}% of {u.size} frames have {what} < {tolerance:g} eV/Å "
              f"({'>=' if stop else '<'} conv_accuracy {conv_accuracy:g})")
    return StopDecision(stop, fraction, int(u.size), float(tolerance), float(conv_accuracy), bound, reason)
