"""A small EMT Cu campaign that stops by the confidence bound, with trust levels in calibrated units."""

import pytest

from almat.campaign import load_config, resume_state, run_campaign
from almat.schemas import CampaignStatus
from almat.stores import CampaignDB
from almat.uncertainty.calibration import effective_n, share_lower_bound

LO, HI = 0.2, 50.0  # calibrated trust levels (eV/Å of k x deviation)
CONFIG = {
    "name": "cu-bound",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 6, "warm_start_epochs": 2,
                                                  "batch_size": 3}},
    "sampler": {"steps": 40, "sample_every": 5, "temperatures": [300, 600], "trust_units": "calibrated",
                "trust_lo": LO, "trust_hi": HI},
    "selection": {"policy": "max_deviation", "max_select": 2},
    # every frame's k·u is below 100 eV/Å: the share is 1, and only the frames it rests on limit the bound.
    # 3 calibration frames (0.1^(1/3) = 0.46 < 0.5 at most) cannot pass at iteration 0; 6 (cumulative) with
    # the explored frames can (n_eff >= 3.33 for 0.5)
    "convergence": {"rule": "confidence_bound", "conv_interval": "clopper-pearson", "conv_accuracy": 0.5,
                    "conv_confidence": 0.9,
                    "force_tolerance": 100.0, "calibration_samples": 3, "max_iterations": 3},
}


@pytest.mark.slow
def test_the_bound_waits_for_enough_frames_and_calibrated_levels_follow_k(tmp_path):
    from almat.settings import AlmatSettings

    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    config = load_config(CONFIG)
    result = run_campaign(config, settings)
    assert result.campaign.status == CampaignStatus.converged
    first, second = result.iterations
    # iteration 0: the point share (1.0) is above conv_accuracy, but the bound on < 3 frames is not
    assert first.calibrated_fraction == 1.0 and first.calibration.n_samples == 3
    assert first.calibrated_fraction_bound < 0.5 and not first.rule_passed and not first.converged
    assert second.rule_passed and second.converged and second.calibration.n_samples == 6
    for it in (first, second):
        n_eff = effective_n(it.n_frames_explored, it.calibration.n_samples)
        assert it.bound_n_effective == pytest.approx(n_eff) and it.confidence_level == 0.9
        assert it.calibrated_fraction_bound == pytest.approx(share_lower_bound(n_eff, n_eff, 0.9, "clopper-pearson"))
    assert second.calibrated_fraction_bound >= 0.5 and "90% lower bound" in result.campaign.stop_reason
    # no k at iteration 0: hi taken as raw (k = 1), lo adaptive; then both are the calibrated levels / k
    assert first.trust_factor is None and first.trust_hi == HI and first.n_candidates >= 1
    k = first.calibration.factor
    assert second.trust_factor == pytest.approx(k)
    assert second.trust_lo == pytest.approx(LO / k) and second.trust_hi == pytest.approx(HI / k)
    with CampaignDB.from_settings(settings) as db:
        state = resume_state(db, config).state
    assert state["trust_factor"] == pytest.approx(second.calibration.factor)  # a resume converts with the latest k
