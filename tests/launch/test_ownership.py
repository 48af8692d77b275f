"""Who runs a submitted campaign: its jobs' heartbeat, its state from the LaunchPad (running, queued,
stalled, lost, failed), and a second submit refused while its jobs are live.

No SLURM here: the state rules on hand-made FireWorks documents at fixed times, FireWorks in-process on
a mongomock LaunchPad, and ``almat status`` through the CLI. ``test_concurrent_cluster`` kills a real
worker and recovers it with the command ``almat status`` prints.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import socket
import threading
import time
from datetime import datetime, timedelta

import pytest
import yaml
from jobflow import CURRENT_JOB, Job, run_locally
from test_routing import CONFIG, ROUTING, _worker_files, fake_campaign

from almat.campaign.lease import (
    STALE_S,
    STALL_S,
    LaunchPadView,
    campaign_state,
    describe,
    fireworks_state,
    holder_alive,
    lease_store,
    lost_fireworks,
)
from almat.launch import state as launch_state
from almat.launch.routing import apply_routing
from almat.launch.state import campaign_view, describe_live, live_jobs
from almat.launch.submit import SubmitError, load_launchpad, submit_campaign
from almat.stores import CampaignDB, heartbeat, sibling_store
from almat.stores.heartbeat import CAMPAIGN_KEY, job_heartbeat

NOW = datetime(2025, 3, 1, 12, 0, 0)
FILE = "/home/me/fw/my_launchpad.yaml"
HOUR = timedelta(hours=1)


def fw(fw_id: int, state: str, updated: datetime = NOW, category: str = "cpu", name: str | None = None) -> dict:
    return {"fw_id": fw_id, "name": name or f"job {fw_id}", "state": state, "updated_on": updated.isoformat(),
            "spec": {"_category": category}}


def launch(fw_id: int, ping: datetime, host: str = "node7") -> dict:
    """A RUNNING launch as FireWorks stores it: ISO times in its state history, the ping in ``updated_on``."""
    return {"launch_id": 100 + fw_id, "fw_id": fw_id, "host": host, "state": "RUNNING", "state_history": [
        {"state": "RESERVED", "created_on": (ping - 2 * HOUR).isoformat(), "updated_on": (ping - 2 * HOUR).isoformat()},
        {"state": "RUNNING", "created_on": (ping - HOUR).isoformat(), "updated_on": ping.isoformat()}]}


def view(fws: list[dict], launches: list[dict] = (), expiration_s: float = 4 * 3600) -> LaunchPadView:
    return LaunchPadView("mongo.example.org:27017", FILE, fws, list(launches), expiration_s)


def beat(at: datetime, event: str = "beat", fw_id: int = 3) -> dict:
    return {"campaign": "c", "manager": "fireworks", "host": "node2", "fw_id": fw_id, "job": "train it1",
            "job_uuid": "u", "event": event, "heartbeat_at": at}


def command(why: str) -> list[str]:
    """The first command in backquotes of a stop reason, as the shell splits it."""
    return shlex.split(re.search(r"`([^`]+)`", why).group(1))


# --------------------------------------------------------------------------- the rules


def test_running_while_a_job_runs_and_pings():
    fws = [fw(1, "COMPLETED"), fw(2, "RUNNING"), fw(3, "WAITING")]
    assert fireworks_state(beat(NOW - 2 * HOUR), view(fws, [launch(2, NOW - HOUR)]), NOW) == ("running", None)
    # between two jobs: nothing RUNNING yet, but the heartbeat is fresh
    fws = [fw(1, "COMPLETED"), fw(2, "READY", updated=NOW - timedelta(minutes=30))]
    assert fireworks_state(beat(NOW - timedelta(seconds=20), "end"), view(fws), NOW) == ("running", None)


def test_lost_when_the_running_job_stopped_pinging_with_the_command_that_recovers_it():
    fws = [fw(1, "COMPLETED"), fw(7, "RUNNING", name="oracle it0 #1"), fw(8, "RUNNING"), fw(9, "WAITING")]
    launches = [launch(7, NOW - 5 * HOUR), launch(8, NOW - timedelta(minutes=5), host="node8")]
    # another job of the campaign runs and beats: the lost one still needs recovering
    state, why = fireworks_state(beat(NOW), view(fws, launches), NOW)
    assert state == "lost"
    assert "1 job(s) RUNNING" in why and "fw_id 7 'oracle it0 #1'" in why and "on node7" in why
    assert "over 4.0 h ago" in why and "fw_id 8" not in why
    argv = command(why)
    assert argv[:7] == ["lpad", "-l", FILE, "detect_lostruns", "--time", "14400", "--rerun"]
    assert argv[7] == "-q" and ast.literal_eval(argv[8]) == {"fw_id": {"$in": [7]}}  # as lpad parses -q
    # FireWorks' expiration where it is read decides: 5 h without a ping is lost for 3 h, not for 6 h
    assert fireworks_state(None, view(fws, launches, expiration_s=6 * 3600), NOW)[0] == "running"
    assert [f["fw_id"] for f in lost_fireworks(view(fws, launches, expiration_s=3 * 3600), NOW)] == [7]


def test_queued_then_stalled_when_no_worker_takes_the_ready_jobs():
    old = NOW - 2 * HOUR
    fws = [fw(1, "COMPLETED"), fw(4, "READY", NOW - timedelta(minutes=4), "gpu", "train it2"), fw(5, "WAITING")]
    state, why = fireworks_state(beat(old, "end"), view(fws), NOW)
    assert state == "queued" and "1 job(s) READY/RESERVED for 4 min" in why and "category gpu" in why
    fws[1] = fw(4, "READY", NOW - timedelta(seconds=STALL_S + 60), "gpu", "train it2")
    state, why = fireworks_state(beat(old, "end"), view(fws), NOW)
    assert state == "stalled" and "for 11 min, none RUNNING" in why and "fw_id 4 'train it2'" in why
    assert "start workers for category gpu" in why
    fws.append(fw(6, "RESERVED", NOW - 3 * HOUR, "cpu"))
    assert "2 job(s)" in fireworks_state(None, view(fws), NOW)[1]
    # the last job ended a minute ago: queued, not stalled, whatever the READY jobs' age
    assert fireworks_state(beat(NOW - timedelta(seconds=STALE_S + 10), "end"), view(fws), NOW)[0] == "queued"


def test_failed_when_fizzled_jobs_leave_nothing_to_run():
    fws = [fw(1, "COMPLETED"), fw(5, "FIZZLED", name="train it1"), fw(6, "WAITING"), fw(3, "FIZZLED")]
    state, why = fireworks_state(beat(NOW - HOUR, "failed"), view(fws), NOW)
    assert state == "failed" and "2 job(s) FIZZLED" in why and "fw_id 3 'job 3', fw_id 5 'train it1'" in why
    assert command(why) == ["lpad", "-l", FILE, "get_fws", "-i", "3", "-d", "all"]
    assert why.rsplit("`", 2)[-2] == f"lpad -l {FILE} rerun_fws -i 3,5"
    # defused (or paused) with nothing to run: stalled, saying what there is
    state, why = fireworks_state(None, view([fw(1, "COMPLETED"), fw(2, "DEFUSED")]), NOW)
    assert state == "stalled" and "(1 COMPLETED, 1 DEFUSED)" in why


def test_without_a_launchpad_the_heartbeat_alone_judges_and_says_so():
    why_none = "no LaunchPad file here: set LAUNCHPAD_LOC"
    state, why = fireworks_state(beat(NOW - timedelta(seconds=40)), why_none, NOW)
    assert state == "running" and "heartbeat alone" in why and why_none in why
    assert "fw_id 3 'train it1' on node2, beat at 2025-03-01 11:59:20 UTC" in why
    state, why = fireworks_state(beat(NOW - HOUR), why_none, NOW)
    assert state == "stalled" and why.startswith("no heartbeat for 60 min") and why_none in why
    # a LaunchPad that knows nothing of the campaign (another one) is no better
    state, why = fireworks_state(beat(NOW - HOUR), view([]), NOW)
    assert state == "stalled" and "the LaunchPad at mongo.example.org:27017 has no workflow of it" in why


def test_a_fireworks_heartbeat_is_alive_while_fresh_and_never_a_pid():
    lease = {**beat(NOW - timedelta(seconds=STALE_S - 5)), "host": socket.gethostname(), "pid": 1}
    assert holder_alive(lease, NOW) and not holder_alive(lease, NOW + timedelta(seconds=10))
    assert describe(lease).startswith("FireWorks job fw_id 3 'train it1' on ")


def test_campaign_state_reads_the_heartbeat_and_the_launchpad(db):
    db.campaigns.update({"name": "c", "status": "running", "stop_reason": None}, key="name")
    doc = db.campaigns.query_one({"name": "c"})
    lost = view([fw(7, "RUNNING")], [launch(7, NOW - 5 * HOUR)])
    asked: list[str] = []

    def launchpad(name):
        asked.append(name)
        return lost

    # no lease at all: a submitted campaign the LaunchPad knows, or the stored status
    assert campaign_state(db, doc, launchpad, NOW)[0] == "lost" and asked == ["c"]
    assert campaign_state(db, doc, lambda name: "no LaunchPad file here", NOW) == ("running", None)
    assert campaign_state(db, doc, None, NOW) == ("running", None)
    leases = lease_store(db)
    leases.connect()
    leases.update(beat(NOW - timedelta(seconds=30)), key="campaign")
    assert campaign_state(db, doc, None, NOW)[0] == "running"  # the heartbeat alone
    assert campaign_state(db, doc, launchpad, NOW)[0] == "lost"
    db.campaigns.update({"name": "c", "status": "converged", "stop_reason": "done"}, key="name")
    assert campaign_state(db, db.campaigns.query_one({"name": "c"}), launchpad, NOW) == ("converged", "done")
    leases.close()


# --------------------------------------------------------------------------- FireWorks documents


@pytest.fixture
def launchpad_file(tmp_path, monkeypatch):
    """A LaunchPad file on an in-process mongomock that every LaunchPad of the test shares."""
    import mongomock
    from fireworks.core import launchpad as lp_module
    from mongomock.store import ServerStore

    server = ServerStore()
    monkeypatch.setattr(lp_module, "MongoClient", lambda *a, **k: mongomock.MongoClient(*a, _store=server, **k))
    monkeypatch.setattr(lp_module, "GRIDFS_FALLBACK_COLLECTION", None)
    path = tmp_path / "fw" / "my_launchpad.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"host": "mongo.example.org", "port": 27017, "name": "fw_test"}))
    return path


def _insert(lp, name: str, fws: list[dict], launches: list[dict]) -> None:
    lp.workflows.insert_one({"name": f"almat {name}", "nodes": [f["fw_id"] for f in fws],
                             "metadata": {"almat_campaign": name}})
    for f in fws:
        lp.fireworks.insert_one({**f, "launches": [la["launch_id"] for la in launches if la["fw_id"] == f["fw_id"]]})
    for la in launches:
        lp.launches.insert_one(dict(la))


def test_lost_is_what_lpad_detect_lostruns_reports(launchpad_file):
    """The same documents through FireWorks' own ``detect_lostruns`` (at the real time: hours apart)."""
    lp = load_launchpad(launchpad_file)
    now = datetime.utcnow()
    fws = [fw(1, "RUNNING"), fw(2, "RUNNING"), fw(3, "COMPLETED"), fw(4, "READY")]
    launches = [launch(1, now - 3 * HOUR), launch(2, now - timedelta(minutes=10))]
    _insert(lp, "c", fws, launches)
    _insert(lp, "other", [fw(11, "RUNNING")], [launch(11, now - 3 * HOUR)])  # another campaign's
    got = campaign_view(lp, "c", "h", str(launchpad_file), 3600)
    assert sorted(f["fw_id"] for f in got.fireworks) == [1, 2, 3, 4] and len(got.launches) == 2
    for expiration, expected in ((3600, [1]), (4 * 3600, []), (60, [1, 2])):
        _, lost_fw_ids, _ = lp.detect_lostruns(expiration_secs=expiration, query={"fw_id": {"$in": [1, 2, 3, 4]}})
        got.expiration_s = expiration
        assert sorted(f["fw_id"] for f in lost_fireworks(got, now)) == sorted(lost_fw_ids) == expected
    assert [f["fw_id"] for f in live_jobs(lp, "c")] == [1, 2, 4]
    assert describe_live(live_jobs(lp, "c")) == "3 live job(s) (1 READY, 2 RUNNING: fw_id 1, 2, 4)"


