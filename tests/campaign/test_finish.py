"""The production model (``finish:``): mace_run_train on all of a campaign's ok labels when it stops, scored on
its calibration frames, stored safely with the user's .model file; bad finish sections refused before any job."""

import base64
import os
import uuid
import io
import zipfile

import numpy as np
import pytest

from almat.campaign import CampaignConvergedError, CampaignExistsError, load_config, run_campaign
from almat.campaign.config import ConfigError
from almat.campaign.flow import CampaignMaker
from almat.export.model import export_model
from almat.learner.committee import Committee, load_model
from almat.learner.production import MaceRunTrain, write_training_file
from almat.schemas import CampaignDoc, ModelDoc
from almat.stores import CampaignDB, get_blob

#: a tiny production model: 2 epochs of a small MACE (what the test can afford), no SWA stage
TINY = {"num_channels": 8, "max_L": 0, "max_num_epochs": 2, "swa": False, "batch_size": 4, "r_max": 4.0}

CONFIG = {
    "name": "cu-finish",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 8, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 20, "warm_start_epochs": 10,
                                                  "batch_size": 4}},
    "sampler": {"temperatures": [600], "steps": 30, "sample_every": 6, "trust_lo": 0.01, "trust_hi": 5.0},
    "selection": {"max_select": 3},
    "convergence": {"force_tolerance": 0.05, "calibration_samples": 3, "max_iterations": 1},
}


def _config(**finish):
    return load_config({**CONFIG, **({"finish": finish} if finish else {})})


def test_an_unknown_trainer_or_option_is_one_line_before_any_job():
    with pytest.raises(ConfigError, match=r"finish.trainer: unknown trainer 'nequip'; valid: mace_run_train"):
        _config(trainer="nequip")
    with pytest.raises(ConfigError, match=r"^finish.options.num_chanels: mace_run_train has no option "
                                          r"--num_chanels$"):
        CampaignMaker.from_config(_config(options={"num_chanels": 8}))
    with pytest.raises(ConfigError, match=r"finish.options.train_file: almat sets it"):
        CampaignMaker.from_config(_config(options={"train_file": "x.xyz"}))
    # the finish section is not part of what defines the campaign's data
    assert _config(options=TINY).fingerprint() == _config().fingerprint()


def test_training_file_carries_the_labels_under_ref_keys(tmp_path):
    from ase.io import read

    from emt_cu import emt_cu_atoms

    frames = emt_cu_atoms(3, seed=4)
    assert write_training_file(frames, tmp_path / "t.xyz") == 3
    back = read(tmp_path / "t.xyz", ":")
    for a, b in zip(frames, back):
        assert b.info["REF_energy"] == pytest.approx(a.get_potential_energy())
        assert np.allclose(b.arrays["REF_forces"], a.get_forces())
        assert b.calc is None or "forces" not in b.calc.results  # the labels are data, not a calculator


@pytest.mark.slow
def test_production_model_after_the_campaign_and_on_resume(settings, tmp_path):
    # the campaign runs without finish, then its file gains a finish section: resuming the stopped campaign
    # trains only the production model
    first = run_campaign(_config(), settings)
    assert first.campaign.status.value in ("converged", "max_iterations")
    result = run_campaign(_config(options=TINY), settings, resume=True)
    with CampaignDB.from_settings(settings) as db:
        camp = CampaignDoc.from_store(db.campaigns.query_one({"name": "cu-finish"}))
        assert camp.production_model_id
        doc = ModelDoc.from_store(db.models.query_one({"model_id": camp.production_model_id}))
        assert doc.role == "production" and doc.hyperparameters["trainer"] == "mace_run_train"
        assert doc.hyperparameters["options"]["num_channels"] == 8
        assert db.models.count({"campaign": "cu-finish"}) == 3  # the committee's 2 and the production model
        n_ok = db.labels.count({"campaign": "cu-finish", "status": "ok"})
        # all ok labels: the calibration frames held out to score it, the rest trained on
        assert len(doc.training_label_ids) + len(doc.validation_label_ids) == n_ok
        held_ids = {i for d in db.iterations.query({"campaign": "cu-finish"}) for i in d["calibration_label_ids"]}
        assert held_ids and set(doc.validation_label_ids) == held_ids
        assert 0 < doc.validation_metrics["force_rmse"] < 5
        assert doc.validation_metrics["n_frames"] == len(held_ids)
        model = load_model(db.data, doc)  # the safe format
        held = [lab for lab in db.labels.query({"label_id": {"$in": doc.validation_label_ids}})]
        # the stored model gives the errors the job recorded
        from almat.schemas import LabelDoc

        frames = [LabelDoc.from_store(d).to_atoms() for d in held]
        pred = Committee([model, model]).predict(frames)
        df = np.concatenate([(pred.forces[i][0] - f.get_forces()).ravel() for i, f in enumerate(frames)])
        assert np.sqrt(np.mean(df**2)) == pytest.approx(doc.validation_metrics["force_rmse"], rel=1e-4)
        # the user's files: MACE's .model (a torch archive) and its compiled form
        assert "production.model" in doc.files
        raw = base64.b64decode(get_blob(db.data, doc.files["production.model"]))
        assert zipfile.is_zipfile(io.BytesIO(raw))
        # almat export-model hands out that file by default
        out = export_model(db, "cu-finish", tmp_path / "cu.model")
        assert out["role"] == "production" and (tmp_path / "cu.model").read_bytes() == raw
    assert result is not None
    # nothing is left to do: a second resume is refused, and the production model is not retrained
    with pytest.raises((CampaignConvergedError, CampaignExistsError)):
        run_campaign(_config(options=TINY), settings, resume=True)


def test_mace_run_train_failure_is_reported_with_its_log(tmp_path):
    from emt_cu import emt_cu_atoms

    with pytest.raises(RuntimeError, match="mace_run_train failed"):
        # a negative cutoff basis count makes mace_run_train exit non-zero
        MaceRunTrain().train(emt_cu_atoms(4), [], {**TINY, "num_cutoff_basis": -1}, tmp_path)


@pytest.mark.slow
@pytest.mark.mongo
@pytest.mark.skipif(not os.environ.get("ALMAT_TEST_MONGO_URI"), reason="ALMAT_TEST_MONGO_URI not set")
def test_production_model_at_the_end_of_the_flow_on_the_server():
    from almat.settings import AlmatSettings

    settings = AlmatSettings(mongo_uri=os.environ["ALMAT_TEST_MONGO_URI"],
                             database=f"almat_test_{uuid.uuid4().hex[:8]}")
    try:
        run_campaign(_config(options=TINY), settings)  # the finish job is added when the loop stops
        with CampaignDB.from_settings(settings) as db:
            camp = CampaignDoc.from_store(db.campaigns.query_one({"name": "cu-finish"}))
            doc = ModelDoc.from_store(db.models.query_one({"model_id": camp.production_model_id}))
            assert doc.role == "production" and doc.validation_metrics["force_rmse"] > 0
            assert load_model(db.data, doc).almat_architecture["class"] == "MACE"
            assert set(doc.files) >= {"production.model"}
    finally:
        with CampaignDB.from_settings(settings) as db:
            db.labels._collection.database.client.drop_database(settings.database)
