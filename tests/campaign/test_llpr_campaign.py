"""A campaign with ``learner.uncertainty: llpr`` end to end (Cu, EMT): one MACE model an iteration, its
uncertainty the LLPR of its last layer, selected on and calibrated as a committee's deviation is."""

import numpy as np
import pytest

from almat.campaign import load_config, run_campaign
from almat.learner.committee import Committee
from almat.learner.jobs import TrainCommitteeMaker
from almat.schemas import ModelDoc
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

CONFIG = {
    "name": "cu-llpr",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"uncertainty": "llpr",
                "hyperparameters": {"num_channels": 8, "epochs": 20, "warm_start_epochs": 6, "batch_size": 3}},
    "sampler": {"temperatures": [600], "steps": 30, "sample_every": 5, "trust_lo": 0.02, "trust_hi": 5.0},
    "selection": {"max_select": 3},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 3, "max_iterations": 2},
}


@pytest.mark.slow
def test_llpr_campaign_trains_one_model_an_iteration_and_calibrates_its_uncertainty(tmp_path):
    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    result = run_campaign(load_config(CONFIG), settings)
    assert [it.iteration for it in result.iterations] == [0, 1]
    first, second = result.iterations
    with CampaignDB.from_settings(settings) as db:
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "cu-llpr"})]
        committee = Committee.from_store(db, second.model_ids)  # reloaded with weights_only=True
    assert {m.architecture for m in models} == {"LLPRMACE"} and sorted(m.iteration for m in models) == [0, 1]
    later = next(m for m in models if m.iteration == 1)
    assert later.warm_started_from == first.model_ids[0] and later.hyperparameters["uncertainty"] == "llpr"
    assert all(m.validation_metrics["llpr_alpha2"] > 0 for m in models)
    assert committee.n_members == 2 and len(second.model_ids) == 1
    for it in result.iterations:
        assert it.n_candidates > 0 and it.n_labelled > 0  # its uncertainty selects frames
        assert it.calibration is not None and it.calibration.n_samples >= 2 and it.calibration.factor > 0
    assert second.n_train_labels > first.n_train_labels and np.isfinite(second.test_errors.force_rmse)


def test_llpr_settings_and_fingerprint():
    committee = load_config({**CONFIG, "learner": {**CONFIG["learner"], "uncertainty": "committee"}})
    llpr = load_config(CONFIG)
    assert committee.fingerprint() != llpr.fingerprint()
    maker = TrainCommitteeMaker.from_settings(llpr.learner)
    assert maker.uncertainty == "llpr" and type(maker.learner).__name__ == "LlprMaceLearner"
    assert TrainCommitteeMaker.from_settings(llpr.learner).llpr_rank == 4  # the default: 4 directions
    ranked = load_config({**CONFIG, "learner": {**CONFIG["learner"], "llpr_rank": None}})
    assert TrainCommitteeMaker.from_settings(ranked.learner).llpr_rank is None
    assert ranked.fingerprint() != llpr.fingerprint()


def test_status_and_serve_name_the_uncertainty_kind():
    from almat.learner.settings import uncertainty_label

    def label(learner):
        return uncertainty_label(load_config({**CONFIG, "learner": learner}).model_dump(mode="json"))

    assert label(CONFIG["learner"]) == "llpr, rank 4" and label({**CONFIG["learner"], "llpr_rank": None}) == "llpr"
    assert label({"uncertainty": "committee", "n_models": 3}) == "committee of 3"
    assert label({"uncertainty": "shallow", "n_heads": 3, "nll_epochs": 5}) == "shallow, 3 heads, NLL 5 epochs"
    assert uncertainty_label({}) == "-"