def test_almat_status_shows_a_lost_campaign_with_its_recover_command(launchpad_file, settings, monkeypatch):
    from typer.testing import CliRunner

    from almat.cli import app

    lp = load_launchpad(launchpad_file)
    now = datetime.utcnow()
    _insert(lp, "c", [fw(1, "COMPLETED"), fw(2, "RUNNING", name="oracle it0 #0")], [launch(2, now - 5 * HOUR)])
    with CampaignDB.from_settings(settings) as db:
        db.campaigns.update({"name": "c", "status": "running", "n_iterations": 0, "config": {"kind": "pool"}},
                            key="name")
    monkeypatch.setenv("LAUNCHPAD_LOC", str(launchpad_file))
    out = CliRunner().invoke(app, ["status", "c", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["status"] == "lost" and "fw_id 2 'oracle it0 #0'" in got["stop_reason"]
    assert command(got["stop_reason"])[:4] == ["lpad", "-l", str(launchpad_file), "detect_lostruns"]
    rows = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)
    assert [r["status"] for r in rows if r["name"] == "c"] == ["lost"]
    # without a reachable LaunchPad (and no heartbeat) the stored status stands
    monkeypatch.setenv("LAUNCHPAD_LOC", str(launchpad_file.parent / "missing.yaml"))
    assert json.loads(CliRunner().invoke(app, ["status", "c", "--json"]).output)["status"] == "running"
    assert launch_state.reader()("c") == f"LaunchPad file not found: {launchpad_file.parent / 'missing.yaml'}"


# --------------------------------------------------------------------------- the heartbeat


def _fake_job(fw_id: int | None, campaign: str | None = "c") -> Job:
    j = Job(print, name="train it1")
    if campaign is not None:
        j.metadata[CAMPAIGN_KEY] = campaign
    if fw_id is not None:
        j.metadata["fw_id"] = fw_id
    return j


@pytest.fixture
def events(monkeypatch):
    """Every heartbeat document written, in order."""
    written: list[dict] = []
    make = heartbeat.heartbeat_doc
    monkeypatch.setattr(heartbeat, "heartbeat_doc", lambda *a: written.append(make(*a)) or written[-1])
    return written


def _with_job(job: Job, store, body) -> None:
    CURRENT_JOB.job, CURRENT_JOB.store = job, store
    try:
        with job_heartbeat(sibling_store):
            body()
    finally:
        CURRENT_JOB.reset()


def test_a_submitted_job_beats_while_it_runs_and_says_how_it_ended(job_store, db, events, monkeypatch):
    monkeypatch.setattr(heartbeat, "BEAT_S", 0.02)
    job_store.connect()
    beaten = threading.Event()

    def body():  # runs until the heartbeat has beaten once (or 20 s)
        deadline = time.monotonic() + 20
        while not any(e["event"] == "beat" for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
        beaten.set()

    _with_job(_fake_job(12), job_store, body)
    assert beaten.is_set() and events[0]["event"] == "start" and events[-1]["event"] == "end"
    assert {e["event"] for e in events[1:-1]} == {"beat"}
    doc = lease_store(db)
    doc.connect()
    lease = doc.query_one({"campaign": "c"})
    assert lease["manager"] == "fireworks" and lease["fw_id"] == 12 and lease["job"] == "train it1"
    assert lease["event"] == "end" and lease["host"] == socket.gethostname()
    assert isinstance(lease["heartbeat_at"], datetime) and holder_alive(lease)

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _with_job(_fake_job(13), job_store, fails)
    assert doc.query_one({"campaign": "c"})["event"] == "failed" and events[-1]["fw_id"] == 13
    # local runs (no fw_id) and jobs of no submitted campaign write nothing
    n = len(events)
    _with_job(_fake_job(None), job_store, lambda: None)
    _with_job(_fake_job(14, campaign=None), job_store, lambda: None)
    assert len(events) == n
    doc.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore:Some jobs are not connected")
def test_every_job_of_a_submitted_campaign_beats_under_fireworks(tmp_path, monkeypatch, launchpad_file,
                                                                  job_store, db, events):
    import jobflow
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from jobflow.managers.fireworks import flow_to_workflow

    monkeypatch.setattr(jobflow.SETTINGS, "JOB_STORE", job_store)
    monkeypatch.chdir(tmp_path)
    lp = load_launchpad(launchpad_file)
    flow = fake_campaign(last=1, routing=ROUTING)
    apply_routing(flow, ROUTING)
    flow.update_metadata({CAMPAIGN_KEY: "fake"}, dynamic=True)  # what almat submit does
    lp.add_wf(flow_to_workflow(flow, metadata={"almat_campaign": "fake"}))
    for _ in range(10):
        for c in ("local", "cpu", "gpu"):
            rapidfire(lp, FWorker(name=f"w-{c}", category=[c]), m_dir=str(tmp_path), strm_lvl="ERROR")
        if not live_jobs(lp, "fake"):
            break
    fws = [lp.get_fw_by_id(i) for i in lp.get_fw_ids()]
    assert all(f.state == "COMPLETED" for f in fws)
    # the jobs added at run time (the oracle jobs, iteration 1) carry the campaign too
    assert {f.name for f in fws} >= {"static 0-0", "static 1-1", "train it1", "decide it1"}
    assert all(f.spec.get(CAMPAIGN_KEY) == "fake" for f in fws), [f.name for f in fws if CAMPAIGN_KEY not in f.spec]
    ids = {f.fw_id for f in fws if f.name != "store_inputs"}  # jobflow's own small job is no store_job
    assert {e["fw_id"] for e in events if e["event"] == "start"} == ids
    assert {e["fw_id"] for e in events if e["event"] == "end"} == ids
    leases = lease_store(db)
    leases.connect()
    assert leases.query_one({"campaign": "fake"})["event"] == "end"
    leases.close()
    # the same flow run locally beats nothing
    n = len(events)
    local = fake_campaign(last=0)
    local.update_metadata({CAMPAIGN_KEY: "local"}, dynamic=True)
    run_locally(local, store=job_store, create_folders=True, root_dir=tmp_path / "local", log=False)
    assert len(events) == n


# --------------------------------------------------------------------------- a second submit


def test_a_second_submit_is_refused_while_the_campaign_has_live_jobs(tmp_path, launchpad_file, job_store):
    _worker_files(launchpad_file.parent)
    first = submit_campaign(CONFIG, launchpad_file, job_store=job_store)
    assert first.submitted and first.n_fireworks == 9
    lp = load_launchpad(launchpad_file)
    specs = [lp.fireworks.find_one({"fw_id": i})["spec"] for i in first.fw_ids.values()]
    assert all(s[CAMPAIGN_KEY] == "cu-route" for s in specs)
    head = min(first.fw_ids.values())
    for kwargs in ({}, {"resume": True}, {"dry_run": True}):
        with pytest.raises(SubmitError) as err:
            submit_campaign(CONFIG, launchpad_file, job_store=job_store, **kwargs)
        message = str(err.value)
        assert "\n" not in message and message.startswith("campaign 'cu-route' has 9 live job(s) (")
        assert "READY" in message and "WAITING" in message and f"fw_id {head}, " in message
        assert f"defuse_wflows -i {head}`" in message and message.endswith("`almat submit --resume`")
    assert len(lp.get_fw_ids()) == 9  # nothing was added
    lp.defuse_wf(head)  # as the message says: stop them, then --resume
    second = submit_campaign(CONFIG, launchpad_file, job_store=job_store, resume=True)
    assert second.submitted and second.name_checked and min(second.fw_ids.values()) > max(first.fw_ids.values())
    with pytest.raises(SubmitError, match=r"9 live job\(s\).*defuse_wflows -i " + str(min(second.fw_ids.values()))):
        submit_campaign(CONFIG, launchpad_file, job_store=job_store, resume=True)
