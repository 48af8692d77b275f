import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta

import mongomock_ng as mongomock
import numpy as np
import pytest
from ase.build import bulk
from secret_uri import SECRET, uri_with_secret
from jobflow import Flow, job, run_locally
from maggma.stores import GridFSStore, MongoStore
from mongomock_ng.filtering import filter_applies
from typer.testing import CliRunner

from almat.schemas import CampaignDoc, LabelDoc, to_structure
from almat.settings import AlmatSettings
from almat.stores import CampaignDB, build_job_store, check_connection, get_blob, put_blob, sibling_store
from almat.stores.sqlite import SQLiteStore, StoreError


def test_embedded_job_store_is_one_sqlite_file(job_store, settings):
    assert isinstance(job_store.docs_store, SQLiteStore) and isinstance(job_store.additional_stores["data"], SQLiteStore)
    assert job_store.docs_store.database_path == str((settings.db_path / "almat.sqlite").resolve())
    assert settings.describe().startswith("embedded SQLite store at ")


def _labels(n: int, campaign: str = "c") -> list[dict]:
    """Real label documents: Cu8 and Cu4Au4 cells (elements arrays), EMT-like numbers, dates."""
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        if i % 2:
            atoms.symbols[::2] = "Au"
        atoms.rattle(0.05, seed=i)
        label = LabelDoc(structure=to_structure(atoms), oracle="emt", oracle_fingerprint=f"fp{i % 3}", energy=-1.0 * i,
                         forces=rng.normal(size=(len(atoms), 3)).tolist(), campaign=campaign, iteration=i % 4,
                         created_at=datetime(2025, 1, 1) + timedelta(hours=i), reused_from="x" if i % 5 == 0 else None)
        docs.append(label.to_store())
    return docs


CRITERIA = [
    {}, {"elements": "Au"}, {"elements": {"$all": ["Au", "Cu"]}}, {"elements": {"$in": ["Au", "Ag"]}},
    {"elements": {"$nin": ["Au"]}}, {"elements": {"$ne": "Au"}}, {"iteration": {"$gte": 1, "$lt": 3}},
    {"iteration": {"$in": [0, 3]}}, {"reused_from": None}, {"reused_from": {"$ne": None}},
    {"reused_from": {"$exists": False}}, {"energy": {"$lte": -5}}, {"created_at": {"$gt": datetime(2025, 1, 1, 5)}},
    {"$or": [{"iteration": 0}, {"oracle_fingerprint": "fp1"}]}, {"$nor": [{"iteration": 0}]},
    {"$and": [{"elements": "Cu"}, {"formula": {"$regex": "Au"}}]}, {"structure.lattice.a": {"$gt": 7}},
    {"label_id": {"$in": []}}, {"elements": ["Au", "Cu"]}, {"natoms": 8, "status": "ok"},
]


def test_sqlite_store_matches_mongodb_semantics(tmp_path):
    docs = _labels(12)
    store = SQLiteStore("labels", tmp_path / "s.sqlite")
    store.update(docs[:6], key="label_id")  # indexes added after the first documents are backfilled
    for name in ("elements", "iteration", "reused_from", "created_at", "oracle_fingerprint", "energy", "natoms"):
        store.ensure_index(name)
    store.update(docs[6:], key="label_id")
    for criteria in CRITERIA:
        expected = [d["label_id"] for d in docs if filter_applies(criteria, d)]
        assert [d["label_id"] for d in store.query(criteria, properties=["label_id"])] == expected, criteria
        assert store.count(criteria) == len(expected), criteria
    for props in (["iteration", "created_at", "reused_from"], ["elements", "natoms"]):  # from the index; decoded
        assert list(store.query({}, properties=props)) == [{p: d[p] for p in props} for d in docs]
    plan = store.explain({"elements": "Au", "iteration": {"$gt": 0}, "formula": "CuAu"})
    assert plan["uses_index"] and plan["python_filter"] == {"formula": "CuAu"}
    assert store.count_by("elements") == {"Cu": 12, "Au": 6}
    assert store.count_by("reused_from") == {"x": 3, None: 9}
    assert sorted(store.distinct("iteration", {"elements": "Au"})) == [1, 3]
    assert [k["iteration"] for k, group in store.groupby("iteration")] == [0, 1, 2, 3]
    # sort, skip, limit (in SQL on an indexed field, in Python otherwise), projection, dates
    assert [d["iteration"] for d in store.query(sort={"iteration": -1, "energy": 1}, skip=1, limit=4)] == [3, 3, 2, 2]
    assert [d["energy"] for d in store.query({"formula": "Cu"}, sort={"wall_time": 1, "energy": -1}, limit=2)] == [0, -2]
    first = store.query_one({"label_id": docs[3]["label_id"]}, properties={"structure.lattice": 1, "created_at": 1})
    assert set(first) == {"structure", "created_at"} and first["created_at"] == datetime(2025, 1, 1, 3)
    assert LabelDoc.from_store(store.query_one({"label_id": docs[3]["label_id"]})).structure == to_structure(
        LabelDoc.from_store(docs[3]).to_atoms())
    # upsert on the key replaces; another key finds the document through the index
    store.update({**docs[0], "iteration": 9}, key="label_id")
    store.update({**docs[1], "iteration": 8}, key=["campaign", "structure_hash"])
    assert store.count() == 12 and store.count({"iteration": {"$gte": 8}}) == 2
    now = datetime.now()  # BSON keeps milliseconds: the index too, so the value read back finds its document
    store.update({**docs[2], "created_at": now}, key="label_id")
    back = store.query_one({"label_id": docs[2]["label_id"]})["created_at"]
    assert store.count({"created_at": back}) == store.count({"created_at": now}) == 1
    store.remove_docs({"elements": "Au"})
    assert store.count() == 6 and store.count({"elements": "Au"}) == 0
    # it is MSONable: the same store comes back (as sibling_store and FireWorks need)
    again = sibling_store(store, "labels")
    assert again == store and again is not store and again.count() == 6 and again.name.endswith("/labels")
    assert sibling_store(store, "other").count() == 0


