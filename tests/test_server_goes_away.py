"""A MongoDB server that goes away in the middle of ``almat run``: the run ends with one line naming the host;
once the server is back, ``--resume`` finishes the campaign, and nothing is lost or duplicated (labels,
models and their weights, iteration records).

The test starts a stand-in of its own (``scripts/mongo/start.sh`` with its own state folder and port, the
venv of the shared one), so the shared server is never stopped. The oracle (``tests/stopping_emt.py``)
stops the server at its 14th calculation, in the labelling of iteration 1 (6 initial labels, then 5 a round).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
MONGO = ROOT / "scripts" / "mongo"
pytestmark = [pytest.mark.mongo, pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("ALMAT_TEST_MONGO_URI"),
                                 reason="ALMAT_TEST_MONGO_URI not set (the mongo tests are off)")]

CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}
CONFIG = {
    "name": "away", "structures": [{"bulk": CU, "supercell": [2, 2, 2]}],
    "oracle": {"calculator": {"module": "stopping_emt", "class": "ServerStoppingEMT"}},
    "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 6, "warm_start_epochs": 3,
                                                  "batch_size": 4, "eval_every": 3}},
    "sampler": {"temperatures": [600], "steps": 30, "sample_every": 3, "trust_lo": 0.0001, "trust_hi": 50.0},
    "selection": {"policy": "max_deviation", "max_select": 3},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.0001, "calibration_samples": 2,
                    "conv_accuracy": 1.0, "max_iterations": 2},
}


def _mongo_env(state: Path, port: int | None = None) -> dict[str, str]:
    env = {**os.environ, "ALMAT_MONGO_DIR": str(state),
           "ALMAT_MONGO_VENV": os.environ.get("ALMAT_MONGO_VENV", str(ROOT / ".mongo" / "venv"))}
    env.pop("ALMAT_MONGO_PORT", None)
    return env | ({"ALMAT_MONGO_PORT": str(port)} if port else {})


def _start(state: Path, port: int | None = None) -> str:
    out = subprocess.run(["bash", str(MONGO / "start.sh")], env=_mongo_env(state, port), capture_output=True,
                         text=True, timeout=900)
    if out.returncode and "needs Python >= 3.13" in out.stderr:
        pytest.skip("the MongoDB stand-in needs Python >= 3.13")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def own_server(tmp_path):
    """A stand-in of this test's own: (state folder, URI)."""
    state = tmp_path / "mongo"
    yield state, _start(state)
    subprocess.run(["bash", str(MONGO / "stop.sh"), "--purge"], env=_mongo_env(state), capture_output=True)


def _records(uri: str, database: str) -> dict:
    """What the campaign stored: labels, models, iteration records, weights files, the campaign."""
    from pymongo import MongoClient

    client = MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        db = client[database]
        find = lambda name: list(db[name].find({"campaign": "away"}, {"_id": 0}))  # noqa: E731
        blobs = [f["metadata"]["blob_uuid"] for f in db["jobflow_data.files"].find({}, {"metadata.blob_uuid": 1})]
        return {"labels": find("almat_labels"), "models": find("almat_models"), "blobs": blobs,
                "iterations": sorted(find("almat_iterations"), key=lambda d: d["iteration"]),
                "campaign": db.almat_campaigns.find_one({"name": "away"}, {"_id": 0})}
    finally:
        client.close()


def _almat(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from almat.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_server_that_goes_away_mid_run(own_server, tmp_path):
    state, uri = own_server
    port, database = urlsplit(uri).port, f"almat_test_{uuid.uuid4().hex[:12]}"
    config = tmp_path / "away.yaml"
    config.write_text(json.dumps(CONFIG))
    env = {**os.environ, "ALMAT_MONGO_URI": uri, "ALMAT_DATABASE": database, "ALMAT_MONGO_TIMEOUT_MS": "2000",
           "ALMAT_RUN_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}

    first = _almat(["run", str(config)], {**env, "ALMAT_TEST_STOP_SERVER": f"{state}:{tmp_path / 'calls'}:14"})
    output = first.stdout + first.stderr
    assert first.returncode == 1 and not (state / "server.pid").exists(), output
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in output and "Exception" not in output, output
    assert re.fullmatch(rf"error: lost the connection to MongoDB at 127\.0\.0\.1:{port} \(\w+\): start the server "
                        r"again, then resume the campaign \(--resume\)", errors[0]), errors[0]

    assert _start(state, port) == uri  # the same server again: same port, data and password
    before = _records(uri, database)
    assert [it["iteration"] for it in before["iterations"]] == [0] and before["campaign"]["status"] == "running"
    resumed = _almat(["run", str(config), "--resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _records(uri, database)

    assert after["campaign"]["status"] == "max_iterations" and after["campaign"]["n_iterations"] == 2
    # iteration records: one per iteration, the one stored before the server went away unchanged
    assert [it["iteration"] for it in after["iterations"]] == [0, 1]
    assert after["iterations"][0] == before["iterations"][0]
    # labels: nothing lost (every label stored before is still there, as it was), none twice
    ids = [lab["label_id"] for lab in after["labels"]]
    assert len(ids) == len(set(ids)) and not [h for h, n in Counter(lab["structure_hash"] for lab in
                                                                     after["labels"]).items() if n > 1]
    by_id = {lab["label_id"]: lab for lab in after["labels"]}
    assert all(by_id.get(lab["label_id"]) == lab for lab in before["labels"])
    assert after["campaign"]["n_labels"] == sum(lab["status"] == "ok" for lab in after["labels"])
    # models: the committee of each iteration once, iteration 0's kept, every weights file there
    committees = Counter((m["iteration"], m["committee_index"]) for m in after["models"])
    assert sorted(committees) == [(0, 0), (0, 1), (1, 0), (1, 1)] and set(committees.values()) == {1}
    assert {m["model_id"] for m in after["models"]} == {i for it in after["iterations"] for i in it["model_ids"]}
    assert [m for m in after["models"] if m["iteration"] == 0] == [m for m in before["models"] if m["iteration"] == 0]
    assert {m["weights_blob_id"] for m in after["models"]} <= set(after["blobs"])
