"""A campaign through the real cluster path: submit -> qlaunch -> sbatch -> rlaunch in the SLURM job.

Needs a SLURM cluster with partitions ``cpu`` and ``gpu`` (``bash scripts/slurm/start.sh`` makes one on
this machine); skipped with the reason when ``sbatch`` is missing or the cluster does not answer.

LaunchPad and JobStore:

- with ``ALMAT_TEST_MONGO_URI``: skipped. With a server the same path (``qlaunch rapidfire`` for both
  categories at once, iterations added at run time, each job in its category's partition) is run by
  tests/launch/test_cp2k_cluster.py (a real-CP2K campaign of two iterations) and test_concurrent_cluster.py
  (two campaigns at once, a killed worker); repeating it here cost 4.5 min of the suite. (``Cluster`` keeps
  its server mode: LaunchPad and JobStore in fresh databases, dropped at the end, rapidfire per category.)
- without it: FireWorks' mongomock mode (``MONGOMOCK_SERVERSTORE_FILE``) and the embedded SQLite JobStore
  in a temporary folder. A mongomock process reads the whole file when it starts and writes it back
  when it exits, so concurrent processes lose updates: the test then runs strictly one process at a
  time (``qlaunch singleshot``, wait for that SLURM job to end, query, next) until nothing is READY.
  The queue script also waits until the qlaunch that submitted it has exited (a flag file), so that
  qlaunch's write-back cannot overwrite the rocket's.

The workers get the JobStore through a jobflow config file (``JOBFLOW_CONFIG_FILE``) written from
almat's settings (``write_jobflow_config``), and ``ALMAT_DB_PATH``/``ALMAT_MONGO_URI``, so that the
campaign collections the jobs write are the ones ``almat status`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

VENV_BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("ALMAT_SLURM_DIR", "/tmp/almat-slurm"))
JOB_TIMEOUT_S = 600
CAMPAIGN_TIMEOUT_S = 3000

CONFIG = {
    "name": "cu-slurm",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 3, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 15, "warm_start_epochs": 10,
                                                  "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 30, "sample_every": 6, "trust_lo": 0.02, "trust_hi": 5.0},
    "selection": {"max_select": 2},
    # every frame's calibrated uncertainty must be below 0.01 eV/Å to converge, so iteration 1 is added by
    # decide it0; at most two. Two held-out calibration frames per iteration go through SLURM as well.
    "convergence": {"force_tolerance": 0.01, "calibration_samples": 2, "conv_accuracy": 1.0, "max_iterations": 2},
}
PARTITION = {"cpu": "cpu", "gpu": "gpu"}  # category -> partition of its qadapter


def _slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}:/usr/sbin:/sbin"
    conf = STATE / "etc" / "slurm.conf"
    if "SLURM_CONF" not in env and not Path("/etc/slurm/slurm.conf").exists() and conf.exists():
        env["SLURM_CONF"] = str(conf)
    return env


def _require_slurm() -> dict[str, str]:
    env = _slurm_env()
    if shutil.which("sbatch", path=env["PATH"]) is None:
        pytest.skip("sbatch is not on PATH: no SLURM here (bash scripts/slurm/start.sh installs and starts one)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], env=env, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"SLURM does not answer ({exc}); start it with bash scripts/slurm/start.sh")
    if out.returncode != 0:
        pytest.skip(f"SLURM is not up (sinfo: {out.stderr.strip()[:200]}); start it with bash scripts/slurm/start.sh")
    parts = {line.split()[0].rstrip("*") for line in out.stdout.splitlines() if line.split()[1:] == ["up"]}
    missing = set(PARTITION.values()) - parts
    if missing:
        pytest.skip(f"SLURM has no partition(s) {sorted(missing)} up (has {sorted(parts)})")
    return env


def _run(cmd, env, cwd, timeout=300, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd[:3]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


_LP_STATE = """
import json, sys
from fireworks import LaunchPad
lp = LaunchPad.from_file(sys.argv[1])
out = []
for d in lp.fireworks.find({}, {"fw_id": 1, "name": 1, "state": 1, "spec._category": 1, "launches": 1}):
    launches = list(lp.launches.find({"launch_id": {"$in": d.get("launches", [])}},
                                     {"launch_id": 1, "action": 1, "state": 1, "fworker": 1}))
    last = max(launches, key=lambda l: l["launch_id"]) if launches else None
    out.append({"fw_id": d["fw_id"], "name": d["name"], "state": d["state"],
                "category": d.get("spec", {}).get("_category"),
                "stored_data": ((last or {}).get("action") or {}).get("stored_data"),
                "fworker_category": ((last or {}).get("fworker") or {}).get("category")})
