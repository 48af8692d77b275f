"""The cost ledger: every job of a real small EMT campaign records its cost on the embedded store, and
``almat status`` (text, --json) and ``almat serve`` show the sums; a rerun job replaces its entry (here and on
a MongoDB server); the codes' own timings parse from real CP2K and VASP outputs, and atomate2's VASP job
records its OUTCAR's; a job on a GPU counts GPU hours."""

import json
import math
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from jobflow import job
from typer.testing import CliRunner

from almat.campaign import load_config, run_campaign
from almat.cli import app
from almat.stores import CampaignDB, build_job_store
from almat.stores.ledger import (COST_KEY, MeasuredJob, campaign_cost, code_timing, cp2k_timing, measured, note_gpu,
                                 vasp_timing)
from project_module import load_module

DATA = Path(__file__).resolve().parents[1] / "test_data"
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
CONFIG = {
    "name": "cu-ledger",
    "structures": [{"bulk": CU, "supercell": [2, 1, 1]}],
    "initial": {"n_per_structure": 4, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 4, "warm_start_epochs": 2,
                                                  "batch_size": 4, "eval_every": 4}},
    "sampler": {"temperatures": [600], "steps": 20, "sample_every": 5, "trust_lo": 0.001, "trust_hi": 50.0},
    "selection": {"max_select": 2},
    "convergence": {"calibration_samples": 2, "max_iterations": 2},
}
ROLES = {"register", "initial", "label", "oracle", "train", "explore", "select", "decide"}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from almat.settings import AlmatSettings

    tmp = tmp_path_factory.mktemp("ledger")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    result = run_campaign(load_config(CONFIG), settings)
    with CampaignDB.from_settings(settings) as db:
        cost = campaign_cost(db, CONFIG["name"])
        labels = list(db.labels.query({"campaign": CONFIG["name"]}, properties=["iteration", "status"]))
    return settings, result, cost, labels


@pytest.mark.slow  # the campaign: about 45 s on 2 shared cores
def test_every_job_of_a_campaign_has_one_entry(campaign):
    _, result, cost, labels = campaign
    entries = cost["entries"]
    assert {e["role"] for e in entries} == ROLES
    assert all(e["campaign"] == CONFIG["name"] for e in entries)
    assert len({(e["job_uuid"], e["job_index"]) for e in entries}) == len(entries)
    assert all(e["state"] == "ok" and e["host"] == socket.gethostname() and e["queue"] == "local" for e in entries)
    assert all(e["wall_s"] > 0 and e["core_s"] >= 0 and e["gpu_s"] == 0 for e in entries)
    assert all(e["core_s"] > 0 for e in entries if e["role"] in ("train", "explore"))
    assert all(math.isclose(e["core_s"], e["cpu_self_s"] + e["cpu_children_s"]) for e in entries)
    # one oracle job per label (ok or failed), in the label's iteration; one training job per iteration
    assert Counter(e["iteration"] for e in entries if e["role"] == "oracle") == Counter(d["iteration"] for d in labels)
    assert Counter(e["iteration"] for e in entries if e["role"] == "train") == {0: 1, 1: 1}
    assert {e["iteration"] for e in entries if e["role"] in ("register", "initial")} == {-1}


@pytest.mark.slow
def test_sums_are_consistent(campaign):
    _, result, cost, labels = campaign
    rows, total = cost["iterations"], cost["total"]
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    assert total["labels"] == sum(r["labels"] for r in rows) == result.campaign.n_labels
    assert total["jobs"] == sum(r["jobs"] for r in rows) == len(cost["entries"])
    for row in [*rows, total]:
        parts = row["oracle_core_h"] + row["training_core_h"] + row["exploration_core_h"] + row["other_core_h"]
        assert math.isclose(row["total_core_h"], parts, rel_tol=1e-9)
        assert math.isclose(row["core_h_per_label"], row["total_core_h"] / row["labels"])
    for key in ("oracle_core_h", "training_core_h", "exploration_core_h", "total_core_h", "wall_h"):
        assert math.isclose(total[key], sum(r[key] for r in rows), rel_tol=1e-9)
    assert total["training_core_h"] > 0 and total["training_gpu_h"] == 0
    assert math.isclose(total["total_core_h"], sum(e["core_s"] for e in cost["entries"]) / 3600, rel_tol=1e-9)


