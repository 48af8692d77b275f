"""Two campaigns at once on the cluster path, concurrent workers per category, then a killed worker recovered.

Needs SLURM (``bash scripts/slurm/start.sh``; partitions ``cpu`` and ``gpu``) and a MongoDB server
(``ALMAT_TEST_MONGO_URI``, e.g. ``$(bash scripts/mongo/start.sh | tail -1)``); skipped with the reason
otherwise. It reuses the ``Cluster`` files of ``test_slurm_fireworks`` (fresh LaunchPad and data databases,
dropped at the end) with its own qadapters:

- ``qlaunch rapidfire`` runs for ``cpu`` and ``gpu`` at the same time (``--maxjobs_queue 1`` each); every SLURM
  job it submits runs ``ROCKETS_PER_JOB`` (2) ``rlaunch rapidfire`` processes side by side, each in its own
  folder (``r1``, ``r2``, with a ``rocket.txt``: pid, SLURM job id, partition), so each category has 2
  rockets pulling its fireworks at once. A one-node test cluster with 2 cores runs at most 2 SLURM jobs at a
  time (``CR_Core``, no oversubscription): one per category, two rockets in each, is what gives 2 concurrent
  rockets per category there. The rockets live at most ``WORKER_LIFE_S``; the test cancels the idle ones
  (its own jobs, by id) when the campaigns are done.
- Phase 1 (``concurrent_run``): an MD campaign and a pool campaign submitted together, run to the end.
- Phase 2 (``kill_run``): a tiny pool campaign whose oracle (``slow_emt.SlowEMT``, this folder, on the
  workers' ``PYTHONPATH``) sleeps in each label job; the rocket running one label job is killed with
  ``SIGKILL``, the campaign stalls on that firework (RUNNING, never pinged again), the workers are stopped,
  ``almat status`` (with FireWorks' ``RUN_EXPIRATION_SECS`` at ``EXPIRATION_S``) shows the campaign
  ``lost`` with the ``lpad detect_lostruns ... --rerun`` command that recovers it; that command marks the
  launch FIZZLED and makes the firework READY again, and new workers finish the campaign.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from test_slurm_fireworks import CONFIG as MD_CONFIG
from test_slurm_fireworks import (
    PARTITION,
    VENV_BIN,
    Cluster,
    _job_store,
    _require_slurm,
    _run,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.mongo]

HERE = Path(__file__).resolve().parent
MONGO_URI = os.environ.get("ALMAT_TEST_MONGO_URI")
ROCKETS_PER_JOB = 2
WORKER_LIFE_S = 300  # rlaunch rapidfire --timeout: a rocket takes no new firework after this
WALLTIME = "00:10:00"  # SLURM limit of every worker job
PHASE_TIMEOUT_S = 300  # each wait for a campaign to finish
KILL_WAIT_S = 150  # for a label job to run, and for the campaign to stall on the killed one
EXPIRATION_S = 2  # FireWorks' RUN_EXPIRATION_SECS for `almat status` once no worker runs (default: 4 h)
POLL_S = 0.5

MD = dict(MD_CONFIG, name="cc-md")
POOL = {
    "kind": "pool",
    "name": "cc-pool",
    "pool": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2],
              "perturb": {"n": 16, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 6, "warm_start_epochs": 4,
                                                  "batch_size": 4}},
    "n_init": 4, "budget": 2, "n_test": 4, "max_iterations": 2, "seed": 5,
}
SLOW_DELAY_S = 3
KILL = {
    "kind": "pool",
    "name": "cc-kill",
    "pool": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2],
              "perturb": {"n": 6, "rattle_std": 0.05, "max_strain": 0.03, "seed": 2}}],
    "oracle": {"calculator": {"module": "slow_emt", "class": "SlowEMT", "kwargs": {"delay": SLOW_DELAY_S}}},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 3, "warm_start_epochs": 2,
                                                  "batch_size": 2}},
    "n_init": 2, "budget": 1, "n_test": 1, "max_iterations": 1, "seed": 5,
}

_SUBMIT = """
import json, sys
from almat.launch.submit import submit_campaign
out = [submit_campaign(path, sys.argv[1]).as_dict() for path in sys.argv[2:]]
sys.stdout.write(json.dumps(out, default=str))
"""


class ConcurrentCluster(Cluster):
    """``Cluster`` with qadapters whose SLURM jobs run ``ROCKETS_PER_JOB`` rapidfire rockets each."""

    def __init__(self, root: Path, env: dict[str, str], mongo_uri: str):
        super().__init__(root, env, mongo_uri)
        self.env["OMP_NUM_THREADS"] = "1"
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), self.env.get("PYTHONPATH")) if p)
        exports = "".join(f"export {k}={self.env[k]}; " for k in
                          ("JOBFLOW_CONFIG_FILE", "ALMAT_MONGO_URI", "ALMAT_DATABASE", "OMP_NUM_THREADS", "HOME",
                           "PYTHONPATH"))
        self.job_names = {category: f"cc{self.tag}-{category}" for category in PARTITION}
        self.write_qadapters(exports, dict.fromkeys(PARTITION, ROCKETS_PER_JOB))
        from fireworks import LaunchPad

        self.lp = LaunchPad.from_file(str(self.lp_file))


    def write_qadapters(self, exports: str, rockets: dict[str, int], life_s: int = WORKER_LIFE_S,
                        walltime: str = WALLTIME) -> None:
        """One qadapter per category: ``exports`` before the rockets, ``rockets[category]`` rlaunch rapidfire
        processes per SLURM job (taking no new firework after ``life_s``), each in its own folder (the subshell
        execs rlaunch, so its pid is the rocket's), SLURM limit ``walltime``."""
        for category, partition in PARTITION.items():
            rlaunch = (f"{VENV_BIN / 'rlaunch'} -l {self.lp_file} -w {self.fworkers[category]} rapidfire "
                       f"--nlaunches infinite --sleep 1 --timeout {life_s}")
            numbers = " ".join(str(i) for i in range(1, rockets[category] + 1))
            self.qadapters[category].write_text(yaml.safe_dump({
                "_fw_name": "CommonAdapter", "_fw_q_type": "SLURM", "queue": partition,
                "nodes": 1, "ntasks": 1, "walltime": walltime, "job_name": self.job_names[category],
                "pre_rocket": exports,
                "rocket_launch": f"for r in {numbers}; do (mkdir -p r$r && cd r$r && "
                                 f"echo $BASHPID $SLURM_JOB_ID $SLURM_JOB_PARTITION > rocket.txt && "
                                 f"exec {rlaunch} > rlaunch.log 2>&1) & done; wait",
            }))
    def submit_all(self, configs: list[dict]) -> list[dict]:
        paths = []
        for cfg in configs:
            path = self.root / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            paths.append(str(path))
        out = _run([sys.executable, "-c", _SUBMIT, str(self.lp_file), *paths], self.env, self.root)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # ------------------------------------------------------------ LaunchPad
    def wf_fw_ids(self, campaign: str) -> list[int]:
        wf = self.lp.workflows.find_one({"name": f"almat {campaign}"}, {"nodes": 1})
        return sorted(wf["nodes"])

    def fws(self, fw_ids: list[int] | None = None) -> list[dict]:
        query = {} if fw_ids is None else {"fw_id": {"$in": fw_ids}}
        return list(self.lp.fireworks.find(query, {"fw_id": 1, "name": 1, "state": 1, "spec._category": 1,
                                                   "spec._tasks": 1, "launches": 1, "archived_launches": 1}))

    def launches(self, fw_ids: list[int] | None = None) -> list[dict]:
        query = {} if fw_ids is None else {"fw_id": {"$in": fw_ids}}
        return list(self.lp.launches.find(query, {"launch_id": 1, "fw_id": 1, "state": 1, "state_history": 1,
                                                  "launch_dir": 1, "host": 1, "fworker": 1, "action": 1}))

    def wait_until_done(self, fw_ids_of, timeout: float, watch: int | None = None, seen: list | None = None) -> None:
        """Poll until every firework is COMPLETED (fail on FIZZLED/DEFUSED); record the states of ``watch``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            fws = self.fws(fw_ids_of())
            if watch is not None and seen is not None:
                state = next(f["state"] for f in fws if f["fw_id"] == watch)
                if not seen or seen[-1] != state:
                    seen.append(state)
            bad = [(f["fw_id"], f["name"], f["state"]) for f in fws if f["state"] in ("FIZZLED", "DEFUSED")]
            assert not bad, f"fireworks failed: {bad}; see {self.launch_dir}"
            if fws and all(f["state"] == "COMPLETED" for f in fws):
                return
            time.sleep(POLL_S)
        left = [(f["fw_id"], f["name"], f["state"]) for f in self.fws(fw_ids_of()) if f["state"] != "COMPLETED"]
        raise AssertionError(f"not finished after {timeout} s: {left}; see {self.launch_dir}")


class Workers:
    """``qlaunch rapidfire`` for every category at once, into ``launch_dir``; ``stop`` ends them and their jobs."""

    def __init__(self, cluster: ConcurrentCluster, launch_dir: Path):
        self.cluster, self.launch_dir = cluster, launch_dir
        launch_dir.mkdir(parents=True)
        self.procs: list[tuple[subprocess.Popen, object]] = []

    def start(self) -> Workers:
        c = self.cluster
        for category in PARTITION:
            cmd = [str(VENV_BIN / "qlaunch"), "-l", str(c.lp_file), "-w", str(c.fworkers[category]),
                   "-q", str(c.qadapters[category]), "--launch_dir", str(self.launch_dir), "rapidfire",
                   "--nlaunches", "infinite", "--sleep", "2", "--maxjobs_queue", "1"]
            log = open(self.launch_dir / f"qlaunch_{category}.log", "w")  # noqa: SIM115 - closed in stop()
            self.procs.append((subprocess.Popen(cmd, env=c.env, cwd=self.launch_dir, stdout=log,
                                                stderr=subprocess.STDOUT), log))
        return self

    def job_ids(self) -> list[str]:
        names = ",".join(self.cluster.job_names.values())
        out = _run(["squeue", "-h", "-o", "%i", "--name", names], self.cluster.env, self.cluster.root, check=False)
        return out.stdout.split()

    def stop(self) -> None:
        """End the qlaunch processes, then cancel this test's worker jobs still queued or running (idle
        rockets: nothing is READY when this is called) and wait until SLURM has ended them."""
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
        self.procs = []
        jobs = self.job_ids()
        if jobs:
            _run(["scancel", *jobs], self.cluster.env, self.cluster.root, check=False)
            self.cluster.wait_for_jobs(jobs, timeout=60)

    def rockets(self) -> list[dict]:
        """One entry per rocket started in ``launch_dir``: pid, SLURM job id, partition, folder."""
        out = []
        for f in sorted(self.launch_dir.glob("block_*/launcher_*/r*/rocket.txt")):
            pid, job_id, partition = f.read_text().split()
            out.append({"pid": int(pid), "slurm_job_id": job_id, "partition": partition, "dir": str(f.parent)})
        return out


# ------------------------------------------------------------------ records


def _t(s) -> float:
    return (s if isinstance(s, datetime) else datetime.fromisoformat(str(s))).timestamp()


def _interval(launch: dict) -> tuple[float, float] | None:
    hist = {h["state"]: h for h in launch.get("state_history", [])}
    if "RUNNING" not in hist or "COMPLETED" not in hist:
        return None
    return _t(hist["RUNNING"]["created_on"]), _t(hist["COMPLETED"]["created_on"])


def concurrency(intervals: list[tuple[float, float]]) -> tuple[int, float]:
    """Most intervals open at one moment, and the seconds during which at least two were open."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    best = now = 0
    overlap, last = 0.0, None
    for t, step in events:
        if now >= 2:
            overlap += t - last
        now += step
        best, last = max(best, now), t
    return best, overlap


