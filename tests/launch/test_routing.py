"""Routing of campaign jobs to worker categories, the run record of ``store_job``, and submit's checks.

No SLURM here: FireWorks runs in-process on a mongomock LaunchPad.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import yaml
from jobflow import CURRENT_JOB, Flow, Maker, Response, run_locally
from pydantic import BaseModel

from almat.campaign.jobs import ROLE_KEY, ROLES, declare_role
from almat.launch.launchpad import launchpad_host, load_launchpad_spec
from almat.launch.routing import Routing, RoutingError, apply_routing, job_role, load_routing
from almat.launch.submit import (
    LaunchPadError,
    SubmitError,
    check_workers,
    find_launchpad_file,
    load_launchpad,
    read_qadapter,
    submit_campaign,
)
from almat.schemas.section import ConfigError
from almat.stores import CampaignDB, build_job_store, store_job
from almat.stores.runinfo import RUN_RECORD_KEY
from secret_uri import SECRET, uri_with_secret

CONFIG = {
    "name": "cu-route",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 4},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 4, "batch_size": 2}},
    "sampler": {"temperatures": [600, 900], "steps": 20, "sample_every": 5},
    "convergence": {"max_iterations": 2},
}

ROUTING = Routing(train="gpu", explore="gpu", oracle="cpu", register="local", initial="local", label="local",
                  select="local", decide="local", default="local")


# --------------------------------------------------------------------------- a small dynamic flow
# The same shape as the campaign (label replaces itself by oracle jobs, decide adds the next iteration)
# but instant; every job declares its role, as the campaign's do. Each job returns the category it was
# routed to, as it saw it.

NAMES = {"train": "train it{i}", "explore": "explore it{i} s0 600K", "label": "label it{i}", "decide": "decide it{i}"}


def _seen() -> dict:
    return {"category": CURRENT_JOB.job.config.manager_config.get("_category"), "name": CURRENT_JOB.job.name}


@store_job
def fake_step() -> dict:
    return _seen()


@store_job
def fake_oracle(i: int) -> dict:
    return {**_seen(), "i": i}


@store_job
def fake_label(n: int, iteration: int, routing: dict | None):
    jobs = []
    for i in range(n):
        j = fake_oracle(i)
        j.name = f"static {iteration}-{i}"  # named like an atomate2 job: the role routes it, not the name
        jobs.append(declare_role(j, "oracle", routing))
    return Response(replace=Flow(jobs, output=[j.output for j in jobs]), stored_data={"mine": 1})


def _iteration(iteration: int, last: int, routing: dict | None) -> Flow:
    train, explore = fake_step(), fake_step()
    label = fake_label(2, iteration, routing)
    dec = fake_decide(iteration, last, label.output, routing)
    jobs = dict(zip(NAMES, (train, explore, label, dec)))
    for role, job in jobs.items():
        job.name = NAMES[role].format(i=iteration)
        declare_role(job, role, routing)
    return Flow(list(jobs.values()), output=dec.output)


@store_job
def fake_decide(iteration: int, last: int, labels: list, routing: dict | None):
    assert len(labels) == 2
    if iteration >= last:
        return _seen()
    return Response(output=_seen(), addition=_iteration(iteration + 1, last, routing))


def fake_campaign(last: int = 1, routing: Routing | None = None) -> Flow:
    routing = routing.model_dump() if routing is not None else None
    register = declare_role(fake_step(), "register", routing)
    register.name = "register campaign"
    return Flow([register, _iteration(0, last, routing)])


def _role(name: str) -> str:
    return "oracle" if name.startswith("static") else name.split()[0]


# --------------------------------------------------------------------------- routing


def test_every_job_of_the_campaign_flow_is_routed_by_its_role(tmp_path):
    from jobflow.managers.fireworks import flow_to_workflow

    from almat.campaign import CampaignMaker, load_config

    flow = CampaignMaker.from_config(load_config(CONFIG)).make()
    apply_routing(flow, ROUTING)
    wf = flow_to_workflow(flow)
    got = {fw.name: fw.spec["_category"] for fw in wf.fws}
    assert got == {
        "register campaign": "local", "initial structures": "local", "label initial": "local",
        "train it0": "gpu", "explore it0 w0-1": "gpu",
        "select it0": "local", "label it0": "local", "label calibration it0": "local", "decide it0": "local",
    }
    # defaults: gpu for the learner and the sampler, cpu for everything else
    flow = CampaignMaker.from_config(load_config(CONFIG)).make()
    apply_routing(flow)
    cats = {fw.name: fw.spec["_category"] for fw in flow_to_workflow(flow).fws}
    assert {n for n, c in cats.items() if c == "gpu"} == {"train it0", "explore it0 w0-1"}
    assert set(cats.values()) == {"gpu", "cpu"}


def test_vasp_oracle_jobs_are_routed_by_role_whatever_atomate2_names_them(tmp_path, mock_launchpad, job_store):
    """An MD campaign with a VASP oracle, submitted: atomate2's ``relax`` and ``static`` jobs land on cpu,
    train and explore on gpu, bookkeeping where config/fireworks/routing.yaml says."""
    from jobflow.managers.fireworks import flow_to_workflow

    from almat.campaign.jobs import label_batch
    from almat.schemas import StructureDoc, StructureSource, to_structure

    routing = load_routing(Path(__file__).resolve().parents[2] / "config" / "fireworks" / "routing.yaml")
    vasp = {**CONFIG, "name": "cu-vasp", "oracle": {"kind": "vasp"}, "prerelax": {"enabled": True}}
    _worker_files(tmp_path)
    result = submit_campaign(vasp, mock_launchpad, routing, job_store=job_store, dry_run=True)
    cats = result.categories
    assert cats["relax"] == "cpu" and cats["vasp relax labels"] == "cpu"  # atomate2's RelaxMaker and its parse job
    assert cats["train it0"] == cats["explore it0 w0-1"] == "gpu"
    for name in ("register campaign", "initial structures", "label initial", "select it0", "label it0",
                 "label calibration it0", "decide it0"):
        assert cats[name] == getattr(routing, _role(name) if _role(name) != "label" else "label"), name
    # the static labels are made while the campaign runs, by the label jobs: they are routed as oracle jobs
    from almat.campaign import CampaignMaker

    maker = CampaignMaker.from_config(vasp, routing=routing.model_dump())
    doc = StructureDoc(structure=to_structure(bulk_cu()), source=StructureSource.md)
    response = label_batch.original([doc, doc], maker.oracle, "cu-vasp", 0, routing=maker.routing)
    fws = flow_to_workflow(response.replace).fws
    assert {fw.name for fw in fws} == {"static", "vasp oracle labels"}
    assert {fw.spec["_category"] for fw in fws} == {"cpu"}


def bulk_cu():
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.61)


def test_routing_keeps_other_manager_config_keys():
    job = declare_role(fake_step(), "train")
    job.config.manager_config = {"_priority": 5}
    apply_routing(job, {"train": "big-gpu"})
    assert job.config.manager_config == {"_priority": 5, "_category": "big-gpu"}
    assert job.config.pass_manager_config is False


def test_declared_roles():
    job = fake_step()
    assert job_role(job) is None and Routing().category(job_role(job)) == "cpu"  # no role: default
    declare_role(job, "train")
    assert job.metadata[ROLE_KEY] == "train" and job_role(job) == "train"
    with pytest.raises(ValueError, match="unknown job role 'trainer'; valid: register, initial"):
        declare_role(job, "trainer")


def test_load_routing(tmp_path):
    f = tmp_path / "routing.yaml"
    f.write_text(yaml.safe_dump({"routing": {"oracle": "dft", "decide": "local"}}))
    r = load_routing(f)
    assert (r.oracle, r.decide, r.train) == ("dft", "local", "gpu")
    with pytest.raises(RoutingError, match="traing.*job roles"):
        load_routing({"traing": "gpu"})
    with pytest.raises(RoutingError, match="non-empty"):
        load_routing({"train": ""})
    with pytest.raises(RoutingError, match="not found"):
        load_routing(tmp_path / "nope.yaml")
    assert set(Routing.model_fields) == {*ROLES, "default"}


@pytest.mark.filterwarnings("ignore:Some jobs are not connected")
def test_jobs_created_by_responses_carry_the_routing_run_locally(tmp_path, job_store):
    flow = fake_campaign(last=1, routing=ROUTING)
    apply_routing(flow, ROUTING)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, log=False)
    seen = {}
    for r in responses.values():
        for resp in r.values():
            if isinstance(resp.output, dict) and "category" in resp.output:
                seen[resp.output["name"]] = resp.output["category"]
    # iteration 1 was added by decide it0; the oracle jobs replaced label it0 and label it1
    assert seen == {
        "register campaign": "local",
        "train it0": "gpu", "explore it0 s0 600K": "gpu", "static 0-0": "cpu", "static 0-1": "cpu",
        "decide it0": "local",
        "train it1": "gpu", "explore it1 s0 600K": "gpu", "static 1-0": "cpu", "static 1-1": "cpu",
        "decide it1": "local",
    }


# --------------------------------------------------------------------------- store_job's run record


class Out(BaseModel):
    value: int


@store_job(output_schema=Out)
def schema_job(x: int) -> dict:
    return {"value": x}


@store_job
def plain_job(x: int) -> list:
    return [x, x + 1]


class Doubler(Maker):
    name: str = "doubler"

    @store_job(output_schema=Out)
    def make(self, x: int):
        return Response(output={"value": 2 * x}, stored_data={"k": 1})


@pytest.mark.filterwarnings("ignore:Some jobs are not connected")
def test_store_job_records_where_it_ran_and_keeps_outputs(tmp_path, job_store, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    a, b = schema_job(3), plain_job(5)
    c = Doubler().make(a.output.value)
    responses = run_locally(Flow([a, b, c]), store=job_store, create_folders=True, root_dir=tmp_path, log=False)
    assert responses[a.uuid][1].output == Out(value=3)  # the schema still applies
    assert responses[b.uuid][1].output == [5, 6]
    assert responses[c.uuid][1].output == Out(value=6)
    assert responses[c.uuid][1].stored_data == {"k": 1}  # untouched outside FireWorks
    assert responses[a.uuid][1].stored_data is None
    job_store.connect()
    for j in (a, b, c):
        doc = job_store.query_one({"uuid": j.uuid})
        rec = doc["metadata"][RUN_RECORD_KEY]
        assert rec["slurm_job_id"] == "4242" and rec["slurm_partition"] == "gpu" and rec["job_index"] == 1
        assert rec["hostname"]
    assert job_store.query_one({"uuid": b.uuid})["output"] == [5, 6]
    # outside SLURM only the host is recorded
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_JOB_PARTITION")
    d = plain_job(1)
    run_locally(d, store=job_store, create_folders=True, root_dir=tmp_path, log=False)
    assert set(job_store.query_one({"uuid": d.uuid})["metadata"][RUN_RECORD_KEY]) == {"hostname", "job_index"}
    # a store_job still works as a plain function call
    assert schema_job.original(2) == {"value": 2}


def test_function_filter_still_matches_store_jobs():
    j = plain_job(1)
    j.update_config({"manager_config": {"_category": "x"}}, function_filter=plain_job)
    assert j.config.manager_config == {"_category": "x"}
    k = schema_job(1)
    k.update_config({"manager_config": {"_category": "x"}}, function_filter=plain_job)
    assert k.config.manager_config == {}


# --------------------------------------------------------------------------- FireWorks in-process


@pytest.fixture
def mock_launchpad(tmp_path, monkeypatch):
    """A LaunchPad file whose MongoDB is an in-process mongomock."""
    import mongomock
    from fireworks.core import launchpad as lp_module

    monkeypatch.setattr(lp_module, "MongoClient", mongomock.MongoClient)
    monkeypatch.setattr(lp_module, "GRIDFS_FALLBACK_COLLECTION", None)  # GridFS needs a real pymongo Database
    path = tmp_path / "my_launchpad.yaml"
    path.write_text(yaml.safe_dump({"host": "mongo.example.org", "port": 27017, "name": "fw_test"}))
    return path


# FireWorks' ping thread can race the rocket on an in-process mongomock; harmless here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore:Some jobs are not connected")
def test_fireworks_routes_dynamic_jobs_and_stores_run_record(tmp_path, monkeypatch, mock_launchpad, job_store):
    import jobflow
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from jobflow.managers.fireworks import flow_to_workflow

    monkeypatch.setattr(jobflow.SETTINGS, "JOB_STORE", job_store)  # what a worker's jobflow config gives
    monkeypatch.setenv("SLURM_JOB_PARTITION", "somewhere")
    monkeypatch.chdir(tmp_path)
    lp = load_launchpad(mock_launchpad)
    flow = fake_campaign(last=1, routing=ROUTING)
    apply_routing(flow, ROUTING)
    lp.add_wf(flow_to_workflow(flow))
    workers = {c: FWorker(name=f"w-{c}", category=[c]) for c in ("local", "cpu", "gpu")}
    for _ in range(10):  # each worker pulls only its category, in turns, until nothing is left
        for worker in workers.values():
            rapidfire(lp, worker, m_dir=str(tmp_path), strm_lvl="ERROR")
        if not lp.get_fw_ids({"state": {"$in": ["READY", "WAITING", "RESERVED", "RUNNING"]}}):
            break
    fws = [lp.get_fw_by_id(i) for i in lp.get_fw_ids()]
    assert all(fw.state == "COMPLETED" for fw in fws), [(fw.name, fw.state) for fw in fws]
    names = sorted(fw.name for fw in fws)
    assert "decide it1" in names and "static 1-1" in names  # iteration 1 was added at run time
    for fw in fws:
        expected = ROUTING.category(_role(fw.name))
        assert fw.spec["_category"] == expected, fw.name
        launch = fw.launches[-1]
        assert launch.fworker.category == [expected], fw.name  # run by the worker of that category
        if fw.name != "store_inputs":
            assert launch.action.stored_data["slurm_partition"] == "somewhere"
            assert launch.action.stored_data["hostname"]
    label = next(fw for fw in fws if fw.name == "label it0")
    assert label.launches[-1].action.stored_data["mine"] == 1  # the job's own stored_data is kept
    job_store.connect()
    doc = job_store.query_one({"name": "static 1-0"})
    assert doc["output"]["category"] == "cpu"
    assert doc["metadata"][RUN_RECORD_KEY]["slurm_partition"] == "somewhere"
    assert doc["metadata"]["fw_id"] > 0


# --------------------------------------------------------------------------- submit's checks


def _worker_files(folder, categories=("cpu", "gpu"), partition=True):
    files = {}
    for c in categories:
        fw = folder / f"my_fworker_{c}.yaml"
        fw.write_text(yaml.safe_dump({"name": f"{c} worker", "category": [c]}))
        qa = {"_fw_name": "CommonAdapter", "_fw_q_type": "SLURM", "rocket_launch": f"rlaunch -w {fw} singleshot",
              "nodes": 1, "ntasks": 1, "walltime": "00:10:00"}
        if partition:
            qa["queue"] = f"part-{c}"
        (folder / f"my_qadapter_{c}.yaml").write_text(yaml.safe_dump(qa))
        files[c] = fw
    return files


def test_submit_adds_a_routed_workflow(tmp_path, mock_launchpad, job_store):
    _worker_files(tmp_path)
    result = submit_campaign(CONFIG, mock_launchpad, job_store=job_store)
    assert result.submitted and result.name_checked and result.n_fireworks == 9
    assert result.launchpad == "mongo.example.org:27017"
    assert result.categories["train it0"] == "gpu" and result.categories["decide it0"] == "cpu"
    assert result.partitions == {"cpu": ["part-cpu"], "gpu": ["part-gpu"]}
    assert not result.warnings
    assert sorted(result.fw_ids) == sorted(result.categories) and len(set(result.fw_ids.values())) == 9


def test_submit_refuses_an_existing_campaign(tmp_path, mock_launchpad, job_store):
    with CampaignDB.from_job_store(job_store) as db:
        db.campaigns.update({"name": "cu-route", "status": "running", "config_fingerprint": "x"}, key="name")
    with pytest.raises(SubmitError, match="already exists"):
        submit_campaign(CONFIG, mock_launchpad, job_store=job_store, fworker_files=[], qadapter_files=[])


def test_bad_launchpad_files(tmp_path, monkeypatch):
    with pytest.raises(LaunchPadError, match="not found.*nope.yaml"):
        find_launchpad_file(tmp_path / "nope.yaml")
    monkeypatch.setenv("LAUNCHPAD_LOC", str(tmp_path / "env.yaml"))
    with pytest.raises(LaunchPadError, match="LAUNCHPAD_LOC"):
        find_launchpad_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("host: [unclosed\n")
    with pytest.raises(LaunchPadError, match="not valid YAML"):
        load_launchpad(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(LaunchPadError, match="expected a mapping"):
        load_launchpad(bad)
    bad.write_text("host: h\nnot_an_option: 1\n")
    with pytest.raises(LaunchPadError, match="bad.yaml"):
        load_launchpad(bad)
    bad.write_text("host: h\n")
    bad.chmod(0)
    if not os.access(bad, os.R_OK):  # (root reads anything)
        with pytest.raises(LaunchPadError, match="not readable"):
            find_launchpad_file(bad)
    folder = tmp_path / "a_folder.yaml"
    folder.mkdir()
    with pytest.raises(LaunchPadError, match="not found"):
        find_launchpad_file(folder)


def test_launchpad_file_without_a_database_name_is_one_line(tmp_path):
    """A LaunchPad file without ``name:`` would silently use FireWorks' ``fireworks`` database (issue 24)."""
    path = tmp_path / "lp.yaml"
    path.write_text("host: mongo.example.org\nport: 27017\n")
    for load in (load_launchpad, load_launchpad_spec):
        with pytest.raises((LaunchPadError, ConfigError), match=r"lp\.yaml: name: .*names no database") as err:
            load(path)
        assert "\n" not in str(err.value)
    path.write_text("")
    with pytest.raises(LaunchPadError, match="empty"):
        load_launchpad(path)
    path.write_text("host: h\nname: fw\n  port: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_launchpad_spec(path)
    spec = {"host": uri_with_secret("db.example.org:27018") + "fw", "uri_mode": True, "name": "fw"}
    assert launchpad_host(spec) == "db.example.org:27018"
    assert launchpad_host({"host": "h", "name": "fw"}) == "h:27017"
    bad = tmp_path / "routing.yaml"
    bad.write_text("train: [gpu\n")
    with pytest.raises(RoutingError, match=r"routing\.yaml: not valid YAML at line"):
        load_routing(bad)


def test_unreachable_mongo_fails_fast_naming_the_host(tmp_path, job_store):
    path = tmp_path / "lp.yaml"
    path.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": 9, "name": "fw",
                                    "username": "me", "password": SECRET}))
    start = time.perf_counter()
    with pytest.raises(LaunchPadError) as err:
        load_launchpad(path, timeout_ms=1000)
    assert time.perf_counter() - start < 6
    assert "127.0.0.1:9" in str(err.value) and SECRET not in str(err.value)
    uri = tmp_path / "uri.yaml"
    uri.write_text(yaml.safe_dump({"host": uri_with_secret("127.0.0.1:9") + "fw", "uri_mode": True, "name": "fw"}))
    start = time.perf_counter()
    with pytest.raises(LaunchPadError, match=r"127\.0\.0\.1:9") as err:
        submit_campaign(CONFIG, uri, job_store=job_store, fworker_files=[], qadapter_files=[], timeout_ms=1000)
    assert time.perf_counter() - start < 6 and SECRET not in str(err.value)