@pytest.mark.slow
def test_status_shows_the_cost_and_json_carries_the_ledger(campaign, monkeypatch):
    settings, _, cost, _ = campaign
    monkeypatch.setenv("ALMAT_DB_PATH", str(settings.db_path))
    runner = CliRunner()
    out = runner.invoke(app, ["status", CONFIG["name"]], env={"COLUMNS": "100"})
    assert out.exit_code == 0, out.output
    assert f"cost of {CONFIG['name']}" in out.output
    total = next(line for line in out.output.splitlines() if line.strip().startswith("total"))
    assert total.split()[1] == str(cost["total"]["labels"])
    data = json.loads(runner.invoke(app, ["status", CONFIG["name"], "--json"]).output)
    assert data["cost"]["total"]["labels"] == cost["total"]["labels"]
    assert len(data["cost"]["entries"]) == len(cost["entries"])
    assert {e["role"] for e in data["cost"]["entries"]} == ROLES


@job
def flaky(marker: str) -> int:
    """Fails on its first run, succeeds on the next; its child process burns some CPU."""
    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
    if not Path(marker).exists():
        Path(marker).write_text("ran")
        raise RuntimeError("first run fails")
    return 1


def _rerun_replaces_the_entry(job_store, tmp_path) -> list[dict]:
    j = measured(flaky(str(tmp_path / "marker")), campaign="c-rerun", iteration=3)
    j.metadata["almat_role"] = "oracle"
    assert isinstance(j, MeasuredJob) and j.metadata[COST_KEY] == {"campaign": "c-rerun", "iteration": 3}
    job_store.connect()
    with pytest.raises(RuntimeError, match="first run fails"):
        j.run(job_store)
    db = CampaignDB.from_job_store(job_store).connect()
    try:
        (first,) = db.ledger.query({"campaign": "c-rerun"})
        assert first["state"] == "failed" and first["cpu_children_s"] > 0
        j.run(job_store)  # the same job again, as FireWorks reruns it: same uuid and index
        entries = list(db.ledger.query({"campaign": "c-rerun"}))
        cost = campaign_cost(db, "c-rerun")
    finally:
        db.close()
    assert len(entries) == 1 and entries[0]["state"] == "ok" and entries[0]["iteration"] == 3
    assert cost["total"]["jobs"] == 1 and math.isclose(cost["total"]["oracle_core_h"], entries[0]["core_s"] / 3600)
    return entries


def test_a_rerun_job_replaces_its_entry(job_store, tmp_path):
    _rerun_replaces_the_entry(job_store, tmp_path)


def test_cp2k_timing_from_real_outputs():
    t = cp2k_timing(DATA / "cp2k" / "si8_static" / "cp2k.out.gz")
    assert t == {"code": "cp2k", "file": "cp2k.out.gz", "wall_s": 3.269, "processes": 1, "threads": 2,
                 "core_s": pytest.approx(6.538)}
    assert cp2k_timing(DATA / "cp2k" / "si8_scf_unconverged" / "cp2k.out.gz")["wall_s"] == 1.013


def test_vasp_timing_from_real_outputs():
    nacl = vasp_timing(DATA / "vasp" / "NaCl_static" / "outputs" / "OUTCAR.gz")
    assert nacl == {"code": "vasp", "file": "OUTCAR.gz", "wall_s": 93.923, "cpu_s": 92.855, "cores": 48,
                    "core_s": pytest.approx(93.923 * 48)}
    al = vasp_timing(DATA / "vasp" / "Al_large_sigma" / "outputs" / "OUTCAR.gz")
    assert (al["wall_s"], al["cpu_s"], al["cores"]) == (18.571, 18.44, 1)


def test_a_run_cut_short_has_no_code_timing(tmp_path):
    import gzip

    text = gzip.decompress((DATA / "cp2k" / "si8_static" / "cp2k.out.gz").read_bytes()).decode()
    (tmp_path / "cp2k.out").write_text(text.split("T I M I N G")[0])  # killed before its timing table
    assert cp2k_timing(tmp_path / "cp2k.out") is None and code_timing(tmp_path) is None
    outcar = gzip.decompress((DATA / "vasp" / "FeO_relax" / "outputs" / "OUTCAR.gz").read_bytes()).decode()
    (tmp_path / "OUTCAR").write_text(outcar.split("General timing")[0])
    assert vasp_timing(tmp_path / "OUTCAR") is None