sys.stdout.write(json.dumps(out))
"""


class Cluster:
    """Files and helpers of one test campaign on the SLURM cluster."""

    def __init__(self, root: Path, env: dict[str, str], mongo_uri: str | None):
        self.root, self.mongo_uri = root, mongo_uri
        self.serial = mongo_uri is None
        self.launch_dir = root / "launches"
        self.launch_dir.mkdir()
        self.tag = uuid.uuid4().hex[:8]
        env = dict(env)
        env.pop("ALMAT_CONFIG_FILE", None)
        env["HOME"] = str(root / "home")
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        if self.serial:
            pytest.importorskip("mongomock_persistence", reason="FireWorks' mongomock mode needs mongomock-persistence")
            self.mock_file = root / "fireworks_mongomock.json"
            self.mock_file.write_text("{}")
            env["MONGOMOCK_SERVERSTORE_FILE"] = str(self.mock_file)
            env.pop("ALMAT_MONGO_URI", None)
            env["ALMAT_DB_PATH"] = str(root / "almat_db")
            lp = {"host": "localhost", "port": 27017, "name": "fireworks_almat_test"}
        else:
            env.pop("MONGOMOCK_SERVERSTORE_FILE", None)
            env["ALMAT_MONGO_URI"] = mongo_uri
            env["ALMAT_DATABASE"] = f"almat_slurm_{self.tag}"
            lp = {"host": mongo_uri, "uri_mode": True, "name": f"fireworks_slurm_{self.tag}"}
        self.lp_file = root / "fw" / "my_launchpad.yaml"
        self.lp_file.parent.mkdir()
        self.lp_file.write_text(yaml.safe_dump(lp))
        self.jobflow_file = root / "fw" / "jobflow.yaml"
        env["JOBFLOW_CONFIG_FILE"] = str(self.jobflow_file)
        self.env = env
        _run([sys.executable, "-c", "import sys; from almat.launch.submit import write_jobflow_config; "
              "write_jobflow_config(sys.argv[1])", str(self.jobflow_file)], env, root)
        self.go_flag = root / "qlaunch.done"
        exports = "".join(f"export {k}={env[k]}; " for k in
                          ("JOBFLOW_CONFIG_FILE", "ALMAT_DB_PATH", "ALMAT_MONGO_URI", "ALMAT_DATABASE",
                           "MONGOMOCK_SERVERSTORE_FILE", "OMP_NUM_THREADS", "HOME") if k in env)
        wait = f"while [ ! -e {self.go_flag} ]; do sleep 0.2; done; " if self.serial else ""
        self.fworkers, self.qadapters = {}, {}
        for category, partition in PARTITION.items():
            fw = self.lp_file.parent / f"my_fworker_{category}.yaml"
            fw.write_text(yaml.safe_dump({"name": f"{category} worker", "category": [category], "query": "{}"}))
            qa = self.lp_file.parent / f"my_qadapter_{category}.yaml"
            qa.write_text(yaml.safe_dump({
                "_fw_name": "CommonAdapter", "_fw_q_type": "SLURM", "queue": partition,
                "nodes": 1, "ntasks": 1, "walltime": "00:20:00", "job_name": f"almat-{category}",
                "pre_rocket": f"{exports}{wait}",
                # serial (mongomock): one rlaunch process per SLURM job runs every READY firework of its
                # category, the ones that responses add included, so still one process at a time
                "rocket_launch": f"{VENV_BIN / 'rlaunch'} -l {self.lp_file} -w {fw} "
                                 + ("rapidfire --nlaunches 0" if self.serial else "singleshot"),
            }))
            self.fworkers[category], self.qadapters[category] = fw, qa

    # ---------------------------------------------------------------- steps
    def submit(self) -> dict:
        campaign = self.root / "campaign.yaml"
        campaign.write_text(yaml.safe_dump(CONFIG))
        code = ("import json, sys; from almat.launch.submit import submit_campaign; "
                "sys.stdout.write(json.dumps(submit_campaign(sys.argv[1], sys.argv[2]).as_dict(), default=str))")
        out = _run([sys.executable, "-c", code, str(campaign), str(self.lp_file)], self.env, self.root)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def fireworks(self) -> list[dict]:
        out = _run([sys.executable, "-c", _LP_STATE, str(self.lp_file)], self.env, self.root)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def qlaunch(self, category: str, launch_dir: Path) -> subprocess.CompletedProcess:
        cmd = [str(VENV_BIN / "qlaunch"), "-l", str(self.lp_file), "-w", str(self.fworkers[category]),
               "-q", str(self.qadapters[category]), "--launch_dir", str(launch_dir), "singleshot"]
        return _run(cmd, self.env, launch_dir)

    def queued(self) -> set[str]:
        out = _run(["squeue", "-h", "-o", "%i"], self.env, self.root)
        return set(out.stdout.split())

    def wait_for_jobs(self, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = _run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], self.env, self.root, check=False)
            if out.returncode == 0 and not out.stdout.strip():
                return
            if out.returncode != 0 and "Invalid job id" in out.stderr:
                return
            time.sleep(0.5)
        raise AssertionError(f"SLURM jobs {job_ids} still queued/running after {timeout} s")

    def sacct(self, job_ids: list[str] = (), timeout: float = 120) -> dict[str, dict]:
        """The job-completion log, once every one of ``job_ids`` is in it.

        A firework is COMPLETED before its SLURM job ends (rlaunch still exits, rapidfire may look for more
        work), and slurmctld writes the completion record only then: so wait for the jobs to leave the
        queue, then for their records.
        """
        if job_ids:
            self.wait_for_jobs(list(job_ids))
        deadline = time.time() + timeout
        while True:
            out = _run(["sacct", "-c", "-n", "-P", "-o", "JobID,Partition,State,JobName"], self.env, self.root,
                       check=False)
            rows = {}
            for line in out.stdout.splitlines():
                parts = line.split("|")
                if len(parts) >= 3:
                    rows[parts[0]] = {"partition": parts[1], "state": parts[2]}
            if set(job_ids) <= set(rows) or time.time() > deadline:
                return rows
            time.sleep(1)

    # ---------------------------------------------------------------- drivers
    def run_serial(self) -> list[str]:
        """One process at a time: qlaunch singleshot, wait for the SLURM job, look again."""
        submitted: list[str] = []
        deadline = time.time() + CAMPAIGN_TIMEOUT_S
        while time.time() < deadline:
            fws = self.fireworks()
            bad = [f for f in fws if f["state"] in ("FIZZLED", "DEFUSED")]
            if bad:
                raise AssertionError(f"fireworks failed: {bad}; see {self.launch_dir}")
            ready = [f for f in fws if f["state"] == "READY"]
            if not ready:
                left = [f for f in fws if f["state"] != "COMPLETED"]
                assert not left, f"nothing READY but not finished: {left}"
                return submitted
            category = ready[0]["category"]
            self.go_flag.unlink(missing_ok=True)
            before = self.queued()
            launch_dir = self.launch_dir / f"{len(submitted):03d}_{category}"
            launch_dir.mkdir()
            out = self.qlaunch(category, launch_dir=launch_dir)
            self.go_flag.touch()  # qlaunch has exited: its mongomock write-back is done
            new = sorted(self.queued() - before)
            assert len(new) == 1, f"qlaunch submitted {new}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
            submitted.append(new[0])
            self.wait_for_jobs(new)
        raise AssertionError(f"campaign not finished after {CAMPAIGN_TIMEOUT_S} s")

    def run_rapidfire(self) -> list[str]:
        """qlaunch rapidfire for every category at once, until all fireworks are done (real MongoDB)."""
        self.go_flag.touch()
        procs = []
        for category in PARTITION:
            cmd = [str(VENV_BIN / "qlaunch"), "-l", str(self.lp_file), "-w", str(self.fworkers[category]),
                   "-q", str(self.qadapters[category]), "--launch_dir", str(self.launch_dir), "rapidfire",
                   "--nlaunches", "infinite", "--sleep", "3", "-m", "2"]
            log = open(self.root / f"qlaunch_{category}.log", "w")
            procs.append((subprocess.Popen(cmd, env=self.env, cwd=self.launch_dir, stdout=log,
                                           stderr=subprocess.STDOUT), log))
        try:
            deadline = time.time() + CAMPAIGN_TIMEOUT_S
            while time.time() < deadline:
                fws = self.fireworks()
                bad = [f for f in fws if f["state"] in ("FIZZLED", "DEFUSED")]
                assert not bad, f"fireworks failed: {bad}"
                if fws and all(f["state"] == "COMPLETED" for f in fws):
                    break
                time.sleep(3)
            else:
                raise AssertionError(f"campaign not finished after {CAMPAIGN_TIMEOUT_S} s")
        finally:
            for proc, log in procs:
                proc.terminate()
                proc.wait(timeout=30)
                log.close()
        return sorted({rec["slurm_job_id"] for rec in self.run_records()})

    def run_records(self) -> list[dict]:
        store = _job_store(self)
        try:
            return [d["metadata"]["almat_run"] for d in store.query({"metadata.almat_run": {"$exists": True}})]
        finally:
            store.close()

    def cleanup(self) -> None:
        if self.mongo_uri:
            from pymongo import MongoClient

            client = MongoClient(self.mongo_uri, serverSelectionTimeoutMS=5000)
            client.drop_database(f"fireworks_slurm_{self.tag}")
            client.drop_database(self.env["ALMAT_DATABASE"])
            client.close()


@pytest.fixture(scope="module")
def campaign_run(tmp_path_factory):
    if os.environ.get("ALMAT_TEST_MONGO_URI"):
        pytest.skip("with a MongoDB server this path is run by test_cp2k_cluster.py and test_concurrent_cluster.py; "
                    "this module runs the serial mongomock mode, without ALMAT_TEST_MONGO_URI")
    env = _require_slurm()
    root = tmp_path_factory.mktemp("slurm_fw")
    cluster = Cluster(root, env, os.environ.get("ALMAT_TEST_MONGO_URI"))
    start = time.perf_counter()
    submitted = cluster.submit()
    slurm_ids = cluster.run_serial() if cluster.serial else cluster.run_rapidfire()
    wall = time.perf_counter() - start
    print(f"\n[slurm campaign] {len(slurm_ids)} SLURM jobs, {wall:.0f} s "
          f"({'serial, mongomock' if cluster.serial else 'rapidfire, MongoDB'})")
    yield cluster, submitted, slurm_ids, cluster.fireworks()
    cluster.cleanup()


def _job_store(cluster: Cluster):
    """The workers' JobStore, read from their jobflow config file."""
    from jobflow import JobStore

    spec = yaml.safe_load(cluster.jobflow_file.read_text())["JOB_STORE"]
    store = JobStore.from_dict(spec)
    store.connect()
    return store