def _rocket_dir(launch: dict) -> str:
    return str(Path(launch["launch_dir"]).parent)  # .../block_*/launcher_*/rN/launcher_* -> rN


def _category(launch: dict) -> str:
    return (launch.get("fworker") or {}).get("category", ["?"])[0]


def _job_key(fw: dict) -> tuple[str, int]:
    job = fw["spec"]["_tasks"][0]["job"]
    return job["uuid"], job["index"]


def _status_json(cluster: ConcurrentCluster, names: list[str], env: dict | None = None) -> dict[str, dict]:
    """``almat status NAME --json`` for each name, in parallel subprocesses with the workers' settings."""
    procs = {n: subprocess.Popen([sys.executable, "-c", f"from almat.cli import app; app(['status', {n!r}, '--json'])"],
                                 env=env or cluster.env, cwd=cluster.root, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for n in names}
    out = {}
    for n, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, f"almat status {n} failed:\n{stderr[-2000:]}"
        out[n] = json.loads(stdout)
    return out


def _heartbeat(db, name: str) -> dict | None:
    """The campaign's lease document: the heartbeat its FireWorks jobs wrote last."""
    from almat.campaign.lease import lease_store

    store = lease_store(db)
    store.connect()
    try:
        return store.query_one({"campaign": name})
    finally:
        store.close()


def _campaign_records(cluster: ConcurrentCluster, names: list[str]) -> dict[str, dict]:
    """Counts and label fields of each campaign in the workers' JobStore, and its (uuid, index) docs."""
    from almat.stores import CampaignDB

    store = _job_store(cluster)
    out = {}
    try:
        out["_docs"] = [(d["uuid"], d["index"]) for d in store.docs_store.query({}, properties=["uuid", "index"])]
        db = CampaignDB.from_job_store(store).connect()
        try:
            for name in names:
                out[name] = {
                    "labels": list(db.labels.query({"campaign": name},
                                                   properties=["label_id", "structure_hash", "job_uuid", "status"])),
                    "models": db.models.count({"campaign": name}),
                    "iterations": db.iterations.count({"campaign": name}),
                    "pool_iterations": db.pool_iterations.count({"campaign": name}),
                    "campaign": db.campaigns.query_one({"name": name}),
                    "heartbeat": _heartbeat(db, name),
                    "ledger": list(db.ledger.query({"campaign": name})),
                }
        finally:
            db.close()  # closes the JobStore's docs store too (shared)
    finally:
        store.docs_store.close()
    return out


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not MONGO_URI:
        pytest.skip("ALMAT_TEST_MONGO_URI is not set: the concurrent workers need a MongoDB server "
                    "(e.g. ALMAT_TEST_MONGO_URI=$(bash scripts/mongo/start.sh | tail -1))")
    env = _require_slurm()
    c = ConcurrentCluster(tmp_path_factory.mktemp("concurrent"), env, MONGO_URI)
    yield c
    c.lp.connection.close()
    c.cleanup()


@pytest.fixture(scope="module")
def concurrent_run(cluster):
    """Phase 1: MD and pool campaigns submitted together, qlaunch rapidfire for cpu and gpu at once."""
    t0 = time.perf_counter()
    submitted = {s["campaign"]: s for s in cluster.submit_all([MD, POOL])}
    t_submit = time.perf_counter() - t0
    workers = Workers(cluster, cluster.launch_dir / "concurrent").start()
    try:
        cluster.wait_until_done(lambda: cluster.wf_fw_ids(MD["name"]) + cluster.wf_fw_ids(POOL["name"]),
                                PHASE_TIMEOUT_S)
        wall = time.perf_counter() - t0
    finally:
        workers.stop()
    fw_ids = {n: cluster.wf_fw_ids(n) for n in (MD["name"], POOL["name"])}
    all_ids = [i for ids in fw_ids.values() for i in ids]
    rockets = workers.rockets()
    run = {
        "submitted": submitted, "fw_ids": fw_ids, "fws": cluster.fws(all_ids), "launches": cluster.launches(all_ids),
        "rockets": rockets, "acct": cluster.sacct(sorted({r["slurm_job_id"] for r in rockets})), "wall": wall,
        "t_submit": t_submit,
        "records": _campaign_records(cluster, list(fw_ids)),
    }
    launches = run["launches"]
    per_cat = defaultdict(list)
    for launch in launches:
        if _interval(launch):
            per_cat[_category(launch)].append(_interval(launch))
    run["max_concurrent"] = {c: concurrency(iv)[0] for c, iv in per_cat.items()}
    run["overlap_s"] = {c: round(concurrency(iv)[1], 1) for c, iv in per_cat.items()}
    run["n_launches"] = {c: len(iv) for c, iv in per_cat.items()}
    run["rockets_used"] = {c: len({_rocket_dir(l) for l in launches if _category(l) == c}) for c in PARTITION}
    jobs = defaultdict(set)
    for r in run["rockets"]:
        jobs[r["partition"]].add(r["slurm_job_id"])
    run["slurm_jobs"] = {p: sorted(j) for p, j in jobs.items()}
    print(f"\n[concurrent cluster] {len(run['fws'])} fireworks "
          f"({', '.join(f'{n}: {len(i)}' for n, i in fw_ids.items())}); "
          f"SLURM worker jobs per partition {({p: len(j) for p, j in jobs.items()})} "
          f"x {ROCKETS_PER_JOB} rockets; rockets that ran fireworks {run['rockets_used']}; "
          f"launches per category {run['n_launches']}, max concurrent rockets per category "
          f"{run['max_concurrent']} (seconds with 2 running: {run['overlap_s']}); "
          f"SLURM states {sorted({run['acct'].get(j, {}).get('state') for js in jobs.values() for j in js})}; "
          f"wall {wall:.0f} s (submit {t_submit:.0f} s)")
    return run


def _lost_status(cluster: ConcurrentCluster, name: str, timeout: float = 60) -> dict:
    """``almat status NAME --json`` where the LaunchPad is known (``LAUNCHPAD_LOC``) and FireWorks'
    ``RUN_EXPIRATION_SECS`` is ``EXPIRATION_S``, until it says ``lost`` (the killed launch's last ping must
    first be that old)."""
    config = cluster.root / "reader" / "FW_config.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump({"RUN_EXPIRATION_SECS": EXPIRATION_S}))
    env = {**cluster.env, "LAUNCHPAD_LOC": str(cluster.lp_file), "FW_CONFIG_FILE": str(config)}
    deadline = time.time() + timeout
    while True:
        status = _status_json(cluster, [name], env)[name]
        if status["status"] == "lost" or time.time() > deadline:
            return status
        time.sleep(1)


@pytest.fixture(scope="module")
def kill_run(cluster):
    """Phase 2: SIGKILL the rocket running a label job, ``lpad detect_lostruns --time 1 --rerun``, finish."""
    name = KILL["name"]
    t0 = time.perf_counter()
    (submitted,) = cluster.submit_all([KILL])

    def ids() -> list[int]:
        return cluster.wf_fw_ids(name)

    report: dict = {"submitted": submitted, "lp_file": str(cluster.lp_file)}
    workers = Workers(cluster, cluster.launch_dir / "kill_1").start()
    try:
        # 1. a label job in its oracle call: RUNNING, and its launch folder has the oracle's marker
        deadline, victim = time.time() + KILL_WAIT_S, None
        while victim is None and time.time() < deadline:
            for fw in cluster.fws(ids()):
                if fw["name"].startswith("oracle") and fw["state"] == "RUNNING" and fw["launches"]:
                    launch = cluster.lp.launches.find_one({"launch_id": fw["launches"][-1]})
                    marker = Path(launch["launch_dir"]) / "slow_oracle.json"
                    if marker.exists() and marker.stat().st_size:
                        victim = (fw, launch, json.loads(marker.read_text()))
                        break
            else:
                time.sleep(0.2)
        assert victim is not None, f"no label job seen running within {KILL_WAIT_S} s; see {workers.launch_dir}"
        fw, launch, marker = victim
        pid = marker["pid"]
        rocket_pid = int((Path(launch["launch_dir"]).parent / "rocket.txt").read_text().split()[0])
        assert launch["host"] == socket.gethostname() or launch["host"] == socket.getfqdn()
        os.kill(pid, signal.SIGKILL)
        report.update(fw_id=fw["fw_id"], fw_name=fw["name"], pid=pid, rocket_pid=rocket_pid,
                      killed_launch=launch["launch_id"], killed_after=time.time() - marker["start"])
        for _ in range(100):  # the job script's `wait` reaps it
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        report["process_gone"] = not Path(f"/proc/{pid}").exists()
        # 2. the rest of the campaign runs as far as it can: it stalls on the lost firework
        deadline, quiet = time.time() + KILL_WAIT_S, 0
        while time.time() < deadline and quiet < 4:
            states = {f["fw_id"]: f["state"] for f in cluster.fws()}
            busy = {i for i, s in states.items() if s in ("READY", "RESERVED", "RUNNING")}
            quiet = quiet + 1 if busy == {fw["fw_id"]} else 0
            time.sleep(POLL_S)
        assert quiet >= 4, f"campaign did not stall on fw {fw['fw_id']} within {KILL_WAIT_S} s: {states}"
    finally:
        workers.stop()
    report["rockets_1"] = workers.rockets()
    report["state_after_kill"] = cluster.lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"]
    report["launch_after_kill"] = cluster.lp.launches.find_one({"launch_id": launch["launch_id"]})["state"]
    report["waiting_after_kill"] = sorted(f["name"] for f in cluster.fws(ids()) if f["state"] == "WAITING")
    # 3. almat status says it is lost and prints the command; recovery, as a user does it
    report["status_after_kill"] = _lost_status(cluster, name)
    report["recover_command"] = re.search(r"`(lpad [^`]*detect_lostruns[^`]*)`",
                                          report["status_after_kill"]["stop_reason"]).group(1)
    out = _run(["bash", "-c", report["recover_command"]], cluster.env, cluster.root, timeout=120)
    report["detect_output"] = (out.stdout + out.stderr).strip()
    after = cluster.lp.fireworks.find_one({"fw_id": fw["fw_id"]})
    report["state_after_detect"] = after["state"]
    report["launches_after_detect"] = after.get("launches", [])
    report["archived_after_detect"] = after.get("archived_launches", [])
    report["killed_launch_final"] = cluster.lp.launches.find_one({"launch_id": launch["launch_id"]})["state"]
    # 4. workers again, to the end
    seen: list[str] = [report["state_after_detect"]]
    workers2 = Workers(cluster, cluster.launch_dir / "kill_2").start()
    try:
        cluster.wait_until_done(ids, PHASE_TIMEOUT_S, watch=fw["fw_id"], seen=seen)
    finally:
        workers2.stop()
    report["wall"] = time.perf_counter() - t0
    report["states_after_recovery"] = seen
    report["fws"] = cluster.fws(ids())
    report["launches"] = cluster.launches(ids())
    report["rockets_2"] = workers2.rockets()
    report["records"] = _campaign_records(cluster, [name])
    final = next(f for f in report["fws"] if f["fw_id"] == fw["fw_id"])
    print(f"\n[killed worker] fw {fw['fw_id']} ({fw['name']}): rocket pid {pid} got SIGKILL "
          f"{report['killed_after']:.1f} s into its oracle call; fw {report['state_after_kill']} with launch "
          f"{launch['launch_id']} {report['launch_after_kill']}; almat status: "
          f"{report['status_after_kill']['status']}, printed `{report['recover_command']}` -> launch "
          f"{report['killed_launch_final']}, fw {report['state_after_detect']} (launches "
          f"{report['launches_after_detect']}, archived {report['archived_after_detect']}); workers again: fw "
          f"{' -> '.join(seen)}; launches now {final['launches']} + archived {final.get('archived_launches')} "
          f"= {len(final['launches']) + len(final.get('archived_launches', [])) - 1} relaunch; phase wall "
          f"{report['wall']:.0f} s\n[detect_lostruns output] {report['detect_output'][-600:]}")
    return report


# ------------------------------------------------------------------ phase 1: concurrent campaigns


def test_both_campaigns_were_submitted_and_routed(concurrent_run):
    for name in (MD["name"], POOL["name"]):
        s = concurrent_run["submitted"][name]
        assert s["submitted"] and s["name_checked"] and not s["warnings"], s
        assert s["partitions"] == {"cpu": ["cpu"], "gpu": ["gpu"]}
        assert s["categories"]["train it0"] == "gpu" and s["categories"]["label initial"] == "cpu"


def test_two_rockets_per_category_ran_at_the_same_time(concurrent_run):
    run = concurrent_run
    # every category had its SLURM job(s), each with two rockets, and both rockets of a category pulled work
    assert set(run["slurm_jobs"]) == set(PARTITION.values())
    assert all(run["rockets_used"][c] >= 2 for c in PARTITION), run["rockets_used"]
    # launch records overlap: two fireworks of the same category were RUNNING at the same moment
    assert all(run["max_concurrent"].get(c, 0) >= 2 for c in PARTITION), run["max_concurrent"]
    # each launch ran in a rocket of its category's partition; the SLURM jobs are this test's
    by_dir = {r["dir"]: r for r in run["rockets"]}
    for launch in run["launches"]:
        rocket = by_dir[_rocket_dir(launch)]
        assert rocket["partition"] == PARTITION[_category(launch)], launch["launch_id"]
        data = (launch.get("action") or {}).get("stored_data") or {}
        if "slurm_job_id" in data:  # every almat job records where it ran (not jobflow's store_inputs)
            assert data["slurm_job_id"] == rocket["slurm_job_id"] and data["slurm_partition"] == rocket["partition"]
    assert all(run["acct"].get(j, {}).get("partition") == p for p, jobs in run["slurm_jobs"].items() for j in jobs)


def test_every_firework_ran_exactly_once(concurrent_run):
    run = concurrent_run
    fws, launches = run["fws"], run["launches"]
    assert fws and all(f["state"] == "COMPLETED" for f in fws)
    assert all(len(f["launches"]) == 1 and not f.get("archived_launches") for f in fws), \
        [(f["fw_id"], f["name"], f["launches"], f.get("archived_launches")) for f in fws if len(f["launches"]) != 1]
    per_fw = Counter(l["fw_id"] for l in launches)
    assert sorted(per_fw) == sorted(f["fw_id"] for f in fws) and set(per_fw.values()) == {1}
    assert all(l["state"] == "COMPLETED" for l in launches)
    # one JobStore document per firework: no (uuid, index) twice, none missing
    docs = Counter(run["records"]["_docs"])
    assert not [k for k, n in docs.items() if n > 1]
    keys = [_job_key(f) for f in fws]
    assert len(set(keys)) == len(keys) and set(keys) <= set(docs)


def test_dynamic_additions_ran(concurrent_run):
    run = concurrent_run
    by_id = {f["fw_id"]: f for f in run["fws"]}
    for name, expected in ((MD["name"], ("train it1", "explore it1 w0-0", "select it1", "decide it1",
                                         "oracle initial it-1 #0")),
                           (POOL["name"], ("train it1", "decide it1", "oracle it0 #0"))):
        initial = set(run["submitted"][name]["fw_ids"].values())
        added = {by_id[i]["name"]: by_id[i] for i in run["fw_ids"][name] if i not in initial}
        for job in expected:
            assert job in added and added[job]["state"] == "COMPLETED", (name, job, sorted(added))
        oracles = [f for n, f in added.items() if n.startswith("oracle")]
        assert oracles and all(f["spec"]["_category"] == "cpu" for f in oracles)
        assert added["train it1"]["spec"]["_category"] == "gpu"


def test_labels_models_iterations_are_in_the_server_once(concurrent_run):
    run = concurrent_run
    rec = run["records"]
    by_id = {f["fw_id"]: f for f in run["fws"]}
    for name, records in ((MD["name"], "iterations"), (POOL["name"], "pool_iterations")):
        r = rec[name]
        oracle_uuids = [_job_key(by_id[i])[0] for i in run["fw_ids"][name] if by_id[i]["name"].startswith("oracle")]
        labels = r["labels"]
        assert len(labels) == len(oracle_uuids) > 0  # one label per oracle job
        assert sorted(l["job_uuid"] for l in labels) == sorted(oracle_uuids)
        assert len({l["label_id"] for l in labels}) == len(labels)
        assert len({l["structure_hash"] for l in labels}) == len(labels)
        assert all(l["status"] == "ok" for l in labels)
        assert r[records] == 2 and r["models"] == 4, (name, r[records], r["models"])
        assert r["campaign"]["n_iterations"] == 2 and r["campaign"]["status"] in ("converged", "max_iterations")
    assert rec[POOL["name"]]["iterations"] == 0 and rec[MD["name"]]["pool_iterations"] == 0
    all_ids = [l["label_id"] for n in (MD["name"], POOL["name"]) for l in rec[n]["labels"]]
    assert len(set(all_ids)) == len(all_ids)


def test_almat_status_reads_both_campaigns(cluster, concurrent_run):
    status = _status_json(cluster, [MD["name"], POOL["name"]])
    for name, kind in ((MD["name"], "md"), (POOL["name"], "pool")):
        camp = concurrent_run["records"][name]["campaign"]
        assert status[name]["kind"] == kind and status[name]["status"] == camp["status"]
        assert len(status[name]["iterations"]) == 2 and status[name]["labels"] == camp["n_labels"] > 0


# ------------------------------------------------------------------ phase 2: a killed worker


def test_killed_label_job_was_lost_then_rerun_by_detect_lostruns(kill_run):
    r = kill_run
    assert r["fw_name"].startswith("oracle") and r["pid"] == r["rocket_pid"] and r["process_gone"]
    assert 0 <= r["killed_after"] < SLOW_DELAY_S  # in the middle of the oracle call
    # the killed rocket left its firework RUNNING; the rest of the campaign waited for it
    assert r["state_after_kill"] == "RUNNING" and r["launch_after_kill"] == "RUNNING"
    assert r["waiting_after_kill"], "nothing was waiting on the lost label job"
    # almat status: lost, naming the firework, with the command that recovers exactly it
    status = r["status_after_kill"]
    assert status["status"] == "lost", status
    assert f"fw_id {r['fw_id']} {r['fw_name']!r}" in status["stop_reason"]
    cmd = shlex.split(r["recover_command"])
    assert cmd[:4] == ["lpad", "-l", str(kill_run["lp_file"]), "detect_lostruns"] and "--rerun" in cmd
    assert cmd[cmd.index("--time") + 1] == str(EXPIRATION_S) and json.loads(cmd[cmd.index("-q") + 1]) == {
        "fw_id": {"$in": [r["fw_id"]]}}
    # that command (detect_lostruns --rerun): launch FIZZLED and archived, the firework READY again
    assert str(r["fw_id"]) in r["detect_output"], r["detect_output"]
    assert r["state_after_detect"] == "READY" and r["launches_after_detect"] == []
    assert r["archived_after_detect"] == [r["killed_launch"]] and r["killed_launch_final"] == "FIZZLED"
    # the new workers ran it once more
    assert r["states_after_recovery"][0] == "READY" and r["states_after_recovery"][-1] == "COMPLETED"
    assert len({x["slurm_job_id"] for x in r["rockets_2"]}) >= 1


def test_campaign_completed_with_nothing_lost_or_duplicated(kill_run):
    r = kill_run
    fws, launches = r["fws"], r["launches"]
    assert all(f["state"] == "COMPLETED" for f in fws)
    victim = next(f for f in fws if f["fw_id"] == r["fw_id"])
    assert len(victim["launches"]) == 1 and victim["archived_launches"] == [r["killed_launch"]]
    others = [f for f in fws if f["fw_id"] != r["fw_id"]]
    assert all(len(f["launches"]) == 1 and not f.get("archived_launches") for f in others)
    states = {l["launch_id"]: l["state"] for l in launches}
    assert states.pop(r["killed_launch"]) == "FIZZLED" and set(states.values()) == {"COMPLETED"}
    docs = Counter(r["records"]["_docs"])
    assert not [k for k, n in docs.items() if n > 1]
    assert {_job_key(f) for f in fws} <= set(docs)
    rec = r["records"][KILL["name"]]
    oracle_uuids = sorted(_job_key(f)[0] for f in fws if f["name"].startswith("oracle"))
    labels = rec["labels"]
    assert sorted(l["job_uuid"] for l in labels) == oracle_uuids  # the rerun wrote the victim's label, once
    assert len({l["label_id"] for l in labels}) == len(labels) == len({l["structure_hash"] for l in labels})
    assert all(l["status"] == "ok" for l in labels)
    assert rec["pool_iterations"] == 1 and rec["models"] == 2
    assert rec["campaign"]["status"] == "max_iterations"
    # its jobs' heartbeat: the last job's end, written from a worker of the second round
    beat = rec["heartbeat"]
    assert beat["manager"] == "fireworks" and beat["event"] == "end" and beat["fw_id"] in {f["fw_id"] for f in fws}
    assert beat["slurm_job_id"] in {x["slurm_job_id"] for x in r["rockets_2"]}


def test_the_ledger_counts_every_job_once_the_killed_one_from_its_rerun(kill_run):
    r = kill_run
    entries = r["records"][KILL["name"]]["ledger"]
    keys = Counter((e["job_uuid"], e["job_index"]) for e in entries)
    assert not [k for k, n in keys.items() if n > 1]
    # every job of the campaign (jobflow's own store_inputs jobs aside) has its entry, from the run that completed
    measured = {_job_key(f) for f in r["fws"] if f["spec"]["_tasks"][0]["job"]["@class"] == "MeasuredJob"}
    assert len(measured) >= 8 and set(keys) == measured
    assert all(e["state"] == "ok" and e["fw_id"] in {f["fw_id"] for f in r["fws"]} for e in entries)
    (victim,) = [e for e in entries if e["fw_id"] == r["fw_id"]]
    assert victim["role"] == "oracle" and victim["slurm_job_id"] in {x["slurm_job_id"] for x in r["rockets_2"]}
    # the queue is the SLURM partition each job ran in: labels on cpu, committee jobs on gpu
    assert {e["queue"] for e in entries if e["role"] == "oracle"} == {PARTITION["cpu"]}
    assert {e["queue"] for e in entries if e["role"] == "train"} == {PARTITION["gpu"]}
    assert all(e["host"] == socket.gethostname() and e["core_s"] >= 0 for e in entries)
    assert all(e["core_s"] > 0 for e in entries if e["role"] == "train")
