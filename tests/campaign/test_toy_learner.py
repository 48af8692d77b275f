"""A learner from outside the package (``tests/toy_learner.py``: its module and one ``register_learner`` call) runs a
whole MD campaign (Cu, EMT): its models are stored in the safe format and reload, and its committee's deviation
drives the selection."""

import base64
import io

import numpy as np
import pytest
import torch
import toy_learner  # noqa: F401 - registers the learner kind "toy"

from almat.campaign import CampaignMaker, load_config, run_campaign
from almat.learner.committee import Committee
from almat.learner.descriptors import structure_descriptors
from almat.learner.jobs import TrainCommitteeMaker
from almat.learner.models import MODEL_FORMAT
from almat.learner import registry
from almat.learner.registry import LEARNERS
from almat.schemas import CampaignStatus, ModelDoc, StructureDoc, to_atoms
from almat.settings import AlmatSettings
from almat.stores import CampaignDB, get_blob

CONFIG = {
    "name": "cu-toy",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 8, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"kind": "toy", "n_models": 3, "hyperparameters": {"epochs": 15, "warm_start_epochs": 8}},
    # every explored frame below 50 eV/Å is a candidate: the toy committee's deviation alone ranks them
    "sampler": {"temperatures": [800], "steps": 40, "sample_every": 4, "trust_lo": 1e-6, "trust_hi": 50.0},
    "selection": {"policy": "max_deviation", "max_select": 3},
    "convergence": {"rule": "calibrated", "force_tolerance": 1e-4, "calibration_samples": 2, "max_iterations": 2},
}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    return settings, run_campaign(load_config(CONFIG), settings)


@pytest.mark.slow
def test_a_registered_learner_runs_a_campaign_whose_models_reload(campaign):
    settings, result = campaign
    assert [it.iteration for it in result.iterations] == [0, 1]
    assert result.campaign.status == CampaignStatus.max_iterations
    first, second = result.iterations
    assert second.n_train_labels == first.n_train_labels + first.n_labelled
    with CampaignDB.from_settings(settings) as db:
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "cu-toy"})]
        assert len(models) == 6 and {m.architecture for m in models} == {"ToyPairMLP"}
        assert all(m.warm_started_from for m in models if m.iteration == 1)  # member k continues from member k
        assert {m.hyperparameters["epochs"] for m in models} == {15}
        # the weights are almat's safe format: a state dict and an architecture record, nothing pickled
        payload = torch.load(io.BytesIO(base64.b64decode(get_blob(db.data, models[0].weights_blob_id))),
                             weights_only=True)
        assert payload["format"] == MODEL_FORMAT and payload["architecture"]["class"] == "ToyPairMLP"
        committee = Committee.from_store(db, second.model_ids)
    assert type(committee.learner).__name__ == "ToyLearner" and committee.elements == ["Cu"]
    assert committee.n_members == 3 and np.isfinite(second.test_errors.force_rmse)


@pytest.mark.slow
def test_the_toy_committees_deviation_drives_the_selection(campaign):
    settings, result = campaign
    with CampaignDB.from_settings(settings) as db:
        for it in result.iterations:
            # every frame but the perfect start crystal (zero forces by symmetry for every member) is a candidate
            assert it.n_frames_explored - 1 <= it.n_candidates and it.n_selected == 3 < it.n_candidates
            docs = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "cu-toy", "iteration":
                                                                           it.iteration, "source": "md"})]
            selected = [d for d in docs if d.metadata.get("policy") == "max_deviation"]
            held_out = [d for d in docs if d.metadata.get("role") == "calibration"]
            assert len(selected) == 3 and held_out
            # the recorded deviations are the toy committee's own, recomputed from its stored models
            committee = Committee.from_store(db, it.model_ids)
            recorded = np.array([d.metadata["model_deviation"] for d in selected])
            np.testing.assert_allclose(committee.predict([to_atoms(d.structure) for d in selected]).model_deviation,
                                       recorded, rtol=1e-6)
            # max deviation: no explored frame outside the selection deviates more than the least selected one
            others = [d.metadata["model_deviation"] for d in held_out if d.structure_hash not in
                      {s.structure_hash for s in selected}]
            assert others and all(dev <= recorded.min() + 1e-9 for dev in others)
            assert structure_descriptors(committee, [d.structure for d in selected]).shape == (3, 8)


def test_registering_needs_one_call_and_bad_input_is_one_line(tmp_path, monkeypatch):
    assert LEARNERS["toy"] == "toy_learner:ToyLearner"
    assert CampaignMaker.from_config(CONFIG).trainer.learner.kind == "toy"
    assert TrainCommitteeMaker(learner="toy").hyperparameters == toy_learner.ToyHyperParameters()
    with pytest.raises(ValueError, match=r"learner.hyperparameters.cutof: unknown key; valid: cutoff, n_basis"):
        load_config({**CONFIG, "learner": {"kind": "toy", "hyperparameters": {"cutof": 3.0}}})
    with pytest.raises(ValueError, match=r"unknown learner kind 'toys'; valid: mace, mace-finetune, chgnet-finetune, "
                                         r"deepmd, sevennet-finetune, toy$"):
        load_config({**CONFIG, "learner": {"kind": "toys"}})
    # a learner whose package is not installed: one line naming its extra, when the campaign Maker is built
    (tmp_path / "needs_deepmd.py").write_text("import deepmd_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for table, value in ((registry.LEARNERS, "needs_deepmd:DeepmdLearner"), (registry.EXTRAS, "deepmd"),
                         (registry.HYPERPARAMETERS, toy_learner.ToyHyperParameters)):
        monkeypatch.setitem(table, "deepmd", value)
    with pytest.raises(ValueError, match=r"^learner: learner deepmd needs deepmd_not_installed, which is not "
                                         r"installed: pip install almat\[deepmd\]$"):
        CampaignMaker.from_config({**CONFIG, "learner": {"kind": "deepmd"}})
