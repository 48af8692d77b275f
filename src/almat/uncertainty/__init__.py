"""Committee uncertainty: model deviation and trust levels, and its calibration against oracle errors."""

from almat.uncertainty.calibration import (
    StopDecision, calibrate, committee_errors, conformal_quantile, convergence_check, empirical_coverage,
    fit_factor, spearman, stratified_sample,
)
from almat.uncertainty.deviation import (
    FrameClass, TrustLevels, atomic_force_deviation, energy_deviation, max_force_deviation,
)
