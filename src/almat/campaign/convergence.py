"""When an exploration stage has converged: one strategy per ``convergence.rule`` (``RULES``).

A rule looks at the iteration's :class:`~almat.campaign.exploration.ExplorationReport` and the
calibrated check of its explored frames (``almat.uncertainty.calibration.convergence_check``, or None
without a calibration) and answers ``(converged, reason)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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


RULES: dict[str, type[ConvergenceRule]] = {rule.name: rule for rule in (CalibratedRule, AccurateRatioRule)}


def get_rule(conv: Any) -> ConvergenceRule:
    """The rule that ``conv.rule`` names, with its parameters from ``conv`` (a ``ConvergenceSettings``)."""
    if conv.rule not in RULES:
        raise ValueError(f"convergence.rule: unknown rule {conv.rule!r}; valid: {', '.join(RULES)}")
    return RULES[conv.rule].from_settings(conv)
