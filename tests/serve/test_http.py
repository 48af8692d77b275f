"""``almat serve`` over HTTP (no browser): endpoints, read-only, bad input, the CLI command, the queue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from almat.cli import app as cli_app
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

from secret_uri import SECRET, uri_with_secret
from serve_helpers import ROOT, load_bench

bench = load_bench()


def get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A store with one synthetic campaign (3 iterations, 60 labels), served on a free port."""
    tmp = tmp_path_factory.mktemp("synthetic")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    with CampaignDB.from_settings(settings) as db:
        written = bench.fill_store(db, n_iterations=3, n_labels=60, n_models=2)
    base, server = bench.start_server(settings)
    yield base, settings, written
    server.should_exit = True


def test_pool_and_nft_pages_show_their_records(synthetic):
    from almat.schemas import CampaignDoc, NftIterationDoc, PoolIterationDoc, TestErrors

    base, settings, _ = synthetic
    pool = [PoolIterationDoc(campaign="p1", iteration=i, acquisition="committee", pool_size=100, n_labels=10 + 5 * i,
                             n_unlabelled=60 - 5 * i, test_errors=TestErrors(n_structures=30, force_rmse=0.2 / (i + 1)))
            for i in range(3)]
    unc = [[0.01 * (k + 1) / (i + 1) for k in range(20)] for i in range(2)]
    nft = [NftIterationDoc(campaign="n1", iteration=i, target_hash="t", n_target_atoms=20, atomic_uncertainties=u,
                           max_uncertainty=max(u), mean_uncertainty=sum(u) / 20, coefficient=1.0, percentile=90,
                           threshold=sorted(u)[17], cutoff=4.0, mode="sphere", n_chunks=2,
                           target_force_rmse=0.05 / (i + 1)) for i, u in enumerate(unc)]
    with CampaignDB.from_settings(settings) as db:
        db.upsert("campaigns", [CampaignDoc(name="p1", config={"kind": "pool", "target_force_rmse": 0.05},
                                            config_fingerprint="p", chemsys="Cu"),
                                CampaignDoc(name="n1", config={"kind": "nft", "convergence": {"stop_delta": 0.02}},
                                            config_fingerprint="n", chemsys="Cu")])
        db.upsert("pool_iterations", pool)
        db.upsert("nft_iterations", nft)
    try:
        p = json.loads(get(base + "/api/campaigns/p1")[1])
        assert p["pool_curve"]["force_rmse"] == [r.test_errors.force_rmse for r in pool]
        assert p["pool_curve"]["n_labels"] == [10, 15, 20] and p["target_force_rmse"] == 0.05
        n = json.loads(get(base + "/api/campaigns/n1")[1])
        assert [b["max"] for b in n["nft_boxes"]] == [r.max_uncertainty for r in nft] and n["stop_delta"] == 0.02
        assert n["nft_boxes"][0]["p50"] == pytest.approx(0.105)
        for name, chart in (("p1", 'data-chart="pool"'), ("n1", 'data-chart="nft"')):
            status, body, _ = get(f"{base}/campaigns/{name}")
            assert status == 200 and chart in body and 'id="iteration-table"' in body
        assert "0.06667" in get(base + "/campaigns/p1")[1] and "0.025" in get(base + "/campaigns/n1")[1]
    finally:
        with CampaignDB.from_settings(settings) as db:
            db.campaigns.remove_docs({"name": {"$in": ["p1", "n1"]}})
            db.pool_iterations.remove_docs({"campaign": "p1"})
            db.nft_iterations.remove_docs({"campaign": "n1"})


def _snapshot(settings) -> str:
    with CampaignDB.from_settings(settings) as db:
        return json.dumps({name: sorted(json.dumps(d, sort_keys=True, default=str) for d in store.query({}))
                           for name, store in db.all_stores().items()}, sort_keys=True)


def test_json_and_pages_hold_the_stored_values_and_never_write(synthetic):
    base, settings, written = synthetic
    before = _snapshot(settings)
    status, body, headers = get(base + "/api/campaigns/bench")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    data = json.loads(body)
    its = written["iterations"]
    assert [r["force_rmse"] for r in data["iterations"]] == [it.test_errors.force_rmse for it in its]
    assert data["calibration"]["factor"] == [it.calibration.factor for it in its]
    assert data["deviation"][1]["counts"] == its[1].deviation_histogram.counts
    n_failed = sum(not lab.ok for lab in written["labels"])
    assert data["labels"]["n_failed"] == n_failed and data["labels"]["n_ok"] == len(written["labels"]) - n_failed
    assert len(data["models"]) == 6 and data["queue"] is None
    listing = json.loads(get(base + "/api/campaigns?chemsys=Cu")[1])
    assert [c["name"] for c in listing["campaigns"]] == ["bench"] and listing["campaigns"][0]["labels"] == \
        written["campaign"].n_labels
    assert json.loads(get(base + "/api/campaigns?status=converged")[1])["campaigns"] == []
    for path in ("/", "/campaigns/bench", "/campaigns/bench?partial=1", "/api/stamp", "/api/stamp?campaign=bench",
                 "/campaigns/bench/labels.extxyz", "/static/almat.js"):
        assert get(base + path)[0] == 200, path
    assert _snapshot(settings) == before


