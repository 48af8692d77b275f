"""Stored models are state dicts plus an architecture record, loaded with ``weights_only=True``: a pickle
planted in the data store runs no code, whether the model is loaded by a report, a resume or an explorer."""

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from almat.campaign import run_campaign
from almat.learner.committee import Committee, load_model, save_model
from almat.learner.models import MODEL_FORMAT, UnsafeModelError, model_from_bytes, model_to_bytes
from almat.report import report_command
from almat.schemas import ModelDoc
from almat.stores import CampaignDB

ORACLE = {"calculator": {"module": "interrupting", "class": "InterruptingEMT"}}
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
POOL = {"kind": "pool", "name": "pool-planted", "oracle": ORACLE,
        "pool": [{"bulk": CU, "perturb": {"n": 30, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
        "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 6, "warm_start_epochs": 3,
                                                      "batch_size": 4, "eval_every": 3}},
        "n_init": 6, "budget": 4, "n_test": 8, "max_iterations": 3, "seed": 5}


class _Evil:
    """Unpickling this runs a shell command: what an attacker with write access to the store would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(db: CampaignDB, model_id: str, payload: bytes) -> None:
    doc = ModelDoc.from_store(db.models.query_one({"model_id": model_id}))
    blob = db.data.query_one({"blob_uuid": doc.weights_blob_id})
    db.data.update({**{k: v for k, v in blob.items() if k != "_id"},
                    "data": base64.b64encode(payload).decode("ascii")}, key="blob_uuid")


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_round_trip_keeps_predictions_and_stores_no_module(tiny_committee, cu_data):
    committee, _ = tiny_committee
    model = committee.models[0]
    blob = model_to_bytes(model)
    payload = torch.load(io.BytesIO(blob), weights_only=True)  # tensors and plain values only
    assert payload["format"] == MODEL_FORMAT and payload["architecture"]["class"] == "ScaleShiftMACE"
    again = model_from_bytes(blob)
    frames = cu_data[1][:3]
    before, after = Committee([model, model]).predict(frames), Committee([again, again]).predict(frames)
    np.testing.assert_allclose(after.energies, before.energies, rtol=1e-6)
    np.testing.assert_allclose(after.forces[0], before.forces[0], rtol=1e-5, atol=1e-6)


def test_whole_module_pickle_is_refused_with_the_conversion_command(tiny_committee, db, settings):
    model = tiny_committee[0].models[0]
    old = ModelDoc(campaign="old", iteration=0, weights_blob_id=save_model(db.data, model),
                   hyperparameters={"num_channels": 8, "epochs": 12, "batch_size": 6, "eval_every": 4})
    db.upsert("models", [old])
    plain = torch.nn.Module.__getattribute__(model, "__dict__").copy()
    legacy = type(model).__new__(type(model))
    legacy.__dict__.update({k: v for k, v in plain.items() if k != "almat_architecture"})
    _plant(db, old.model_id, _torch_bytes(legacy))  # what almat 0.1 stored: torch.save(model)
    with pytest.raises(UnsafeModelError, match=f"model {old.model_id} .*refused.*scripts/convert_models.py"):
        load_model(db.data, old)

    env = {**os.environ, "ALMAT_DB_PATH": str(settings.db_path)}
    out = subprocess.run([sys.executable, "scripts/convert_models.py", "--trust"], env=env, capture_output=True,
                         text=True, cwd=Path(__file__).parents[2], timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 of 1 model(s) converted" in out.stdout
    converted = ModelDoc.from_store(db.models.query_one({"model_id": old.model_id}))
    assert converted.weights_blob_id != old.weights_blob_id
    assert db.data.query_one({"blob_uuid": old.weights_blob_id}) is None  # the old pickle is gone
    back = load_model(db.data, converted)
    for p, q in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(p, q)
    refused = subprocess.run([sys.executable, "scripts/convert_models.py"], env=env, capture_output=True,
                             text=True, cwd=Path(__file__).parents[2], timeout=300)
    assert refused.returncode != 0 and "--trust" in refused.stderr


@pytest.mark.slow
def test_planted_pickle_runs_no_code_from_report_resume_or_explore(settings, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "campaign"))  # the interrupting oracle
    monkeypatch.setenv("ALMAT_TEST_INTERRUPT", f"{tmp_path / 'calls'}:21")  # iteration 1's batch
    with pytest.raises(KeyboardInterrupt):
        run_campaign(POOL, settings)
    monkeypatch.delenv("ALMAT_TEST_INTERRUPT")
    marker = tmp_path / "pwned"
    with CampaignDB.from_settings(settings) as db:
        model_ids = db.pool_iterations.query_one({"campaign": POOL["name"], "iteration": 0})["model_ids"]
        # a whole pickle in place of one model, a pickle inside the safe format in place of the other
        _plant(db, model_ids[0], _torch_bytes(_Evil(marker)))
        _plant(db, model_ids[1], _torch_bytes({"format": MODEL_FORMAT, "architecture": {}, "state_dict": _Evil(marker)}))
        for model_id in model_ids:
            with pytest.raises(UnsafeModelError, match=f"model {model_id}"):
                Committee.from_store(db, [model_id, model_id])  # what every explore job does
    res = report_command(POOL["name"], tmp_path / "report", settings=settings)
    assert Path(res["html"]).is_file()
    with pytest.raises(RuntimeError, match=r"did not finish: job 'train it1' failed with UnsafeModelError: model"):
        run_campaign(POOL, settings, resume=True)  # the resumed iteration warm-starts from the planted models
    assert not marker.exists(), "a planted pickle ran code"