def test_qadapter_without_partition_is_an_error(tmp_path, mock_launchpad, job_store):
    _worker_files(tmp_path, partition=False)
    with pytest.raises(SubmitError, match="my_qadapter_cpu.yaml has no partition"):
        submit_campaign(CONFIG, mock_launchpad, job_store=job_store)
    qa = tmp_path / "my_qadapter_cpu.yaml"
    data = yaml.safe_load(qa.read_text())
    qa.write_text(yaml.safe_dump({**data, "partition": "cpu"}))
    with pytest.raises(SubmitError, match="takes the partition from 'queue'"):
        read_qadapter(qa)


def test_unhandled_category_warns(tmp_path, mock_launchpad, job_store, caplog):
    _worker_files(tmp_path, categories=("cpu",))
    with caplog.at_level(logging.WARNING, logger="almat.launch.submit"):
        result = submit_campaign(CONFIG, mock_launchpad, job_store=job_store, dry_run=True)
    assert not result.submitted and not result.fw_ids
    (w,) = [w for w in result.warnings if "handled by no fworker" in w]
    assert "'gpu'" in w and "train, explore" in w
    assert any("handled by no fworker" in r.getMessage() for r in caplog.records)
    partitions, warnings = check_workers(Routing(), [], [])
    assert any("no fworker files" in w for w in warnings)