def test_large_blobs_and_new_process(db, settings):
    payload = {"weights": np.random.default_rng(0).bytes(6 * 2**20), "n": 3}
    blob_id = put_blob(db.data, payload, kind="model")
    assert get_blob(db.data, blob_id) == payload
    code = ("from almat.stores import CampaignDB, get_blob; from almat.settings import AlmatSettings;"
            f"db = CampaignDB.from_settings(AlmatSettings(db_path={str(settings.db_path)!r})).connect();"
            f"print(len(get_blob(db.data, {blob_id!r})['weights']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == str(6 * 2**20)


_WRITER = """
import sys
from almat.stores.sqlite import SQLiteStore
store = SQLiteStore("c", sys.argv[1], timeout=30)
for i in range(150):
    store.update({"k": f"{sys.argv[2]}-{i}", "who": sys.argv[2], "i": i}, key="k")
    store.update({"k": "shared", "who": sys.argv[2], "i": i}, key="k")
    assert store.query_one({"k": f"{sys.argv[2]}-{i}"})["i"] == i
print("done")
"""


def test_two_processes_write_one_store_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    store = SQLiteStore("c", path)
    assert store.count() == 301 and store.count({"who": "a"}) + store.count({"who": "b"}) == 301
    assert {d["k"] for d in store.query({"k": {"$ne": "shared"}})} == {f"{w}-{i}" for w in "ab" for i in range(150)}


@job
def _add(a, b):
    return a + b


@job(data="blob")
def _make_blob(n):
    return {"blob": list(range(n)), "n": n}


def test_jobflow_run_locally_on_the_sqlite_job_store(job_store):
    first = _add(1, 2)
    second = _add(first.output, 10)
    blob = _make_blob(50_000)
    responses = run_locally(Flow([first, second, blob]), store=job_store, create_folders=False, log=False)
    assert responses[second.uuid][1].output == 13
    assert job_store.get_output(second.uuid) == 13
    assert len(job_store.get_output(blob.uuid, load=True)["blob"]) == 50_000
    assert job_store.additional_stores["data"].count({"job_uuid": blob.uuid}) == 1
    assert job_store.query_one({"uuid": first.uuid}, properties=["output"])["output"] == 3


# -- one-line errors ------------------------------------------------------------------------------------


def test_store_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match=r"is a file: point ALMAT_DB_PATH at a folder"):
        build_job_store(AlmatSettings(db_path=tmp_path / "f"))


def test_read_only_store(tmp_path, monkeypatch):
    store = SQLiteStore("c", tmp_path / "ro" / "s.sqlite")
    store.update({"k": 1}, key="k")
    store.close()
    frozen = subprocess.run(["chattr", "+i", str(tmp_path / "ro" / "s.sqlite"), str(tmp_path / "ro")],
                            capture_output=True).returncode == 0
    if not frozen:  # no chattr here (e.g. tmpfs): open the file read-only as a non-root user would
        connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))
    try:
        with pytest.raises(StoreError, match=r"store .*s\.sqlite.* read-only"):
            SQLiteStore("c", tmp_path / "ro" / "s.sqlite").update({"k": 2}, key="k")
    finally:
        if frozen:
            subprocess.run(["chattr", "-i", str(tmp_path / "ro" / "s.sqlite"), str(tmp_path / "ro")], check=True)


