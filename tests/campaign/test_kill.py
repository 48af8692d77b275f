"""Real ``almat run`` processes killed with SIGKILL at several moments of each campaign kind, then resumed:
the campaign ends with nothing lost, duplicated or half-written. While one runs, a second process on the
same campaign is refused, naming the first; a killed campaign shows as ``killed``."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from almat.campaign.lease import campaign_state, lease_store
from almat.learner.committee import load_model
from almat.schemas import LabelDoc, ModelDoc
from almat.stores import CampaignDB

ORACLE = {"calculator": {"module": "slow_emt", "class": "SlowEMT", "kwargs": {"delay": 0.4}}}
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
HP = {"num_channels": 8, "epochs": 8, "warm_start_epochs": 4, "batch_size": 4, "eval_every": 4}
MD = {"name": "md-kill", "oracle": ORACLE, "structures": [{"bulk": CU}],
      "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
      "learner": {"n_models": 2, "hyperparameters": HP},
      "sampler": {"temperatures": [600], "steps": 40, "sample_every": 4, "trust_lo": 0.02, "trust_hi": 5.0},
      "selection": {"policy": "max_deviation", "max_select": 3},
      "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 2,
                      "max_iterations": 2}}
POOL = {"kind": "pool", "name": "pool-kill", "oracle": ORACLE,
        "pool": [{"bulk": CU, "perturb": {"n": 24, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
        "learner": {"n_models": 2, "hyperparameters": HP}, "n_init": 5, "budget": 3, "n_test": 4,
        "max_iterations": 2, "seed": 5}
NFT = {"kind": "nft", "name": "nft-kill", "oracle": ORACLE,
       "target": {"bulk": CU, "supercell": [3, 3, 3], "rattle_std": 0.1, "vacancies": 1},
       "structures": [{"bulk": CU, "supercell": [2, 2, 2]}], "initial": {"n_per_structure": 5},
       "learner": {"n_models": 2, "hyperparameters": {**HP, "r_max": 4.0, "radial_mlp": [16]}},
       "chunks": {"cutoff": 4.5, "percentile": 95, "max_chunks": 2, "vacuum": 5.0},
       "convergence": {"stop_delta": 0.001, "max_iterations": 2, "steps_not_improved": 3}}


def _count(settings, collection: str, name: str) -> int:
    with CampaignDB.from_settings(settings) as db:
        return getattr(db, collection).count({"campaign": name})


class Runner:
    def __init__(self, tmp_path: Path, settings, config: dict):
        self.settings, self.name = settings, config["name"]
        self.file = tmp_path / f"{self.name}.yaml"
        self.file.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "ALMAT_DB_PATH": str(settings.db_path), "ALMAT_RUN_DIR": str(settings.run_dir),
                    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "launch"),
                                                   os.environ.get("PYTHONPATH", "")])}

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "almat.cli", "run", str(self.file), *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def kill_when(self, proc: subprocess.Popen, collection: str, at_least: int, timeout: float = 600) -> None:
        """SIGKILL ``proc`` as soon as the campaign has ``at_least`` documents in ``collection``."""
        deadline = time.monotonic() + timeout
        while _count(self.settings, collection, self.name) < at_least:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the campaign made no progress"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        with CampaignDB.from_settings(self.settings) as db:
            status, why = campaign_state(db, db.campaigns.query_one({"name": self.name}))
        assert status == "killed" and f"on {socket.gethostname()}" in why, (status, why)

    def finish(self) -> str:
        proc = self.start("--resume")
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out
        return out


def _intact(settings, name: str, records: str, n_iterations: int) -> list[dict]:
    """Nothing duplicated or half-written: every label and model reads back, no configuration was
    labelled twice, one record per iteration, and the lease is gone."""
    with CampaignDB.from_settings(settings) as db:
        labels = list(db.labels.query({"campaign": name}))
        for raw in labels:
            LabelDoc.from_store(raw)
        twice = [h for h, n in Counter(d["structure_hash"] for d in labels).items() if n > 1]
        assert not twice, f"{len(twice)} configuration(s) labelled twice"
        its = sorted(d["iteration"] for d in getattr(db, records).query({"campaign": name}))
        assert its == list(range(n_iterations))
        used = {m for rec in getattr(db, records).query({"campaign": name}) for m in rec["model_ids"]}
        models = list(db.models.query({"campaign": name}))
        assert {d["model_id"] for d in models} == used, "models of killed iterations were left behind"
        blobs = {d["blob_uuid"] for d in db.data.query({"kind": "mlip-weights", "campaign": name})}
        assert blobs == {d["weights_blob_id"] for d in models}
        last = max(getattr(db, records).query({"campaign": name}), key=lambda d: d["iteration"])
        for model_id in last["model_ids"]:
            load_model(db.data, ModelDoc.from_store(db.models.query_one({"model_id": model_id})))
        assert campaign_state(db, db.campaigns.query_one({"name": name}))[0] != "killed"
    assert lease_count(settings, name) == 0
    return labels


@pytest.mark.slow
def test_md_campaign_killed_in_labelling_training_and_exploration_resumes(tmp_path, settings):
    run = Runner(tmp_path, settings, MD)
    first = run.start()
    run_dir_ready = time.monotonic() + 300
    while lease_count(settings, MD["name"]) == 0:
        assert first.poll() is None and time.monotonic() < run_dir_ready, first.stdout.read()
        time.sleep(0.2)
    second = run.start("--resume")  # the same campaign from another process: refused, naming the first
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 1
    assert f"already running (pid {first.pid} on {socket.gethostname()}, started " in " ".join(out.split())
    from typer.testing import CliRunner

    from almat.cli import app

    status = CliRunner().invoke(app, ["status", "--json"], env=run.env)  # reads while the campaign writes
    assert status.exit_code == 0 and "md-kill" in status.output, status.output
    run.kill_when(first, "labels", 3)  # in the initial labelling (6 structures)
    run.kill_when(run.start("--resume"), "models", 1)  # while training iteration 0's committee
    run.kill_when(run.start("--resume"), "labels", 6 + 1)  # iteration 0's candidates or calibration frames
    run.finish()
    labels = _intact(settings, MD["name"], "iterations", 2)
    assert sum(1 for d in labels if d["iteration"] == -1) == 6  # every initial structure labelled once


def lease_count(settings, name: str) -> int:
    with CampaignDB.from_settings(settings) as db:
        store = lease_store(db)
        store.connect()
        try:
            return store.count({"campaign": name})
        finally:
            store.close()


@pytest.mark.slow
@pytest.mark.parametrize("config, records", [(POOL, "pool_iterations"), (NFT, "nft_iterations")], ids=["pool", "nft"])
def test_pool_and_nft_campaigns_killed_mid_labelling_resume(tmp_path, settings, config, records):
    run = Runner(tmp_path, settings, config)
    first_batch = 5 + 4 + 1 if config is POOL else 5 + 1  # a label of iteration 0's batch or chunks
    run.kill_when(run.start(), "labels", 2)
    run.kill_when(run.start("--resume"), "labels", first_batch)
    run.finish()
    _intact(settings, config["name"], records, 2)
