"""A 2-iteration campaign end to end on the embedded store, with EMT and a tiny MACE committee."""

import json
import subprocess
import sys

import numpy as np
import pytest

from almat.campaign import CampaignExistsError, load_config, run_campaign
from almat.learner.committee import Committee
from almat.learner.jobs import load_labels
from almat.schemas import CampaignStatus, ModelDoc
from almat.stores import CampaignDB

CONFIG = {
    "name": "cu-e2e",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 8, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 3, "hyperparameters": {"num_channels": 8, "epochs": 80, "warm_start_epochs": 60,
                                                  "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 60, "sample_every": 6, "trust_lo": 0.05, "trust_hi": 5.0},
    "selection": {"policy": "diverse", "max_select": 4},  # max deviation, near-duplicates filtered by FPS
    # calibrated stopping (the default rule): 4 held-out frames per iteration; every explored frame's
    # calibrated uncertainty must be below 0.05 eV/Å to converge; at most two iterations
    "convergence": {"rule": "calibrated", "force_tolerance": 0.05, "calibration_samples": 4,
                    "conv_accuracy": 1.0, "max_iterations": 2},
}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from almat.settings import AlmatSettings

    tmp = tmp_path_factory.mktemp("campaign")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    result = run_campaign(load_config(CONFIG), settings)
    return settings, result


@pytest.mark.slow
def test_two_iterations_run_and_are_recorded(campaign):
    settings, result = campaign
    assert [it.iteration for it in result.iterations] == [0, 1]
    # iteration 0 must not converge (it explores with a committee trained on 8 labels); iteration 1
    # either converges or ends the campaign at max_iterations
    assert result.campaign.status in (CampaignStatus.converged, CampaignStatus.max_iterations)
    first, second = result.iterations
    assert not first.converged and second.stop_reason
    assert first.n_frames_explored == 11 and first.n_labelled >= 1
    assert second.n_train_labels == first.n_train_labels + first.n_labelled
    assert first.test_errors.n_structures == first.n_labelled and first.test_errors.force_rmse > 0
    assert sum(first.deviation_histogram.counts) == first.n_frames_explored
    with CampaignDB.from_settings(settings) as db:
        assert db.labels.count({"campaign": "cu-e2e", "status": "ok"}) == result.campaign.n_labels
        assert db.labels.count({"campaign": "cu-e2e", "iteration": -1}) == 8
        assert db.models.count({"campaign": "cu-e2e"}) == 6
        assert db.iterations.count({"campaign": "cu-e2e"}) == 2
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "cu-e2e", "iteration": 1})]
        assert all(m.warm_started_from for m in models)  # iteration 1 continues from iteration 0


@pytest.mark.slow
def test_calibration_is_held_out_recorded_and_cumulative(campaign):
    settings, result = campaign
    first, second = result.iterations
    assert first.stop_rule == second.stop_rule == "calibrated"
    assert len(first.calibration_label_ids) == 4 and len(second.calibration_label_ids) == 4
    assert not set(first.calibration_label_ids) & set(second.calibration_label_ids)
    # iteration 1 re-scores iteration 0's held-out frames with its own committee
    assert first.calibration.n_samples == 4 and second.calibration.n_samples == 8
    for it in (first, second):
        cal = it.calibration
        assert cal.iteration == it.iteration and cal.factor > 0 and len(cal.predicted) == cal.n_samples
        assert 0.0 <= it.calibrated_fraction <= 1.0
    assert second.stop_reason and ("k·u" in second.stop_reason or "max_iterations" in second.stop_reason)
    held_out = set(first.calibration_label_ids + second.calibration_label_ids)
    with CampaignDB.from_settings(settings) as db:
        # the held-out frames are labelled, but no committee ever trained or validated on them
        assert db.labels.count({"label_id": {"$in": sorted(held_out)}, "status": "ok"}) == 8
        for m in db.models.query({"campaign": "cu-e2e"}):
            assert not held_out & set(m["training_label_ids"] + m["validation_label_ids"])
        roles = [d["metadata"].get("role") for d in db.structures.query({"campaign": "cu-e2e", "source": "md"})]
        assert roles.count("calibration") == 8
        from almat.campaign import resume_state

        state = resume_state(db, load_config(CONFIG))
        assert not held_out & set(state.label_ids)
        assert len(state.label_ids) == second.n_train_labels + second.n_labelled
    # the recorded calibration is what the committee says about the stored labels
    from almat.uncertainty.calibration import committee_errors

    with CampaignDB.from_settings(settings) as db:
        committee = Committee.from_store(db, first.model_ids)
        labels = load_labels(db, first.calibration_label_ids)
    u, e = committee_errors(committee, [lab.to_atoms() for lab in labels])
    np.testing.assert_allclose(sorted(u), sorted(first.calibration.predicted), rtol=1e-5)
    np.testing.assert_allclose(sorted(e), sorted(first.calibration.observed), rtol=1e-5)


