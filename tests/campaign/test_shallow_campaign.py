"""A campaign with ``learner.uncertainty: shallow`` end to end (Cu, EMT): one model a iteration whose heads are
the committee; and the random guard, which labels explored frames when a confident committee selects none."""

import numpy as np
import pytest

from almat.campaign import load_config, run_campaign
from almat.learner.committee import Committee
from almat.learner.jobs import TrainCommitteeMaker
from almat.schemas import CampaignStatus, ModelDoc, StructureDoc
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

CONFIG = {
    "name": "cu-shallow",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"uncertainty": "shallow", "n_heads": 3,
                "hyperparameters": {"num_channels": 8, "epochs": 20, "warm_start_epochs": 10, "batch_size": 3}},
    # trust levels above any deviation of this committee: no frame is ever a candidate, a confident committee
    # (a fixed lo: a shallow ensemble's lo is adaptive by default)
    "sampler": {"temperatures": [600], "steps": 30, "sample_every": 5, "trust_lo": 10.0, "trust_hi": 20.0,
                "adaptive_lo": False},
    "selection": {"max_select": 3},
    # a tolerance no committee meets: the calibrated error stays above it
    "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 3, "max_iterations": 2,
                    "guard_samples": 2},
}


def _run(tmp_path, **convergence):
    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    config = {**CONFIG, "convergence": {**CONFIG["convergence"], **convergence}}
    return settings, run_campaign(load_config(config), settings)


@pytest.mark.slow
def test_shallow_campaign_runs_with_its_heads_as_the_committee_and_the_guard_labels_what_it_misses(tmp_path):
    settings, result = _run(tmp_path)
    assert [it.iteration for it in result.iterations] == [0, 1]
    assert result.campaign.status == CampaignStatus.max_iterations
    first, second = result.iterations
    with CampaignDB.from_settings(settings) as db:
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "cu-shallow"})]
        assert sorted(m.iteration for m in models) == [0, 1]  # one model per iteration
        assert {m.architecture for m in models} == {"ShallowEnsembleMACE"}
        later = next(m for m in models if m.iteration == 1)
        assert later.warm_started_from == first.model_ids[0] and later.hyperparameters["n_heads"] == 3
        committee = Committee.from_store(db, second.model_ids)
        guard = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "cu-shallow",
                                                                          "metadata.policy": "guard-random"})]
    assert committee.n_members == 3 and len(second.model_ids) == 1
    for it in result.iterations:
        # no candidate (the committee is sure of every frame) while the calibrated error is not known (iteration
        # 0) or above the tolerance (iteration 1): the guard labels 2 random explored frames
        assert it.n_candidates == 0 and it.n_selected == 0 and it.n_guard_samples == 2 and it.n_labelled == 2
        assert f"no candidate selected for {it.iteration + 1} iteration(s)" in it.guard_reason
        assert it.calibration is not None and it.calibration.n_samples >= 2  # 3 heads' deviation, calibrated
    assert "not known (no calibration yet)" in first.guard_reason
    assert "above tolerance (calibration of iteration 0" in second.guard_reason
    assert second.n_train_labels == first.n_train_labels + 2 and len(guard) == 4
    assert {g.iteration for g in guard} == {0, 1} and all(g.metadata["model_deviation"] < 10.0 for g in guard)
    assert np.isfinite(second.test_errors.force_rmse)


@pytest.mark.slow
def test_without_the_guard_the_confident_committee_stops_with_nothing_to_learn(tmp_path):
    _, result = _run(tmp_path, guard_samples=0)
    (only,) = result.iterations
    assert only.n_labelled == 0 and only.n_guard_samples == 0 and only.guard_reason is None
    assert result.campaign.status == CampaignStatus.stopped
    assert result.campaign.stop_reason.startswith("nothing new to learn")


def test_uncertainty_settings_and_fingerprints():
    base = load_config({k: v for k, v in CONFIG.items() if k != "learner"})
    explicit = load_config({**CONFIG, "learner": {"uncertainty": "committee", "n_heads": 7}})
    shallow = load_config(CONFIG)
    assert base.fingerprint() == explicit.fingerprint() != shallow.fingerprint()  # committee: as before
    maker = TrainCommitteeMaker.from_settings(shallow.learner)
    assert (maker.uncertainty, maker.n_heads, maker.head_forces) == ("shallow", 3, "all")


@pytest.mark.slow
def test_nll_shallow_campaign_runs_two_iterations_and_calibrates(tmp_path):
    """``nll_epochs``: the heads are fine-tuned with the force NLL every iteration; the campaign runs, selects by
    the heads' spread and fits its factor k on the held-out frames as for any committee."""
    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    config = {**CONFIG, "name": "cu-nll", "learner": {**CONFIG["learner"], "nll_epochs": 3},
              "sampler": {**CONFIG["sampler"], "trust_lo": 0.02, "trust_hi": 5.0}}
    result = run_campaign(load_config(config), settings)
    assert [it.iteration for it in result.iterations] == [0, 1]
    with CampaignDB.from_settings(settings) as db:
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "cu-nll"})]
    assert {m.architecture for m in models} == {"ShallowEnsembleMACE"} and len(models) == 2
    assert all(m.hyperparameters["nll_epochs"] == 3 for m in models)
    assert all(np.isfinite(m.validation_metrics["head_force_spread"]) and m.validation_metrics["head_force_spread"] > 0
               for m in models)
    for it in result.iterations:
        assert it.n_labelled > 0 and it.calibration is not None and it.calibration.factor > 0


def test_new_learner_settings_keep_old_fingerprints():
    shallow = load_config(CONFIG)
    explicit = load_config({**CONFIG, "learner": {**CONFIG["learner"], "nll_epochs": 0, "llpr_rank": 4}})
    tuned = load_config({**CONFIG, "learner": {**CONFIG["learner"], "nll_epochs": 2}})
    assert shallow.fingerprint() == explicit.fingerprint() != tuned.fingerprint()
    assert TrainCommitteeMaker.from_settings(tuned.learner).nll_epochs == 2