@job
def fake_code_run(folder: str) -> str:
    """Stands for an atomate2 code job: leaves the code's output in its folder."""
    shutil.copy(DATA / "cp2k" / "si8_static" / "cp2k.out.gz", Path(folder) / "cp2k.out.gz")
    return folder


def test_an_oracle_job_records_its_codes_timing(job_store, tmp_path):
    j = measured(fake_code_run(str(tmp_path)), campaign="c-code", iteration=0)
    j.metadata["almat_role"] = "oracle"
    job_store.connect()
    j.run(job_store, job_dir=tmp_path)
    with CampaignDB.from_job_store(job_store) as db:
        (entry,) = db.ledger.query({"campaign": "c-code"})
        cost = campaign_cost(db, "c-code")
    assert entry["code_timing"]["wall_s"] == 3.269 and entry["code_timing"]["threads"] == 2
    assert math.isclose(cost["total"]["code_core_h"], 6.538 / 3600)


@pytest.mark.mongo
def test_the_ledger_on_a_mongodb_server(mongo_uri, new_mongo_database, tmp_path):
    from almat.settings import AlmatSettings

    settings = AlmatSettings(mongo_uri=mongo_uri, database=new_mongo_database())
    job_store = build_job_store(settings)
    (entry,) = _rerun_replaces_the_entry(job_store, tmp_path)
    assert entry["host"] == socket.gethostname()
    with CampaignDB.from_settings(settings) as db:
        assert db.ensure_indexes()["ledger"] == {f: True for f in ("campaign", "iteration", "role", "job_uuid")}


@pytest.mark.slow
def test_serve_shows_a_cost_panel(campaign):
    import urllib.request

    settings, _, cost, _ = campaign
    bench = load_module("benchmarks/serve_load.py")
    base, server = bench.start_server(settings)
    try:
        with urllib.request.urlopen(f"{base}/campaigns/{CONFIG['name']}", timeout=60) as r:
            page = r.read().decode()
    finally:
        server.should_exit = True
    table = page[page.index('id="cost-table"'):page.index("</table>", page.index('id="cost-table"'))]
    assert [f'data-iteration="{i}"' in table for i in (-1, 0, 1, "total")] == [True] * 4
    assert f"from\n{len(cost['entries'])} job(s) on {socket.gethostname()}" in page
    chart = json.loads(page.split('<script type="application/json" id="chart-data">')[1].split("</script>")[0])
    assert [r["iteration"] for r in chart["cost"]["iterations"]] == [-1, 0, 1]
    assert chart["cost"]["total"]["labels"] == cost["total"]["labels"]


@pytest.fixture
def mock_vasp(monkeypatch):
    pytest.importorskip("atomate2")
    from atomate2.utils.testing.vasp import monkeypatch_vasp

    yield from monkeypatch_vasp(monkeypatch, DATA / "vasp")


def test_an_atomate2_vasp_label_records_vasps_own_timing(mock_vasp, job_store, tmp_path):
    """atomate2's VASP job (under its mock, with a real NaCl run's outputs) and the parse job after it, as a
    campaign's label job makes them: two entries; the VASP job's carries the OUTCAR's timing."""
    from jobflow import run_locally
    from pymatgen.io.vasp import Poscar

    from almat.campaign.jobs import declare_role
    from almat.oracle.vasp import VaspStaticOracleMaker
    from almat.schemas import StructureDoc, StructureSource

    mock_vasp({"static": "NaCl_static"}, {"static": {"check_inputs": ["poscar"]}})
    structure = Poscar.from_file(DATA / "vasp" / "NaCl_static" / "inputs" / "POSCAR").structure
    flow = VaspStaticOracleMaker().make(StructureDoc(structure=structure, source=StructureSource.enumerated),
                                        campaign="c-vasp", iteration=0)
    declare_role(flow, "oracle", campaign="c-vasp", iteration=0)
    run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    with CampaignDB.from_job_store(job_store) as db:
        entries = {e["job_uuid"]: e for e in db.ledger.query({"campaign": "c-vasp"})}
    code, parse = (entries[j.uuid] for j in flow.jobs)
    assert code["code_timing"] == {"code": "vasp", "file": "OUTCAR.gz", "wall_s": 93.923, "cpu_s": 92.855,
                                   "cores": 48, "core_s": pytest.approx(93.923 * 48)}
    assert parse["code_timing"] is None and {code["role"], parse["role"]} == {"oracle"}


