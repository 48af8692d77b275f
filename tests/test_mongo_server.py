"""The same store code against a real MongoDB server, when ``ALMAT_TEST_MONGO_URI`` is set."""

import os
import uuid

import pytest

from almat.settings import AlmatSettings
from almat.stores import CampaignDB, check_connection, get_blob, put_blob

URI = os.environ.get("ALMAT_TEST_MONGO_URI")
pytestmark = [pytest.mark.mongo, pytest.mark.skipif(not URI, reason="ALMAT_TEST_MONGO_URI not set")]


@pytest.fixture
def mongo_settings():
    return AlmatSettings(mongo_uri=URI, database=f"almat_test_{uuid.uuid4().hex[:8]}")


def test_roundtrip_on_real_server(mongo_settings):
    check_connection(mongo_settings)
    db = CampaignDB.from_settings(mongo_settings).connect()
    try:
        created = db.ensure_indexes()
        assert all(created["labels"].values())
        db.upsert("labels", [{"label_id": "a", "campaign": "x", "chemsys": "Cu"}])
        assert db.labels.query_one({"chemsys": "Cu"})["label_id"] == "a"
        blob = put_blob(db.data, "y" * (17 * 1024 * 1024), kind="big")  # beyond the 16 MB document limit
        assert len(get_blob(db.data, blob)) == 17 * 1024 * 1024
    finally:
        db.labels._collection.database.client.drop_database(mongo_settings.database)
        db.close()