def test_full_disk(tmp_path):
    store = SQLiteStore("c", tmp_path / "s.sqlite")
    store.update({"k": 0}, key="k")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError, match=r"cannot grow: the database or disk is full"):
        store.update({"k": 1, "data": b"x" * 100_000}, key="k")
    assert store.count() == 1  # the failed write left nothing behind


def test_locked_beyond_timeout(tmp_path):
    store = SQLiteStore("c", tmp_path / "s.sqlite", timeout=0.3)
    store.update({"k": 0}, key="k")
    other = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match=r"stayed locked by another process for more than 0.3 s"):
            store.update({"k": 1}, key="k")
        assert store.count() == 1  # readers are not blocked (WAL)
    finally:
        other.execute("ROLLBACK")


def test_montydb_store_is_refused_then_migrated(tmp_path):
    from maggma.stores import MontyStore

    from almat.cli import app

    folder = tmp_path / "old"
    labels = MontyStore("almat_labels", database_path=str(folder), database_name="almat", storage="sqlite")
    labels.connect()
    labels.update(_labels(5), key="label_id")
    jobs = MontyStore("jobflow_jobs", database_path=str(folder), database_name="almat", storage="sqlite")
    jobs.connect()
    jobs.update([{"uuid": "u1", "index": 1, "output": 3}], key=["uuid", "index"])
    settings = AlmatSettings(db_path=folder)
    with pytest.raises(StoreError, match=f"earlier almat version .*: almat migrate-store {folder}"):
        build_job_store(settings)
    out = CliRunner().invoke(app, ["migrate-store", str(folder)])
    assert out.exit_code == 0, out.output
    assert "almat.almat_labels: 5 documents" in out.output
    with CampaignDB.from_settings(settings) as db:
        assert db.labels.count({"elements": "Au"}) == 2 and db.labels.explain({"elements": "Au"})["uses_index"]
        db.upsert("labels", [LabelDoc.from_store(_labels(6)[5])])
        assert db.labels.count() == 6
    assert build_job_store(settings).query_one({"uuid": "u1"})["output"] == 3
    again = CliRunner().invoke(app, ["migrate-store", str(folder)])
    assert again.exit_code == 1 and "exists already" in again.output