@job
def trainer_on_a_gpu() -> int:
    """Stands for a job whose trainer ran on a GPU that torch in this process did not see (a subprocess)."""
    note_gpu("test GPU")
    return 1


@job
def explorer_on_the_cpu() -> int:
    return 2


def test_gpu_hours_of_a_job_on_a_gpu(job_store, db, monkeypatch, settings):
    from almat.schemas import CampaignDoc

    job_store.connect()
    jobs = [measured(trainer_on_a_gpu(), "c-gpu", 0), measured(explorer_on_the_cpu(), "c-gpu", 0)]
    for j, role in zip(jobs, ("train", "explore")):
        j.metadata["almat_role"] = role
        j.run(job_store)
    db.upsert("campaigns", [CampaignDoc(name="c-gpu", config_fingerprint="x", config={})])
    cost = campaign_cost(db, "c-gpu")
    train, explore = (next(e for e in cost["entries"] if e["role"] == r) for r in ("train", "explore"))
    assert train["gpu_s"] == train["wall_s"] > 0 and train["gpu"] == "test GPU"
    assert explore["gpu_s"] == 0 and explore["gpu"] is None  # the next job starts from no GPU use
    assert cost["total"]["training_gpu_h"] == pytest.approx(train["wall_s"] / 3600)
    monkeypatch.setenv("ALMAT_DB_PATH", str(settings.db_path))
    out = CliRunner().invoke(app, ["status", "c-gpu"], env={"COLUMNS": "120"})
    assert out.exit_code == 0 and "train GPU-h" in out.output, out.output


#: a trainer's stand-in: burns 0.4 s of CPU, then starts itself once more as a grandchild that does the same;
#: prints its own CPU seconds (and its grandchild's)
BURN = """import subprocess, sys, time
t = time.process_time()
while time.process_time() - t < 0.4:
    pass
leaf = sys.argv[1:] == ["leaf"]
grandchild = None if leaf else subprocess.run([sys.executable, __file__, "leaf"], capture_output=True, text=True)
print(time.process_time(), *([] if leaf else grandchild.stdout.split()))
"""


@job
def trainer_in_a_child(workdir: str, device: str) -> list[float]:
    """Stands for a production-model job: its trainer runs as a child process (``run_trainer``, as
    ``MaceRunTrain`` runs ``mace_run_train``); the CPU seconds the child and grandchild said they used."""
    from almat.learner.production import run_trainer

    code, tail = run_trainer([sys.executable, str(Path(workdir) / "burn.py")], Path(workdir), device, "burn.log")
    assert code == 0, tail
    return [float(x) for x in tail.split()]


def test_a_trainers_child_process_counts_in_core_seconds_and_on_a_gpu_in_gpu_seconds(job_store, tmp_path):
    (tmp_path / "burn.py").write_text(BURN)
    job_store.connect()
    jobs = {device: measured(trainer_in_a_child(str(tmp_path), device), "c-child", None)
            for device in ("cpu", "cuda:0")}
    for j in jobs.values():
        j.metadata["almat_role"] = "train"
        j.run(job_store)
    with CampaignDB.from_job_store(job_store) as db:
        entries = {e["job_uuid"]: e for e in db.ledger.query({"campaign": "c-child"})}
        said = {device: job_store.get_output(j.uuid) for device, j in jobs.items()}
        cost = campaign_cost(db, "c-child")
    cpu, gpu = entries[jobs["cpu"].uuid], entries[jobs["cuda:0"].uuid]
    for device, entry in (("cpu", cpu), ("cuda:0", gpu)):
        # the finished child and its own finished child: all their CPU time is the job's, none of it its own
        assert len(said[device]) == 2 and min(said[device]) >= 0.4
        assert entry["cpu_children_s"] >= sum(said[device]) > entry["cpu_self_s"]
        assert entry["core_s"] == pytest.approx(entry["cpu_self_s"] + entry["cpu_children_s"])
    # on a GPU (a device other than the CPU) the job's wall seconds are its GPU seconds; on the CPU, none
    assert cpu["gpu_s"] == 0 and cpu["gpu"] is None
    assert gpu["gpu_s"] == gpu["wall_s"] > 0 and gpu["gpu"] == "cuda:0"
    assert cost["total"]["training_gpu_h"] == pytest.approx(gpu["wall_s"] / 3600)
    assert cost["total"]["training_core_h"] == pytest.approx((cpu["core_s"] + gpu["core_s"]) / 3600)
