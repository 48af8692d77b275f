"""When an exploration stage has converged: one strategy per ``convergence.rule`` (``RULES``).

A rule looks at the iteration's :class:`~almat.campaign.exploration.ExplorationReport` and the
calibrated check of its explored frames (``almat.uncertainty.calibration.convergence_check``, or None
without a calibration) and answers ``(passed, reason)``. ``apply_patience`` then asks that the rule passed
``conv_patience`` iterations in a row of the stage (each iteration record keeps ``rule_passed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from almat.campaign.exploration import ExplorationReport


class ConvergenceRule:
    """The interface: ``check(report, calibrated) -> (converged, reason)``."""

    name: ClassVar[str]
    #: whether the iteration calibrates the committee even without held-out labels (to say why it can't)
    needs_calibration: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, conv: Any) -> ConvergenceRule:
        """The rule with its parameters from a ``ConvergenceSettings``."""
        return cls()

    def check(self, report: ExplorationReport, calibrated: Any) -> tuple[bool, str]:
        raise NotImplementedError


@dataclass(frozen=True)
class CalibratedRule(ConvergenceRule):
    """Converged when the calibrated uncertainty of enough explored frames is below the force tolerance
    (the check carries the tolerance, the bound and ``conv_accuracy``)."""

    name: ClassVar[str] = "calibrated"
    needs_calibration: ClassVar[bool] = True

    def check(self, report, calibrated):
        if calibrated is None:
            return False, ""
        return calibrated.stop, calibrated.reason


@dataclass(frozen=True)
class ConfidenceBoundRule(ConvergenceRule):
    """Converged when the one-sided lower confidence bound (``conv_confidence``, ``conv_interval``) of the
    share of explored frames with calibrated uncertainty below the tolerance reaches ``conv_accuracy``. The
    bound rests on ``effective_n`` frames: the explored frames give the share, the calibration frames give
    the factor k that scales them (``almat.uncertainty.calibration``)."""

    confidence: float = 0.9
    interval: str = "wilson"
    name: ClassVar[str] = "confidence_bound"
    needs_calibration: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, conv):
        return cls(conv.conv_confidence, conv.conv_interval)

    def check(self, report, calibrated):
        if calibrated is None or calibrated.lower_bound is None:
            return False, ""
        return calibrated.bound_stop, calibrated.bound_reason()


@dataclass(frozen=True)
class AccurateRatioRule(ConvergenceRule):
    """DP-GEN's rule: converged when the fraction of explored frames below ``trust_lo`` reaches
    ``conv_accuracy``."""

    conv_accuracy: float = 0.95
    name: ClassVar[str] = "accurate_ratio"

    @classmethod
    def from_settings(cls, conv):
        return cls(conv.conv_accuracy)

    def check(self, report, calibrated):
        accurate = report.ratios["accurate"]
        return (report.n_frames > 0 and accurate >= self.conv_accuracy,
                f"accurate ratio {accurate:.3f} >= conv_accuracy {self.conv_accuracy}")


RULES: dict[str, type[ConvergenceRule]] = {
    rule.name: rule for rule in (CalibratedRule, ConfidenceBoundRule, AccurateRatioRule)}


def get_rule(conv: Any) -> ConvergenceRule:
    """The rule that ``conv.rule`` names, with its parameters from ``conv`` (a ``ConvergenceSettings``)."""
    if conv.rule not in RULES:
        raise ValueError(f"convergence.rule: unknown rule {conv.rule!r}; valid: {', '.join(RULES)}")
    return RULES[conv.rule].from_settings(conv)


def apply_patience(passed: bool, reason: str, earlier: Sequence[bool], patience: int) -> tuple[bool, str, int]:
    """``(converged, reason, streak)``: the rule ``passed`` this iteration (with its ``reason``) and
    ``earlier`` tells, oldest first, whether it passed in the stage's earlier iterations; converged once it
    passed ``patience`` iterations in a row (``streak``: how many so far, this one included)."""
    if patience < 1:
        raise ValueError(f"conv_patience must be >= 1, got {patience}")
    streak = 0
    if passed:
        streak = 1
        for ok in reversed(list(earlier)):
            if not ok:
                break
            streak += 1
    if patience == 1 or not passed:
        return passed, reason, streak
    if streak >= patience:
        return True, f"{reason}; passed {streak} iterations in a row (conv_patience {patience})", streak
    return False, f"{reason}; passed {streak} of conv_patience {patience} iterations in a row", streak
