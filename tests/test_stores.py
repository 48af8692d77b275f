import json
import subprocess
import sys
import time

import mongomock_ng as mongomock
import pytest
from maggma.stores import GridFSStore, MongoStore, MontyStore

from almat.schemas import CampaignDoc
from almat.settings import AlmatSettings
from almat.stores import CampaignDB, build_job_store, check_connection, get_blob, put_blob


def test_embedded_job_store_is_sqlite_montystore(job_store):
    assert isinstance(job_store.docs_store, MontyStore)
    assert job_store.docs_store.storage == "sqlite"
    assert isinstance(job_store.additional_stores["data"], MontyStore)


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
    s = AlmatSettings(mongo_uri="mongodb://nobody:" + "pw@127.0.0.1:9/", mongo_timeout_ms=800)  # fake credentials
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9") as err:
        check_connection(s)
    assert time.perf_counter() - start < 5
    assert "pw" not in str(err.value)