def test_unknown_and_hostile_names_are_404s_listing_the_campaigns(synthetic):
    base, _, _ = synthetic
    for name in ('{"$ne": 1}', '{"$gt": ""}', "<script>alert(1)</script>", "bench'--", "nope"):
        status, body, _ = get(f"{base}/campaigns/{quote(name, safe='')}")
        assert status == 404 and 'href="/campaigns/bench"' in body, (name, body[-800:])
        assert "<script>alert" not in body and "&lt;script&gt;" in body or "<script>" not in name
        assert get(f"{base}/api/campaigns/{quote(name, safe='')}")[0] == 404
        assert get(f"{base}/api/stamp?campaign={quote(name, safe='')}")[0] == 404
        assert get(f"{base}/campaigns/{quote(name, safe='')}/labels.extxyz")[0] == 404


def test_the_server_imports_no_torch(synthetic):
    _, settings, _ = synthetic
    code = ("import sys, asyncio\nfrom almat.serve import create_app\nfrom almat.serve import data\n"
            "from almat.settings import AlmatSettings\nfrom almat.stores import CampaignDB\n"
            f"s = AlmatSettings(db_path={str(settings.db_path)!r})\n"
            "with CampaignDB.from_settings(s) as db:\n    data.campaign_detail(db, 'bench'); data.campaign_list(db)\n"
            "create_app(s)\nassert 'torch' not in sys.modules and 'mace' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]


def test_unreachable_mongodb_is_named_and_the_server_keeps_running(tmp_path):
    port = bench.free_port()  # nothing listens there
    settings = AlmatSettings(mongo_uri=uri_with_secret(f"127.0.0.1:{port}"), mongo_timeout_ms=300)
    base, server = bench.start_server(settings)
    try:
        for _ in range(2):
            status, body, _ = get(base + "/")
            assert status == 503 and f"127.0.0.1:{port}" in body and SECRET not in body
        status, body, _ = get(base + "/api/stamp")
        assert status == 503 and f"127.0.0.1:{port}" in json.loads(body)["error"] and SECRET not in body
        assert get(base + "/campaigns/x")[0] == 503
    finally:
        server.should_exit = True


def test_a_bad_launchpad_file_is_named_on_the_page_never_its_values(tmp_path):
    """The queue reads the LaunchPad file with ``almat.launch.launchpad`` (as ``almat submit`` does): a bad
    one is one line on the page, naming the file and what is wrong, never a value from it."""
    from almat.serve.app import Backend

    lp_file = tmp_path / "my_launchpad.yaml"
    backend = Backend(AlmatSettings(db_path=tmp_path / "db"), launchpad=lp_file)
    try:
        error = backend._queue(None, "x")["error"]
        assert error == f"cannot read the LaunchPad file: LaunchPad file not found: {lp_file}"
        lp_file.write_text(f"host: {uri_with_secret('db.example.org:27017')}\nport: 27017: 1\n")
        error = backend._queue(None, "x")["error"]
        assert f"{lp_file}: not valid YAML at line 2" in error and SECRET not in error
        lp_file.write_text(f"host: {uri_with_secret('db.example.org:27017')}\nuri_mode: true\n")
        error = backend._queue(None, "x")["error"]
        assert "name: the LaunchPad file names no database" in error and SECRET not in error
    finally:
        backend.pool.shutdown()


def test_serve_command_port_in_use_and_host_warning(monkeypatch):
    runner = CliRunner()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = runner.invoke(cli_app, ["serve", "--port", str(port)])
    assert out.exit_code == 1
    assert out.output.strip() == f"error: port {port} on 127.0.0.1 is already in use (another almat serve?); pick " \
                                 "one with --port"
    served = []
    monkeypatch.setattr("almat.cli.serve", lambda app, sock, log_level: served.append(sock.getsockname()))
    out = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert out.exit_code == 0, out.output
    assert "warning: listening on 0.0.0.0" in out.output and served and served[0][0] == "0.0.0.0"
    out = runner.invoke(cli_app, ["serve", "--port", "0"])
    assert "warning" not in out.output and "http://127.0.0.1:" in out.output


@pytest.mark.mongo
def test_queue_shows_fireworks_by_state_and_category(tmp_path, mongo_uri, new_mongo_database, monkeypatch):
    """FireWorks on the MongoDB stand-in: one COMPLETED (cpu), one FIZZLED (gpu) with its error, one READY.

    The states are set as FireWorks' Rocket sets them (checkout, then complete_launch with the action)."""
    import traceback

    import yaml
    from fireworks import Firework, FWAction, FWorker, LaunchPad, PyTask, Workflow

    settings = AlmatSettings(db_path=tmp_path / "db")
    with CampaignDB.from_settings(settings) as db:
        bench.fill_store(db, n_iterations=1, n_labels=10, n_models=1)
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump({"host": mongo_uri, "uri_mode": True, "name": new_mongo_database()}))
    lp = LaunchPad.from_file(str(lp_file))
    lp._restart_ids(1, 1)  # a fresh database: the id counters, as `lpad reset` makes them (no index tune-up)
    fws = [Firework(PyTask(func="math.sqrt", args=[4.0]), name="label ok", spec={"_category": "cpu"}),
           Firework(PyTask(func="math.sqrt", args=[-1.0]), name="train it0", spec={"_category": "gpu"}),
           Firework(PyTask(func="math.sqrt", args=[9.0]), name="label later", spec={"_category": "cpu"})]
    lp.add_wf(Workflow(fws, name="almat bench", metadata={"almat_campaign": "bench"}))
    lp.add_wf(Workflow([Firework(PyTask(func="math.sqrt", args=[1.0]), name="other")], metadata={
        "almat_campaign": "other"}))
    _, launch = lp.checkout_fw(FWorker(category="cpu"), str(tmp_path))
    lp.complete_launch(launch, FWAction(), "COMPLETED")
    _, launch = lp.checkout_fw(FWorker(category="gpu"), str(tmp_path))
    try:
        __import__("math").sqrt(-1.0)
    except ValueError:
        trace = traceback.format_exc()
    lp.complete_launch(launch, FWAction(stored_data={"_message": "runtime error during task", "_exception": {
        "_stacktrace": trace, "_details": None}}), "FIZZLED")
    monkeypatch.setenv("LAUNCHPAD_LOC", str(lp_file))
    base, server = bench.start_server(settings)
    try:
        data = json.loads(get(base + "/api/campaigns/bench")[1])["queue"]
        page = get(base + "/campaigns/bench")[1]
    finally:
        server.should_exit = True
    assert data["n_fireworks"] == 3 and data["categories"] == ["cpu", "gpu"]
    table = {r["state"]: r for r in data["table"]}
    assert table["COMPLETED"]["cpu"] == 1 and table["READY"]["cpu"] == 1 and table["FIZZLED"]["gpu"] == 1
    assert table["RUNNING"]["total"] == 0
    (fizzled,) = data["fizzled"]
    assert fizzled["name"] == "train it0" and "math domain error" in fizzled["error"]
    assert "math domain error" in page and 'data-state="FIZZLED"' in page
    host = mongo_uri.split("@")[-1].split("/")[0]
    assert host in page and mongo_uri.split("//")[1].split("@")[0] not in page  # host, never the credentials


def test_report_download_draws_the_last_committee_once(synthetic, monkeypatch):
    """The report download holds the parity figure of the last committee: read on the DB thread, torch and the
    prediction on the model thread, and a second download loads nothing (a stand-in committee: the synthetic
    models have no weights)."""
    import threading

    import numpy as np

    from almat.learner.committee import Committee

    base, _, written = synthetic
    loads, predicted_on = [], []

    class Stand:
        def predict(self, atoms_list):
            predicted_on.append(threading.current_thread().name)
            return type("P", (), {"mean_forces": lambda _, i: np.full((len(atoms_list[i]), 3), 0.1)})()

    def from_store(cls, db, model_ids, device="cpu"):
        loads.append((threading.current_thread().name, list(model_ids)))
        return Stand()

    monkeypatch.setattr(Committee, "from_store", classmethod(from_store))
    last = written["iterations"][-1]
    for _ in range(2):
        status, page, headers = get(base + "/campaigns/bench/report.html")
        assert status == 200 and "attachment" in headers["content-disposition"]
        assert '<figure id="parity">' in page and f"committee of iteration {last.iteration}" in page
    assert loads == [("almat-serve-db_0", last.model_ids)]  # once, on the DB thread
    assert predicted_on == ["almat-serve-models_0"]