def test_submit_checked_the_name_and_routed_each_job(campaign_run):
    _, submitted, _, _ = campaign_run
    assert submitted["submitted"] and submitted["name_checked"], submitted
    assert submitted["partitions"] == {"cpu": ["cpu"], "gpu": ["gpu"]}
    assert not submitted["warnings"], submitted["warnings"]
    assert submitted["categories"]["train it0"] == "gpu" and submitted["categories"]["label initial"] == "cpu"


def test_each_job_ran_in_the_partition_of_its_category(campaign_run):
    from almat.launch.routing import Routing

    cluster, _, slurm_ids, fws = campaign_run
    routing = Routing()
    assert all(f["state"] == "COMPLETED" for f in fws)
    acct = cluster.sacct(slurm_ids)
    store = _job_store(cluster)
    try:
        docs = list(store.query({"metadata.almat_run": {"$exists": True}}))
    finally:
        store.close()
    by_uuid_index = {(d["uuid"], d["index"]): d for d in docs}
    ran = [d for d in by_uuid_index.values() if d["metadata"]["almat_run"]["job_index"] == d["index"]]
    assert len(ran) >= 15
    job_ids = set()
    for d in ran:
        rec = d["metadata"]["almat_run"]
        category = routing.category(d["metadata"].get("almat_role"))
        assert rec["slurm_partition"] == PARTITION[category], (d["name"], rec)
        assert rec["slurm_job_id"] in acct and acct[rec["slurm_job_id"]]["partition"] == PARTITION[category]
        job_ids.add(rec["slurm_job_id"])
    assert {PARTITION["gpu"], PARTITION["cpu"]} == {d["metadata"]["almat_run"]["slurm_partition"] for d in ran}
    assert job_ids <= set(slurm_ids)
    # one SLURM job never mixes categories (serial mode runs several fireworks per job)
    partitions_of_job = {}
    for d in ran:
        rec = d["metadata"]["almat_run"]
        partitions_of_job.setdefault(rec["slurm_job_id"], set()).add(rec["slurm_partition"])
    assert all(len(p) == 1 for p in partitions_of_job.values()), partitions_of_job
    if not cluster.serial:  # singleshot: one SLURM job per firework
        assert len(job_ids) == len(ran)
    # FireWorks kept the same record in each launch, and the worker that ran it pulled that category
    for f in fws:
        assert f["fworker_category"] == [f["category"]], f
        if f["name"] != "store_inputs":
            assert f["stored_data"]["slurm_partition"] == PARTITION[f["category"]], f