@pytest.mark.slow
def test_store_is_readable_from_a_new_process(campaign):
    settings, result = campaign
    env_code = (
        "import os, sys; os.environ['ALMAT_DB_PATH'] = sys.argv[1];"
        "from almat.cli import app; app(['status', 'cu-e2e', '--json'])"
    )
    out = subprocess.run([sys.executable, "-c", env_code, str(settings.db_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["status"] == result.campaign.status.value and len(status["iterations"]) == 2
    assert status["iterations"][1]["train_labels"] == result.iterations[1].n_train_labels


@pytest.mark.slow
def test_final_committee_predicts_and_agrees_on_its_training_data(campaign):
    settings, result = campaign
    last = result.iterations[-1]
    with CampaignDB.from_settings(settings) as db:
        committee = Committee.from_store(db, last.model_ids)
        members = [ModelDoc.from_store(db.models.query_one({"model_id": m})) for m in last.model_ids]
        # the labels every member was trained on (each also held a few out for validation)
        ids = set.intersection(*(set(m.training_label_ids) for m in members))
        assert len(ids) >= 0.6 * last.n_train_labels
        labels = load_labels(db, sorted(ids))
    pred = committee.predict([lab.to_atoms() for lab in labels])
    assert np.all(np.isfinite(pred.energies))
    ref = np.concatenate([lab.forces for lab in labels])
    mean = np.concatenate([pred.mean_forces(i) for i in range(len(labels))])
    assert np.sqrt(np.mean((mean - ref) ** 2)) < np.sqrt(np.mean(ref**2))  # better than zero forces
    assert pred.model_deviation.max() < last.trust_lo, pred.model_deviation.max()


@pytest.mark.slow
def test_same_name_is_refused_and_resume_continues(campaign):
    settings, _ = campaign
    with pytest.raises(CampaignExistsError, match="already exists"):
        run_campaign(load_config(CONFIG), settings)
    changed = {**CONFIG, "sampler": {**CONFIG["sampler"], "steps": 30}}
    with pytest.raises(CampaignExistsError, match="different configuration"):
        run_campaign(load_config(changed), settings, resume=True)
    with pytest.raises(CampaignExistsError, match="already converged|max_iterations"):
        run_campaign(load_config(CONFIG), settings, resume=True)


@pytest.mark.slow
def test_recycled_calibration_labels_train_the_next_committee(tmp_path):
    """recycle_calibration: iteration 0's held-out frames calibrate committee 0, then train committee 1;
    iteration 1 is calibrated on its own fresh frames only."""
    from almat.settings import AlmatSettings

    cfg = {**CONFIG, "name": "cu-recycle",
           "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 30, "warm_start_epochs": 15,
                                                         "batch_size": 2}},
           "convergence": {**CONFIG["convergence"], "recycle_calibration": True}}
    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    result = run_campaign(load_config(cfg), settings)
    first, second = result.iterations
    recycled = set(first.calibration_label_ids)
    assert len(recycled) == 4
    assert second.n_train_labels == first.n_train_labels + first.n_labelled + len(recycled)
    assert second.calibration.n_samples == 4  # the recycled frames are training data now, not held out
    with CampaignDB.from_settings(settings) as db:
        for m in db.models.query({"campaign": "cu-recycle", "iteration": 1}):
            assert recycled <= set(m["training_label_ids"] + m["validation_label_ids"])
        for m in db.models.query({"campaign": "cu-recycle", "iteration": 0}):
            assert not recycled & set(m["training_label_ids"] + m["validation_label_ids"])
        from almat.campaign import resume_state

        assert recycled <= set(resume_state(db, load_config(cfg)).label_ids)
        not_recycled = {**cfg, "convergence": {**cfg["convergence"], "recycle_calibration": False}}
        assert not recycled & set(resume_state(db, load_config(not_recycled)).label_ids)
