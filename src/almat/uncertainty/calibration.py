"""Is the committee's deviation an honest error bar? Recalibration, conformal bounds, a stopping rule.

Details: ``docs/architecture.md``, module notes (almat/uncertainty/calibration.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
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


#: one-sided lower confidence bounds of a share (``share_lower_bound``)
SHARE_INTERVALS = ("clopper-pearson", "wilson")


def check_confidence(confidence: float, key: str = "confidence") -> float:
    """``confidence`` as a float strictly between 0 and 1, else a one-line error naming ``key``."""
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{key} must be strictly between 0 and 1 (e.g. 0.9), got {confidence}")
    return value


def share_lower_bound(successes: float, n: float, confidence: float = 0.9,
                      method: str = "wilson") -> float:
    """One-sided lower confidence bound, at level ``confidence``, of a share seen as ``successes`` of ``n``.

    ``wilson`` (the default of ``rule: confidence_bound``, chosen by ``benchmarks/stop_bound.py``: as few
    early stops as Clopper-Pearson, far more timely ones at a few dozen frames): the lower end of Wilson's
    score interval with ``z = Phi^-1(confidence)``; near the nominal level on average, a little below it
    near shares of 1 with small ``n``. ``clopper-pearson``: the ``1 - confidence`` quantile of Beta(successes, n - successes + 1) (0 when
    there is no success); its coverage is at least ``confidence`` for every true share (integer counts).
    Both take non-integer counts (an effective ``n``).
    """
    confidence = check_confidence(confidence)
    if not n > 0:
        raise ValueError(f"the number of trials must be > 0, got {n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n = {n}], got {successes}")
    if method == "clopper-pearson":
        if successes == 0:
            return 0.0
        from scipy.stats import beta

        return float(beta.ppf(1.0 - confidence, successes, n - successes + 1.0))
    if method == "wilson":
        z = NormalDist().inv_cdf(confidence)
        p = successes / n
        centre = p + z * z / (2 * n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return max(0.0, (centre - half) / (1 + z * z / n))
    raise ValueError(f"unknown confidence interval {method!r}; valid: {', '.join(SHARE_INTERVALS)}")


def effective_n(n_frames: int, n_calibration: int | None) -> float:
    """How many independent frames the below-tolerance share rests on: the explored frames give the share,
    but the factor k that scales them comes from ``n_calibration`` held-out frames. Their errors add up,
    each like a share's on its own frames: ``1 / (1/n_frames + 1/n_calibration)``, a little below the
    smaller of the two (``n_frames`` alone without a calibration size)."""
    if n_frames <= 0:
        return 0.0
    if not n_calibration:
        return float(n_frames)
    return 1.0 / (1.0 / n_frames + 1.0 / n_calibration)


@dataclass
class StopDecision:
    """``stop``: the point rule (share >= conv_accuracy). With a ``confidence``, ``lower_bound`` is the
    share's one-sided lower confidence bound on ``n_effective`` frames (``effective_n``)."""

    stop: bool
    fraction_below: float
    n_frames: int
    tolerance: float
    conv_accuracy: float
    bound: str
    reason: str
    lower_bound: float | None = None
    confidence: float | None = None
    n_effective: float | None = None
    interval: str | None = None

    @property
    def bound_stop(self) -> bool:
        """Whether the lower confidence bound reaches ``conv_accuracy`` (False without a bound)."""
        return self.lower_bound is not None and self.lower_bound >= self.conv_accuracy

    def bound_reason(self) -> str:
        if self.lower_bound is None:
            return self.reason
        return (f"{100 * self.confidence:g}% lower bound {100 * self.lower_bound:.1f}% of the "
                f"{100 * self.fraction_below:.1f}% below {self.tolerance:g} eV/Å "
                f"(n_eff {self.n_effective:.1f} of {self.n_frames} frames) "
                f"{'>=' if self.bound_stop else '<'} conv_accuracy {self.conv_accuracy:g}")


def _calibrated_values(u: np.ndarray, calibration: CalibrationDoc | float, bound: str) -> tuple[np.ndarray, int | None]:
    """``k u`` or ``q k u`` of the explored frames, and the calibration's sample size (None for a bare k)."""
    if isinstance(calibration, CalibrationDoc):
        factor, quantile, n_cal = calibration.factor, calibration.quantile, calibration.n_samples
    else:
        factor, quantile, n_cal = float(calibration), None, None
    if bound == "calibrated":
        return factor * u, n_cal
    if bound == "conformal":
        if quantile is None:
            raise ValueError("the conformal bound needs a CalibrationDoc (with its quantile)")
        return quantile * factor * u, n_cal
    raise ValueError(f"unknown bound {bound!r}; valid: calibrated, conformal")


def convergence_check(
    uncertainty: Sequence[float],
    calibration: CalibrationDoc | float,
    tolerance: float,
    conv_accuracy: float = 0.95,
    bound: Literal["calibrated", "conformal"] = "calibrated",
    confidence: float | None = None,
    interval: str = "wilson",
) -> StopDecision:
    """Stop when the calibrated uncertainty of the explored frames is below ``tolerance`` (eV/Å)
    for a fraction ``>= conv_accuracy`` of them.

    ``uncertainty``: per-frame model deviations of the explored frames (eV/Å). ``calibration``: a
    ``CalibrationDoc`` or a bare factor ``k``. ``bound="calibrated"`` compares ``k u``;
    ``"conformal"`` compares the upper bound ``q k u`` (needs a ``CalibrationDoc``). With a
    ``confidence``, the decision also carries the share's lower confidence bound (``interval``:
    ``share_lower_bound``) on ``effective_n(explored frames, calibration frames)`` frames.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 eV/Å, got {tolerance}")
    if not 0.0 < conv_accuracy <= 1.0:
        raise ValueError(f"conv_accuracy must be in (0, 1], got {conv_accuracy}")
    if confidence is not None:
        confidence = check_confidence(confidence, "conv_confidence")
    u = np.asarray(uncertainty, dtype=float).ravel()
    values, n_cal = _calibrated_values(u, calibration, bound)
    if u.size == 0:
        return StopDecision(False, 0.0, 0, tolerance, conv_accuracy, bound, "no explored frames")
    fraction = float(np.mean(values < tolerance))
    stop = fraction >= conv_accuracy
    what = "k·u" if bound == "calibrated" else "q·k·u"
    reason = (f"{100 * fraction:.1f}% of {u.size} frames have {what} < {tolerance:g} eV/Å "
              f"({'>=' if stop else '<'} conv_accuracy {conv_accuracy:g})")
    decision = StopDecision(stop, fraction, int(u.size), float(tolerance), float(conv_accuracy), bound, reason)
    if confidence is not None:
        n_eff = effective_n(u.size, n_cal)
        decision.lower_bound = share_lower_bound(fraction * n_eff, n_eff, confidence, interval)
        decision.confidence, decision.n_effective, decision.interval = confidence, n_eff, interval
    return decision