def test_campaign_collections_upsert_and_persist(settings, db):
    doc = CampaignDoc(name="c1", config={"a": 1}, config_fingerprint="f")
    db.upsert("campaigns", [doc])
    db.upsert("campaigns", [doc.model_copy(update={"n_labels": 5})])
    assert db.campaigns.count({"name": "c1"}) == 1
    blob_id = put_blob(db.data, {"x": list(range(1000))}, kind="test")
    db.close()
    # a new process reads what this one wrote
    code = (
        "from almat.stores import CampaignDB, get_blob; from almat.settings import AlmatSettings;"
        f"db = CampaignDB.from_settings(AlmatSettings(db_path={str(settings.db_path)!r})).connect();"
        "import json; d = db.campaigns.query_one({'name': 'c1'});"
        f"print(json.dumps([d['n_labels'], len(get_blob(db.data, {blob_id!r})['x'])]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [5, 1000]


def test_indexes_requested_for_query_fields(db):
    created = db.ensure_indexes()
    assert set(created["labels"]) >= {"campaign", "iteration", "chemsys", "elements", "structure_hash", "oracle"}


def test_missing_blob_is_a_clear_error(db):
    with pytest.raises(KeyError, match="no blob"):
        get_blob(db.data, "nope")


@pytest.fixture
def mongomock_server(monkeypatch):
    """maggma's MongoStore talks to one shared in-memory mongomock server."""
    import functools

    import maggma.stores.mongolike as mongolike
    from mongomock_ng.store import ServerStore

    monkeypatch.setattr(mongolike, "MongoClient", functools.partial(mongomock.MongoClient, _store=ServerStore()))


def test_mongodb_backend_with_mongomock(mongomock_server):
    s = AlmatSettings(mongo_uri="mongodb://localhost:27017/", database="almat_test")
    js = build_job_store(s)
    assert isinstance(js.docs_store, MongoStore)
    assert isinstance(js.additional_stores["data"], GridFSStore)
    docs = CampaignDB.from_job_store(js)
    assert isinstance(docs.labels, MongoStore) and docs.labels.collection_name == "almat_labels"
    docs.labels.connect()
    docs.labels.update([{"label_id": "a", "campaign": "x"}], key="label_id")
    again = CampaignDB.from_job_store(build_job_store(s))
    again.labels.connect()
    assert again.labels.query_one({"label_id": "a"})["campaign"] == "x"


def test_unreachable_mongodb_fails_fast_naming_host():
    s = AlmatSettings(mongo_uri=uri_with_secret("127.0.0.1:9"), mongo_timeout_ms=800)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9") as err:
        check_connection(s)
    assert time.perf_counter() - start < 5
    assert SECRET not in str(err.value)


@pytest.mark.slow
def test_two_campaigns_run_at_once_on_one_store(tmp_path):
    """`almat run` on two campaign files, as two processes at the same time, writing to one embedded store."""
    import os

    import yaml

    env = {**os.environ, "ALMAT_DB_PATH": str(tmp_path / "db"), "ALMAT_RUN_DIR": str(tmp_path / "runs")}
    procs = []
    for name, a in (("cu-a", 3.61), ("cu-b", 3.66)):
        cfg = {
            "name": name,
            "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": a}, "supercell": [2, 2, 2]}],
            "initial": {"n_per_structure": 4, "rattle_std": 0.05, "max_strain": 0.02},
            "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "r_max": 4.0, "epochs": 4,
                                                          "warm_start_epochs": 2, "batch_size": 4, "eval_every": 4}},
            "sampler": {"temperatures": [600], "steps": 12, "sample_every": 4, "trust_lo": 0.001, "trust_hi": 50.0},
            "selection": {"policy": "max_deviation", "max_select": 2},
            "convergence": {"calibration_samples": 2, "max_iterations": 1},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        procs.append(subprocess.Popen([sys.executable, "-m", "almat.cli", "run", str(path)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with CampaignDB.from_settings(AlmatSettings(db_path=tmp_path / "db")) as db:
        for name in ("cu-a", "cu-b"):
            campaign = db.campaigns.query_one({"name": name})
            assert campaign["status"] == "max_iterations" and campaign["n_iterations"] == 1
            assert db.labels.count({"campaign": name, "status": "ok"}) == campaign["n_labels"] >= 4
            assert db.models.count({"campaign": name}) == 2 and db.iterations.count({"campaign": name}) == 1
            for model in db.models.query({"campaign": name}):
                assert db.data.count({"blob_uuid": model["weights_blob_id"]}) == 1


def test_unique_index_is_enforced_on_the_sqlite_store(tmp_path):
    store = SQLiteStore("things", tmp_path / "u.sqlite")
    store.update([{"name": "a", "code": 1, "tags": ["x", "y"]}, {"name": "b", "code": 2, "tags": ["z"]}], key="name")
    assert store.ensure_index("code", unique=True) and store.unique_fields() == ["code"]
    with pytest.raises(StoreError, match=r"^duplicate key in things: another document has code = 1.0 \(a unique index\)$"):
        store.update({"name": "c", "code": 1.0}, key="name")  # 1 and 1.0 are one key, as in MongoDB
    assert store.count() == 2 and store.count({"name": "c"}) == 0
    store.update({"name": "a", "code": 1, "tags": ["x", "y"], "more": 1}, key="name")  # the same document: no duplicate
    with pytest.raises(StoreError, match="code = 7"):  # a batch that repeats a value is refused as a whole
        store.update([{"name": "g", "code": 7}, {"name": "h", "code": 7}], key="name")
    assert store.count({"name": {"$in": ["g", "h"]}}) == 0
    # without the field, or with a sub-document there, a document is not checked (as a sparse index)
    store.update([{"name": "c"}, {"name": "d"}, {"name": "e", "code": {"k": 1}}, {"name": "f", "code": {"k": 1}}],
                 key="name")
    store.remove_docs({"name": "b"})
    store.update({"name": "b2", "code": 2}, key="name")  # a removed document's value is free again
    # arrays: each element is a key (MongoDB's multikey unique index); a repeat within one document is fine
    store.ensure_index("tags", unique=True)
    with pytest.raises(StoreError, match="another document has tags = 'y'"):
        store.update({"name": "i", "tags": ["y", "q"]}, key="name")
    store.update({"name": "j", "tags": ["w", "w"]}, key="name")
    # duplicates already stored refuse the index, in one line naming the key
    store.update([{"name": "k", "kind": "q"}, {"name": "l", "kind": "q"}], key="name")
    with pytest.raises(StoreError, match=r"^cannot make 'kind' unique in things: several documents have kind = 'q'$"):
        store.ensure_index("kind", unique=True)
    assert store.unique_fields() == ["code", "tags"]
    # another process (another store on the file) finds the unique index there
    other = SQLiteStore("things", tmp_path / "u.sqlite")
    with pytest.raises(StoreError, match="another document has code = 2"):
        other.update({"name": "m", "code": 2}, key="name")
    assert sorted(d["name"] for d in other.query({"code": {"$exists": True}}, properties=["name"])) == \
        ["a", "b2", "e", "f"]
