"""A campaign that starts from a foundation model: initial structures from MD with the pretrained CHGNet
(zero-shot, before any label), a committee of CHGNet members fine-tuned from the bundled weights, on EMT."""

import numpy as np
import pytest

pytest.importorskip("chgnet")

from almat.campaign import load_config, run_campaign  # noqa: E402
from almat.learner.committee import Committee  # noqa: E402
from almat.learner.jobs import load_labels  # noqa: E402
from almat.stores import CampaignDB  # noqa: E402

CONFIG = {
    "name": "cu-chgnet",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}],
    "initial": {"method": "foundation-md", "n_per_structure": 5, "md_temperature": 800, "md_steps": 20},
    "learner": {"kind": "chgnet-finetune", "n_models": 2,
                "hyperparameters": {"epochs": 3, "warm_start_epochs": 1, "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 16, "sample_every": 4, "trust_lo": 0.0001, "trust_hi": 5.0},
    "selection": {"policy": "max_deviation", "max_select": 2},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 2, "max_iterations": 2},
}


@pytest.mark.slow
def test_foundation_start_campaign_runs_end_to_end(settings):
    result = run_campaign(load_config(CONFIG), settings)
    assert [r.iteration for r in result.iterations] == [0, 1], result.iterations[-1].model_dump(include={"stop_reason", "n_frames_explored", "accurate_ratio", "candidate_ratio", "failed_ratio", "deviation_histogram", "trust_lo"})
    with CampaignDB.from_settings(settings) as db:
        init = list(db.structures.query({"campaign": "cu-chgnet", "iteration": -1}))
        assert sorted(d["source"] for d in init) == ["init"] + ["md"] * 4  # frames of the foundation model's MD
        models = list(db.models.query({"campaign": "cu-chgnet"}))
        assert len(models) == 4 and {m["architecture"] for m in models} == {"CHGNet"}
        last = result.iterations[-1]
        committee = Committee.from_store(db, last.model_ids)  # reloaded from state dicts, weights_only
        labels = load_labels(db, [d["label_id"] for d in db.labels.query({"campaign": "cu-chgnet", "status": "ok"})])
    frames = [lab.to_atoms() for lab in labels]
    pred = committee.predict(frames)
    e_err = (pred.mean_energy - np.array([a.get_potential_energy() for a in frames])) / len(frames[0])
    assert np.sqrt(np.mean(e_err ** 2)) < 0.03  # on EMT's energy scale (pretrained: about 4 eV/atom off)
    assert last.test_errors.force_rmse is not None


MACE_CONFIG = {
    "name": "cu-mace-ft",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}],
    "initial": {"method": "foundation-md", "n_per_structure": 5, "md_temperature": 800, "md_steps": 20},
    "learner": {"kind": "mace-finetune", "n_models": 2, "foundation": {"path": "foundation.model"},
                "hyperparameters": {"epochs": 6, "warm_start_epochs": 3, "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 16, "sample_every": 4, "trust_lo": 0.001, "trust_hi": 5.0},
    "selection": {"policy": "max_deviation", "max_select": 2},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 2, "max_iterations": 2},
}


@pytest.mark.slow
def test_campaign_from_a_mace_foundation_file(settings, tmp_path):
    """The foundation file is named relative to the campaign file; its MD gives the initial structures, and
    the members, fine-tuned from it, are stored in the safe format (class ``MACE``) and reload."""
    import yaml
    from mace_foundation import write_foundation

    write_foundation(tmp_path)
    path = tmp_path / "cu.yaml"
    path.write_text(yaml.safe_dump(MACE_CONFIG))
    result = run_campaign(load_config(path), settings)
    assert [r.iteration for r in result.iterations] == [0, 1]
    with CampaignDB.from_settings(settings) as db:
        init = list(db.structures.query({"campaign": "cu-mace-ft", "iteration": -1}))
        assert sorted(d["source"] for d in init) == ["init"] + ["md"] * 4  # frames of the foundation's MD
        models = list(db.models.query({"campaign": "cu-mace-ft"}))
        assert len(models) == 4 and {m["architecture"] for m in models} == {"MACE"}
        assert {m["warm_started_from"] is not None for m in models if m["iteration"] == 1} == {True}
        committee = Committee.from_store(db, result.iterations[-1].model_ids)
        labels = load_labels(db, [d["label_id"] for d in db.labels.query({"campaign": "cu-mace-ft", "status": "ok"})])
    frames = [lab.to_atoms() for lab in labels]
    pred = committee.predict(frames)
    assert committee.elements == ["Cu"]
    e_err = (pred.mean_energy - np.array([a.get_potential_energy() for a in frames])) / len(frames[0])
    assert np.sqrt(np.mean(e_err ** 2)) < 0.1
    assert pred.model_deviation.max() > 0  # the members disagree