def test_submit_returns_a_summary(tmp_path, mock_launchpad, monkeypatch):
    _worker_files(tmp_path)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(CONFIG))
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump({"decide": "cpu", "oracle": "gpu"}))
    out = submit_campaign(campaign, mock_launchpad, routing, dry_run=True).as_dict()
    assert out["campaign"] == "cu-route" and out["categories"]["decide it0"] == "cpu"
    assert out["categories"]["label initial"] == "cpu"
    with pytest.raises(SubmitError, match="campaign file not found"):
        submit_campaign(tmp_path / "none.yaml", mock_launchpad)
    routing.write_text(yaml.safe_dump({"oracles": "gpu"}))
    with pytest.raises(SubmitError, match="oracles"):
        submit_campaign(campaign, mock_launchpad, routing)


def test_config_templates_are_consistent(tmp_path, monkeypatch):
    from jobflow import JobStore

    root = Path(__file__).resolve().parents[2] / "config" / "fireworks"
    home = tmp_path / "home"
    (home / ".fireworks").mkdir(parents=True)
    for f in root.glob("my_fworker_*.yaml"):
        (home / ".fireworks" / f.name).write_text(f.read_text())
    monkeypatch.setenv("HOME", str(home))
    routing = load_routing(root / "routing.yaml")
    assert routing == Routing()
    partitions, warnings = check_workers(routing, sorted(root.glob("my_fworker_*.yaml")),
                                         sorted(root.glob("my_qadapter_*.yaml")))
    assert partitions == {"cpu": ["cpu"], "gpu": ["gpu"]} and not warnings
    gpu = read_qadapter(root / "my_qadapter_gpu.yaml")
    assert gpu.settings["gres"] == "gpu:1" and "singleshot" in gpu.rocket_launch
    spec = yaml.safe_load((root / "jobflow.yaml").read_text())["JOB_STORE"]
    store = JobStore.from_dict_spec(spec)
    assert type(store.docs_store).__name__ == "MongoStore"
    assert type(store.additional_stores["data"]).__name__ == "GridFSStore"
    lp = yaml.safe_load((root / "my_launchpad.yaml").read_text())
    assert lp["uri_mode"] and lp["name"]