def test_the_next_iteration_was_added_and_ran(campaign_run):
    _, submitted, _, fws = campaign_run
    initial_ids = set(submitted["fw_ids"].values())
    added = {f["name"]: f for f in fws if f["fw_id"] not in initial_ids}
    for name in ("train it1", "explore it1 w0-0", "select it1", "decide it1", "oracle initial it-1 #0"):
        assert name in added and added[name]["state"] == "COMPLETED", name
    assert added["train it1"]["category"] == "gpu" and added["decide it1"]["category"] == "cpu"
    assert all(f["category"] == "cpu" for n, f in added.items() if n.startswith("oracle"))


def test_results_are_in_the_job_store_and_campaign_collections(campaign_run):
    from almat.stores import CampaignDB

    cluster, _, _, fws = campaign_run
    store = _job_store(cluster)
    try:
        decide = store.query_one({"name": "decide it1"}, sort={"index": -1})
        assert decide is not None and decide["output"]["iteration"] == 1
        assert store.query_one({"name": "train it0"})["output"]["model_ids"]
        db = CampaignDB.from_job_store(store).connect()
        try:
            n_oracles = sum(1 for f in fws if f["name"].startswith("oracle"))
            assert db.labels.count({"campaign": "cu-slurm"}) == n_oracles  # one label per oracle job
            assert db.iterations.count({"campaign": "cu-slurm"}) == 2
            assert db.models.count({"campaign": "cu-slurm"}) == 4
            campaign = db.campaigns.query_one({"name": "cu-slurm"})
            assert campaign["status"] in ("converged", "max_iterations") and campaign["n_iterations"] == 2
        finally:
            db.close()  # closes the JobStore's data store too (the CampaignDB shares it)
    finally:
        store.docs_store.close()
    # almat status reads the same collections from another process, with the workers' settings
    code = "from almat.cli import app; app(['status', 'cu-slurm', '--json'])"
    out = _run([sys.executable, "-c", code], cluster.env, cluster.root)
    status = json.loads(out.stdout)
    assert status["status"] == campaign["status"] and len(status["iterations"]) == 2
