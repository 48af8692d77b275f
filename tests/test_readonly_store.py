"""Readers never write: status, export, report, serve and the query API on a store the user may only read,
and one line for a reader who runs, imports or initialises.

- The embedded store opened read-only (SQLite ``mode=ro``: every write raises), in the default suite.
- MongoDB (``mongo`` marker): a user created with only the ``read`` role. The stand-in
  (``scripts/mongo/start.sh``) has ``createUser`` and refuses a reader's writes as MongoDB does
  (``Unauthorized``, code 13): mongoeco itself checks no roles, ``scripts/mongo/server.py`` adds that.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

import almat.stores.sqlite as sqlite_module
from almat.cli import app
from almat.query import query_labels
from almat.settings import AlmatSettings
from almat.stores import CAMPAIGN_COLLECTIONS, CampaignDB, ReadOnlyStoreError
from project_module import load_module

runner = CliRunner()
TINY = {"name": "ro-run", "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}}],
        "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 2}}}


def _bench():
    return load_module("benchmarks/serve_load.py")


def _fill(settings: AlmatSettings) -> dict:
    """One synthetic campaign (2 iterations, 30 labels), written and indexed by a user who may write."""
    with CampaignDB.from_settings(settings).connect(indexes=True) as db:
        return _bench().fill_store(db, n_iterations=2, n_labels=30, n_models=2)


def _one_line_error(out) -> str:
    """The command's error line: its last line, and its only one (``almat run`` prints its header first)."""
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum("error" in line.lower() for line in lines) == 1, out.output
    assert "Traceback" not in out.output
    return lines[-1]


def _readers_work(settings: AlmatSettings, written: dict, tmp_path: Path) -> None:
    """Every reader on ``settings`` (a user who may only read) sees what was written."""
    n_ok = sum(lab.ok for lab in written["labels"])
    out = runner.invoke(app, ["status", "--json"])
    assert out.exit_code == 0, out.output
    assert [c["name"] for c in json.loads(out.output)] == ["bench"]
    out = runner.invoke(app, ["status", "bench", "--json"])
    assert out.exit_code == 0 and len(json.loads(out.output)["iterations"]) == 2, out.output
    out = runner.invoke(app, ["export", str(tmp_path / "out.xyz"), "-c", "bench"])
    assert out.exit_code == 0 and f"{n_ok} labels written" in out.output, out.output
    out = runner.invoke(app, ["report", "bench", "-o", str(tmp_path / "report")])
    assert out.exit_code == 0 and (tmp_path / "report" / "report.html").is_file(), out.output
    with CampaignDB.from_settings(settings) as db:
        q = query_labels(db, campaign="bench")
        assert q.count() == n_ok and len(q.ids()) == n_ok
    base, server = _bench().start_server(settings)
    try:
        for path in ("/", "/campaigns/bench", "/api/campaigns/bench", "/api/stamp"):
            with urllib.request.urlopen(base + path, timeout=60) as r:
                assert r.status == 200, path
        with urllib.request.urlopen(base + "/api/campaigns/bench", timeout=60) as r:
            assert len(json.loads(r.read())["iterations"]) == 2
    finally:
        server.should_exit = True


def _writers_refused(config: Path, export: Path) -> None:
    """A reader who runs a campaign, imports labels or creates the indexes gets one line."""
    for args in (["run", str(config)], ["import", str(export)], ["db", "init"]):
        line = _one_line_error(runner.invoke(app, args))
        assert "is read-only for this user: a user with write access must run campaigns" in line, (args, line)


class _ReadOnlySqlite:
    """The ``sqlite3`` module as almat's store sees it, with every file opened read-only (``mode=ro``)."""

    def __getattr__(self, name):
        return getattr(sqlite3, name)

    @staticmethod
    def connect(path, **kwargs):
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, **kwargs)


def test_readers_never_write_to_the_embedded_store(tmp_path, monkeypatch):
    settings = AlmatSettings(db_path=tmp_path / "almat_db", run_dir=tmp_path / "almat_runs")
    written = _fill(settings)
    out = runner.invoke(app, ["export", str(tmp_path / "all.jsonl"), "-c", "bench"])
    assert out.exit_code == 0, out.output
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(TINY))
    monkeypatch.setattr(sqlite_module, "sqlite3", _ReadOnlySqlite())
    with pytest.raises(sqlite_module.StoreError, match="read-only"):  # the store does refuse writes now
        CampaignDB.from_settings(settings).connect().labels.update({"label_id": "x"}, key="label_id")
    _readers_work(settings, written, tmp_path)
    _writers_refused(config, tmp_path / "all.jsonl")


def test_a_collection_never_written_reads_as_empty_on_a_read_only_file(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    sqlite_module.SQLiteStore("written", path).update({"a": 1}, key="a")
    monkeypatch.setattr(sqlite_module, "sqlite3", _ReadOnlySqlite())
    fresh = sqlite_module.SQLiteStore("never_written", path)
    assert fresh.count() == 0 and list(fresh.query({"a": 1})) == [] and fresh.distinct("a") == []
    assert sqlite_module.SQLiteStore("written", path).query_one({"a": 1}, properties=["a"]) == {"a": 1}


# --------------------------------------------------------------------------- a MongoDB user with the read role


@pytest.fixture
def read_only_user(mongo_uri, new_mongo_database):
    """(settings of a user who may write, settings of a user with only the ``read`` role) on a fresh database."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    database, name, password = new_mongo_database(), f"reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        admin.admin.command("createUser", name, pwd=password, roles=[{"role": "read", "db": database}])
    except OperationFailure as exc:
        admin.close()
        pytest.skip(f"the test server's user may not create users: {exc.details.get('errmsg', exc)}")
    parts = urlsplit(mongo_uri)
    reader = urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.netloc.rsplit('@', 1)[-1]}",
                                       query="authSource=admin"))
    yield AlmatSettings(mongo_uri=mongo_uri, database=database), AlmatSettings(mongo_uri=reader, database=database)
    admin.admin.command("dropUser", name)
    admin.close()


@pytest.mark.mongo
def test_a_mongodb_user_with_the_read_role(read_only_user, tmp_path, monkeypatch):
    writer, reader = read_only_user
    written = _fill(writer)
    monkeypatch.setenv("ALMAT_DATABASE", writer.database)
    monkeypatch.setenv("ALMAT_MONGO_URI", writer.mongo_uri.get_secret_value())
    out = runner.invoke(app, ["export", str(tmp_path / "all.jsonl"), "-c", "bench"])
    assert out.exit_code == 0, out.output
    with pytest.raises(ReadOnlyStoreError, match=r"^MongoDB at 127\.0\.0\.1:\d+ \[" if "127.0.0.1" in
                       writer.mongo_host else "MongoDB at"):
        CampaignDB.from_settings(reader).connect(indexes=True)
    monkeypatch.setenv("ALMAT_MONGO_URI", reader.mongo_uri.get_secret_value())
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(TINY))
    _readers_work(reader, written, tmp_path)
    _writers_refused(config, tmp_path / "all.jsonl")
    monkeypatch.setenv("ALMAT_MONGO_URI", writer.mongo_uri.get_secret_value())
    out = runner.invoke(app, ["db", "init"])
    fields = sum(len(f) for _, f in CAMPAIGN_COLLECTIONS.values())  # 39 fields of 8 collections, the ledger's too
    assert out.exit_code == 0 and f"indexes ready: {fields} fields of {len(CAMPAIGN_COLLECTIONS)} collections" in \
        out.output, out.output