def test_jobflow_config_names_almat_store(tmp_path, settings):
    from jobflow import JobStore

    from almat.launch.submit import store_location, write_jobflow_config

    path = write_jobflow_config(tmp_path / "jobflow.yaml", settings)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = JobStore.from_dict(yaml.safe_load(path.read_text())["JOB_STORE"])
    assert store_location(store) == store_location(build_job_store(settings))
    assert "data" in store.additional_stores


BOOKKEEPING = {"register campaign": "cpu", "label initial": "cpu", "label it0": "cpu", "decide it0": "cpu"}


@pytest.mark.parametrize("workflow, expected", [
    ("cu_pool_emt.yaml", {**BOOKKEEPING, "label held-out": "cpu", "start pool": "cpu", "train it0": "gpu",
                          "explore it0": "gpu"}),
    ("cu_nft_emt.yaml", {**BOOKKEEPING, "initial structures": "cpu", "train it0": "gpu", "explore it0": "gpu"}),
])
def test_pool_and_nft_campaigns_are_submitted_and_routed(tmp_path, mock_launchpad, job_store, workflow, expected):
    """Every campaign kind goes to FireWorks the same way: the committee's jobs on gpu, the rest on cpu."""
    from almat.campaign import load_config
    from almat.schemas import CampaignDoc

    path = Path(__file__).resolve().parents[2] / "workflows" / workflow
    _worker_files(tmp_path)
    result = submit_campaign(path, mock_launchpad, job_store=job_store)
    assert result.submitted and result.name_checked and not result.warnings
    assert {n: c for n, c in result.categories.items() if n != "store_inputs"} == expected
    # the name is checked against the store as for an MD campaign: a stored campaign of that name is refused
    name = load_config(path).name
    with CampaignDB.from_job_store(job_store).connect() as db:
        db.upsert("campaigns", [CampaignDoc(name=name, config={}, config_fingerprint="x")])
    with pytest.raises(SubmitError, match="already exists"):
        submit_campaign(path, mock_launchpad, job_store=job_store)
    with pytest.raises(SubmitError, match="different configuration"):
        submit_campaign(path, mock_launchpad, job_store=job_store, resume=True)
