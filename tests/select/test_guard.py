"""The random guard (aims-PAX): no candidate for ``patience`` iterations while the calibrated error is above
the tolerance -> label a random sample of the explored frames anyway."""

import numpy as np
import pytest

from almat.campaign.config import ConfigError, ConvergenceSettings, load_config
from almat.campaign.md import calibrated_error_above, quiet_iterations
from almat.schemas import CalibrationDoc, IterationDoc
from almat.select.guard import RandomGuard


def test_quiet_iterations_count_back_to_the_last_selection():
    assert RandomGuard.quiet_iterations([3, 0, 0], 0) == 3
    assert RandomGuard.quiet_iterations([3, 0, 2], 0) == 1
    assert RandomGuard.quiet_iterations([], 0) == 1
    assert RandomGuard.quiet_iterations([0, 0], 5) == 0


@pytest.mark.parametrize("quiet, above, fires", [(1, True, True), (1, None, True), (1, False, False),
                                                 (0, True, False)])
def test_fires_only_when_quiet_and_not_known_to_be_accurate(quiet, above, fires):
    assert RandomGuard(patience=1, samples=4).fires(quiet, above) is fires
    assert RandomGuard(patience=1, samples=0).fires(quiet, above) is False  # off


def test_patience_holds_back_the_stop_until_it_fires():
    guard = RandomGuard(patience=3, samples=2)
    assert guard.holds_back_stop(1) and guard.holds_back_stop(2) and not guard.holds_back_stop(3)
    assert not guard.fires(2, True) and guard.fires(3, True)
    assert not RandomGuard(patience=3, samples=0).holds_back_stop(1)  # off: stop as before


def test_pick_is_uniform_among_eligible_frames_without_repeats():
    guard = RandomGuard(samples=3)
    eligible = [True, False, True, True, False, True, True]
    picks = guard.pick(eligible, np.random.default_rng(0))
    assert len(picks) == 3 == len(set(picks)) and all(eligible[i] for i in picks) and picks == sorted(picks)
    assert guard.pick([True, False, True], np.random.default_rng(0)) == [0, 2]  # fewer than asked: all of them
    counts = np.zeros(7)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        counts[guard.pick(eligible, rng)] += 1
    assert counts[[1, 4]].sum() == 0 and np.all(np.abs(counts[[0, 2, 3, 5, 6]] / 2000 - 0.6) < 0.05)


def test_bad_guard_settings_are_refused():
    with pytest.raises(ValueError, match="guard patience must be >= 1"):
        RandomGuard(patience=0)
    with pytest.raises(ConfigError, match=r"convergence.guard_samples: Input should be greater than or equal to 0"):
        load_config({"name": "x", "structures": [{"bulk": {"name": "Cu", "a": 3.6}}],
                     "convergence": {"guard_samples": -1}})


def _record(iteration: int, n_selected: int, factor: float | None) -> IterationDoc:
    calibration = None if factor is None else CalibrationDoc(
        factor=factor, quantile=1.5, coverage=0.9, empirical_coverage=1.0, n_samples=2, predicted=[0.1, 0.2],
        observed=[0.1 * factor, 0.2 * factor])
    return IterationDoc(campaign="g", iteration=iteration, trust_lo=0.05, trust_hi=0.3, n_selected=n_selected,
                        calibration=calibration)


def test_the_campaign_side_reads_the_records(db):
    conv = ConvergenceSettings(force_tolerance=0.1, conv_accuracy=0.9)
    deviations = [0.01] * 9 + [0.02]
    assert calibrated_error_above(db, "g", 0, deviations, conv) == (None, "no calibration yet")
    db.upsert("iterations", [_record(0, 4, 20.0), _record(1, 0, 2.0), _record(2, 0, None)])
    # the latest calibration (iteration 1, k = 2): k u <= 0.04 < 0.1 for every frame -> below the tolerance
    above, why = calibrated_error_above(db, "g", 3, deviations, conv)
    assert above is False and why.startswith("calibration of iteration 1")
    # the calibration of iteration 0 (k = 20) puts every frame above it
    assert calibrated_error_above(db, "g", 1, deviations, conv)[0] is True
    assert quiet_iterations(db, "g", 3, 0) == 3 and quiet_iterations(db, "g", 3, 1) == 0
    assert quiet_iterations(db, "g", 1, 0) == 1
