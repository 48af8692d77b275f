"""The CP2K argyrodite campaign's small version on the cluster path (issue 25).

``workflows/li6ps5cl_cp2k.py``'s ``build_config(tiny=True, n_start=1)``: one lowest-Ewald Li6PS5Cl cell
(13 atoms), pre-relaxed by a CP2K cell optimisation (1 step), CP2K PBE labels with a minimal basis at 100 Ry,
CHGNet's own MD for the first frames, a fine-tuned CHGNet committee, an NVT then an NPT stage, 2 iterations,
and a tiny ``mace_run_train`` production model. It is submitted with ``submit_campaign`` to a FireWorks
LaunchPad on the MongoDB server; ``qlaunch rapidfire`` runs for the ``cpu`` category (the CP2K jobs and the
bookkeeping) and the ``gpu`` category (training, exploration, the production model) at the same time; each
SLURM job it submits runs ``rlaunch rapidfire`` (two rockets in a ``cpu`` job, so two labels run at once;
one in a ``gpu`` job). The workers read pymatgen's CP2K data cut down to the basis sets and potentials the
campaign names (the same CP2K input files, about 20 s less per label: see ``_cp2k_data``).

Needs CP2K (``cp2k.psmp``), SLURM (``bash scripts/slurm/start.sh``) and a MongoDB server
(``ALMAT_TEST_MONGO_URI``; ``bash scripts/mongo/start.sh``); skipped with the reason otherwise. One
module-scoped run; each test asserts one thing of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_concurrent_cluster import ConcurrentCluster, Workers, _job_key, _rocket_dir, _status_json
from test_slurm_fireworks import PARTITION, _job_store, _require_slurm
from project_module import load_module

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.mongo]

NAME = "argyrodite-cp2k-cluster"
MONGO_URI = os.environ.get("ALMAT_TEST_MONGO_URI")
ROCKETS = {"cpu": 2, "gpu": 1}  # rlaunch rapidfire processes per SLURM job of each category
WORKER_LIFE_S = 1500  # rlaunch rapidfire --timeout: a rocket takes no new firework after this
WALLTIME = "00:30:00"
RUN_TIMEOUT_S = 1200
#: what the workers need of this process' environment: the job store, CP2K, pymatgen's CP2K data
EXPORTS = ("JOBFLOW_CONFIG_FILE", "ALMAT_MONGO_URI", "ALMAT_DATABASE", "OMP_NUM_THREADS", "ALMAT_NUM_THREADS",
           "HOME", "PYTHONPATH", "ATOMATE2_CP2K_CMD", "PMG_CP2K_DATA_DIR", "PMG_DEFAULT_CP2K_FUNCTIONAL")


def _workflow():
    """``workflows/li6ps5cl_cp2k.py`` as a module."""
    return load_module("workflows/li6ps5cl_cp2k.py")


def _once(folder: Path, make) -> Path:
    """``folder``, made by ``make(tmp)`` aside and then renamed (never half a copy) unless it exists."""
    if not folder.is_dir():
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}")
        make(tmp)
        with contextlib.suppress(OSError):
            tmp.rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _cp2k_data(base: Path, settings: dict) -> Path:
    """pymatgen's CP2K data (``pmg config --cp2k``, ~40 s, kept beside pytest's temp folders as
    tests/oracle/test_cp2k.py's ``cp2k_env`` does), cut down to the basis sets and potentials ``settings`` names.
    pymatgen parses an element's whole file (200-300 kB of YAML) for every input it writes: about 20 s of each
    label here for Li, P, S and Cl; cut down (``cp2k_data_subset``), the CP2K input files it writes are the same."""
    from pymatgen.cli.pmg_config import setup_cp2k_data

    from almat.oracle.cp2k import cp2k_data_subset

    def full(tmp: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            setup_cp2k_data(["/usr/share/cp2k", str(tmp)])

    key = hashlib.sha1(json.dumps(settings["basis_and_potential"], sort_keys=True).encode()).hexdigest()[:8]

    def cut(tmp: Path) -> None:
        cp2k_data_subset(settings, _once(base / "almat-cp2k-pmg", full), tmp)

    return _once(base / f"almat-cp2k-pmg-{key}", cut)


def _tiny_config() -> dict:
    return _workflow().build_config(tiny=True, name=NAME, n_start=1).model_dump(mode="json", exclude_none=True)


class Cp2kCluster(ConcurrentCluster):
    """``ConcurrentCluster`` whose worker jobs also get CP2K's environment, ``ROCKETS[category]`` rockets each."""

    def __init__(self, root: Path, env: dict[str, str], mongo_uri: str, cp2k_env: dict[str, str]):
        super().__init__(root, env, mongo_uri)
        self.env.update(cp2k_env, ALMAT_NUM_THREADS="1", ATOMATE2_CP2K_CMD="cp2k.psmp")
        exports = "".join(f"export {k}={shlex.quote(self.env[k])}; " for k in EXPORTS if k in self.env)
        self.write_qadapters(exports, ROCKETS, life_s=WORKER_LIFE_S, walltime=WALLTIME)


