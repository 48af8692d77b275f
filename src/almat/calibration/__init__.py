"""Calibration of the committee's uncertainty against oracle errors (see :mod:`almat.calibration.core`)."""

from almat.calibration.core import (
    CalibrationDoc,
    StopDecision,
    calibrate,
    committee_errors,
    conformal_quantile,
    convergence_check,
    empirical_coverage,
    fit_factor,
    plot_calibration,
    spearman,
    stratified_sample,
)

__all__ = [
    "CalibrationDoc",
    "StopDecision",
    "calibrate",
    "committee_errors",
    "conformal_quantile",
    "convergence_check",
    "empirical_coverage",
    "fit_factor",
    "plot_calibration",
    "spearman",
    "stratified_sample",
]