def _records(cluster: Cp2kCluster) -> dict:
    """The campaign's documents in the workers' store: campaign, iterations, labels, models, ledger, and
    the JobStore's (uuid, index) keys."""
    from almat.stores import CampaignDB
    from almat.stores.ledger import campaign_cost

    store = _job_store(cluster)
    db = CampaignDB.from_job_store(store).connect()
    try:
        q = {"campaign": NAME}
        return {"docs": [(d["uuid"], d["index"]) for d in store.docs_store.query({}, properties=["uuid", "index"])],
                "campaign": db.campaigns.query_one({"name": NAME}),
                "iterations": list(db.iterations.query(q)),
                "labels": list(db.labels.query(q)),
                "models": list(db.models.query(q)),
                "relaxed": list(db.structures.query({**q, "source": "relaxed"}, properties=["structure_hash"])),
                "cost": campaign_cost(db, NAME)}
    finally:
        db.close()


def _export_model(cluster: Cp2kCluster, path: Path) -> subprocess.Popen:
    """``almat export-model NAME -o path``, started in a process with the workers' settings."""
    return subprocess.Popen([sys.executable, "-c", "from almat.cli import app; app()", "export-model", NAME, "-o",
                             str(path)], env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _load_exported(export: subprocess.Popen, path: Path, records: dict) -> dict:
    """What ``_export_model`` gave, and MACE's own calculator on the file it wrote: its force RMSE on the
    calibration frames the production model was scored on."""
    from mace.calculators import MACECalculator

    from almat.schemas import LabelDoc

    output = export.communicate(timeout=120)[0]
    result = {"exit": export.returncode, "output": output, "force_rmse": None}
    model = next((m for m in records["models"] if m.get("role") == "production"), None)
    if export.returncode == 0 and model is not None:
        held = [LabelDoc.from_store(d).to_atoms() for d in records["labels"]
                if d["label_id"] in set(model["validation_label_ids"])]
        calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        df = []
        for atoms in held:
            pred = atoms.copy()
            pred.calc = calc
            df.append((pred.get_forces() - atoms.get_forces()).ravel())
        result["force_rmse"] = float(np.sqrt(np.mean(np.concatenate(df) ** 2))) if df else None
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Submit the tiny CP2K campaign, serve both categories with qlaunch rapidfire until every firework is
    COMPLETED, then collect what the tests look at."""
    if shutil.which("cp2k.psmp") is None:
        pytest.skip("CP2K is not installed (apt-get install cp2k); .ci/run installs it")
    env = _require_slurm()
    if not MONGO_URI:
        pytest.skip("ALMAT_TEST_MONGO_URI not set (bash scripts/mongo/start.sh starts a local server)")
    pytest.importorskip("chgnet")
    data = _cp2k_data(tmp_path_factory.getbasetemp().parent, _workflow().TINY)
    cp2k_env = {"PMG_CP2K_DATA_DIR": str(data), "PMG_DEFAULT_CP2K_FUNCTIONAL": "PBE"}
    cluster = Cp2kCluster(tmp_path_factory.mktemp("cp2k_cluster"), env, MONGO_URI, cp2k_env)
    try:
        yield _run_campaign(cluster)
    finally:
        cluster.lp.connection.close()
        cluster.cleanup()


def _wait_for_workflow(cluster: Cp2kCluster, timeout: float) -> None:
    """Poll until the campaign's workflow is COMPLETED (fail on a FIZZLED or DEFUSED firework). The workflow
    document's state is written with its nodes: a firework's own COMPLETED state is written before the fireworks
    its response adds join the workflow, so "all its fireworks COMPLETED" can be seen between the two."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        wf = cluster.lp.workflows.find_one({"name": f"almat {NAME}"}, {"state": 1, "nodes": 1})
        bad = [(f["fw_id"], f["name"], f["state"]) for f in cluster.fws(wf["nodes"])
               if f["state"] in ("FIZZLED", "DEFUSED")]
        assert not bad, f"fireworks failed: {bad}; see {cluster.launch_dir}"
        if wf["state"] == "COMPLETED":
            return
        time.sleep(0.5)
    raise AssertionError(f"workflow not COMPLETED after {timeout} s; see {cluster.launch_dir}")


def _run_campaign(cluster: Cp2kCluster) -> dict:
    t0 = time.perf_counter()
    workers = Workers(cluster, cluster.launch_dir / "run").start()  # qlaunch starts up while the campaign is built
    try:
        (submitted,) = cluster.submit_all([_tiny_config()])
        _wait_for_workflow(cluster, RUN_TIMEOUT_S)
        wall = time.perf_counter() - t0
    finally:
        workers.stop()
    ids = cluster.wf_fw_ids(NAME)
    rockets = workers.rockets()
    run = {"submitted": submitted, "fws": cluster.fws(ids), "launches": cluster.launches(ids), "rockets": rockets,
           "acct": cluster.sacct(sorted({r["slurm_job_id"] for r in rockets})), "wall": wall,
           "records": _records(cluster), "cluster": cluster}
    export = _export_model(cluster, cluster.root / "argyrodite.model")
    run["status"] = _status_json(cluster, [NAME])[NAME]
    run["export"] = _load_exported(export, cluster.root / "argyrodite.model", run["records"])
    labels = run["records"]["labels"]
    cost = run["records"]["cost"]["total"]
    for d in sorted(run["records"]["iterations"], key=lambda d: d["iteration"]):
        print(f"\n[cp2k cluster] iteration {d['iteration']} ({d['stage_name']}): {d['n_frames_explored']} frames, "
              f"{d['n_selected']} selected, {d['n_labelled']} labelled ({d['n_failed_labels']} failed), "
              f"calibration labels {len(d['calibration_label_ids'])}; stop: {d['stop_reason']}")
    print(f"\n[cp2k cluster] {len(run['fws'])} fireworks, {len(labels)} labels "
          f"({sum(lab['status'] == 'ok' for lab in labels)} ok), status {run['status']['status']}, "
          f"{len({r['slurm_job_id'] for r in rockets})} SLURM worker jobs; wall {wall:.0f} s; ledger: "
          f"{cost['total_core_h'] * 3600:.0f} core-s ({cost['oracle_core_h'] * 3600:.0f} oracle, "
          f"{cost['training_core_h'] * 3600:.0f} training, {cost['exploration_core_h'] * 3600:.0f} exploration)")
    return run


# ------------------------------------------------------------------ where each job ran


def test_cp2k_jobs_ran_on_cpu_and_training_exploration_production_on_gpu(run):
    entries = run["records"]["cost"]["entries"]
    by_dir = {r["dir"]: r for r in run["rockets"]}
    acct = run["acct"]
    cp2k = [e for e in entries if e["role"] == "oracle"]
    gpu = [e for e in entries if e["role"] in ("train", "explore")]
    assert cp2k and {e["queue"] for e in cp2k} == {PARTITION["cpu"]}
    assert {e["name"] for e in gpu} >= {"train it0", "train it1", "production model"}
    assert any(e["role"] == "explore" for e in gpu) and {e["queue"] for e in gpu} == {PARTITION["gpu"]}
    for e in entries:  # the SLURM job each entry names ran in that partition, and is one of this test's
        assert acct[e["slurm_job_id"]]["partition"] == e["queue"], e["name"]
    # every launch ran in a rocket of its own category's partition, in a SLURM job of that partition
    for launch in run["launches"]:
        rocket = by_dir[_rocket_dir(launch)]
        category = (launch.get("fworker") or {}).get("category", ["?"])[0]
        assert rocket["partition"] == PARTITION[category] == acct[rocket["slurm_job_id"]]["partition"]
    assert {f["spec"]["_category"] for f in run["fws"] if f["name"] == "production model"} == {"gpu"}


def test_the_start_cell_was_relaxed_by_cp2k_on_cpu(run):
    (relax,) = [e for e in run["records"]["cost"]["entries"] if e["name"] == "relax"]
    assert relax["role"] == "oracle" and relax["queue"] == PARTITION["cpu"] and relax["iteration"] == -1
    assert relax["code_timing"]["code"] == "cp2k"  # CP2K's own account of the cell optimisation
    assert len(run["records"]["relaxed"]) == 1  # the relaxed start cell the MD starts from


# ------------------------------------------------------------------ the campaign and its labels


def _expected_fingerprint() -> str:
    from almat.oracle.cp2k import Cp2kStaticOracleMaker, cp2k_static_maker

    wf = _workflow()
    tiny, label = (Cp2kStaticOracleMaker(cp2k_maker=cp2k_static_maker(**dict(s))).fingerprint
                   for s in (wf.TINY, wf.LABEL))
    assert tiny != label
    return tiny


def test_campaign_ended_with_its_iterations_in_the_server(run):
    rec = run["records"]
    camp = rec["campaign"]
    assert all(f["state"] == "COMPLETED" for f in run["fws"])
    assert camp["status"] in ("converged", "max_iterations") and run["status"]["status"] == camp["status"]
    assert sorted(d["iteration"] for d in rec["iterations"]) == list(range(camp["n_iterations"]))
    assert camp["n_iterations"] == 2 or camp["status"] == "converged"
    # the NVT stage first, then the NPT one
    stages = [(d["stage"], d["stage_name"]) for d in sorted(rec["iterations"], key=lambda d: d["iteration"])]
    assert stages[0] == (0, "nvt") and (len(stages) < 2 or stages[1] == (1, "npt")), stages


def test_ok_labels_carry_the_tiny_cp2k_fingerprint_and_failed_ones_are_never_trained_on(run):
    labels = run["records"]["labels"]
    ok = [lab for lab in labels if lab["status"] == "ok"]
    failed = {lab["label_id"]: lab for lab in labels if lab["status"] != "ok"}
    assert len(ok) >= 4 and {lab["oracle_fingerprint"] for lab in ok} == {_expected_fingerprint()}
    assert all(lab["oracle"].startswith("cp2k:") and lab["oracle_settings"]["cutoff"] == 100 for lab in ok)
    assert all(lab.get("reason") for lab in failed.values()), failed
    trained = {i for m in run["records"]["models"] for i in m.get("training_label_ids") or []}
    assert trained and not trained & set(failed)
    assert trained <= {lab["label_id"] for lab in ok}


# ------------------------------------------------------------------ the production model


def test_the_production_model_is_stored_exported_and_scored(run):
    rec, export = run["records"], run["export"]
    production = [m for m in rec["models"] if m.get("role") == "production"]
    assert len(production) == 1 and rec["campaign"]["production_model_id"] == production[0]["model_id"]
    model = production[0]
    assert "production.model" in model["files"] and model["hyperparameters"]["trainer"] == "mace_run_train"
    calibration = {i for d in rec["iterations"] for i in d.get("calibration_label_ids") or []}
    assert calibration and set(model["validation_label_ids"]) == calibration & {
        lab["label_id"] for lab in rec["labels"] if lab["status"] == "ok"}
    metrics = model["validation_metrics"]
    assert metrics["n_frames"] == len(model["validation_label_ids"]) and 0 < metrics["force_rmse"] < 10
    # almat export-model hands out the .model file; MACE's calculator loads it and gives the recorded errors
    assert export["exit"] == 0, export["output"]
    assert export["force_rmse"] == pytest.approx(metrics["force_rmse"], rel=1e-4)


# ------------------------------------------------------------------ the ledger


def test_the_ledger_has_each_job_once_and_cp2ks_own_timing(run):
    entries = run["records"]["cost"]["entries"]
    keys = Counter((e["job_uuid"], e["job_index"]) for e in entries)
    assert not [k for k, n in keys.items() if n > 1]
    measured = {_job_key(f) for f in run["fws"] if f["spec"]["_tasks"][0]["job"]["@class"] == "MeasuredJob"}
    assert set(keys) == measured and len(measured) >= 20
    assert all(e["state"] == "ok" and e["campaign"] == NAME and e["wall_s"] > 0 for e in entries)
    # each label's CP2K job: its entry has CP2K's own total time, on the 1 thread the workers give it
    by_uuid = {e["job_uuid"]: e for e in entries}
    ok = [lab for lab in run["records"]["labels"] if lab["status"] == "ok"]
    for lab in ok:
        timing = by_uuid[lab["job_uuid"]]["code_timing"]
        assert timing["code"] == "cp2k" and timing["wall_s"] > 0 and timing["threads"] == 1, timing
        assert by_uuid[lab["job_uuid"]]["core_s"] > 0  # cp2k.psmp, a child of the job's process, counted
    assert sum(e["core_s"] for e in entries if e["role"] == "train") > 0


def test_status_json_shows_the_cost_per_iteration_and_per_label(run):
    cost = run["status"]["cost"]
    labels = [lab for lab in run["records"]["labels"] if lab["status"] == "ok"]
    rows = {r["iteration"]: r for r in cost["iterations"]}
    assert set(rows) == {-1, 0, 1, None}  # before iteration 0, the two iterations, the production model
    assert rows[None]["training_core_h"] > 0 and rows[None]["labels"] == 0
    for i, row in rows.items():
        assert row["labels"] == sum(lab["iteration"] == i for lab in labels)
        if row["labels"]:
            assert row["core_h_per_label"] == pytest.approx(row["total_core_h"] / row["labels"])
            assert row["oracle_core_h"] > 0 and row["code_core_h"] > 0
    total = cost["total"]
    assert total["labels"] == len(labels) and total["core_h_per_label"] == pytest.approx(
        total["total_core_h"] / len(labels))
    assert cost["queues"] == sorted(PARTITION.values())
    assert len(cost["entries"]) == len(run["records"]["cost"]["entries"])


# ------------------------------------------------------------------ queries on the result


def test_labels_are_pulled_by_chemistry_and_fingerprint_and_written_as_extxyz(run, tmp_path):
    from ase.io import read

    from almat.export import export_labels
    from almat.query import query_labels
    from almat.stores import CampaignDB

    fp = _expected_fingerprint()
    ok = {lab["label_id"]: lab for lab in run["records"]["labels"] if lab["status"] == "ok"}
    store = _job_store(run["cluster"])
    with CampaignDB.from_job_store(store) as db:
        assert sorted(query_labels(db, chemsys="Cl-Li-P-S", oracle_fingerprint=fp).ids()) == sorted(ok)
        assert query_labels(db, chemsys="Cl-Li-P-S", oracle_fingerprint="0" * len(fp)).count() == 0
        result = export_labels(db, tmp_path / "argyrodite.xyz", chemsys="Cl-Li-P-S", oracle_fingerprint=fp)
    assert result.n_labels == len(ok)
    frames = read(tmp_path / "argyrodite.xyz", ":")
    assert sorted(a.info["label_id"] for a in frames) == sorted(ok)
    for atoms in frames:
        lab = ok[atoms.info["label_id"]]
        assert Counter(atoms.get_chemical_symbols()) == {"Li": 6, "P": 1, "S": 5, "Cl": 1}
        assert atoms.info["oracle_fingerprint"] == fp
        assert atoms.info["REF_energy"] == pytest.approx(lab["energy"])
        assert np.allclose(atoms.arrays["REF_forces"], lab["forces"])
