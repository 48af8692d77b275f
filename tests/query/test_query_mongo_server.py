"""Index use of the label queries on a real MongoDB server (when ``ALMAT_TEST_MONGO_URI`` is set)."""

import os
import uuid

import pytest
from almat_query_testutils import cu_structures, cuau_structures, label_all

from almat.query import query_labels
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

URI = os.environ.get("ALMAT_TEST_MONGO_URI")
pytestmark = [pytest.mark.mongo, pytest.mark.skipif(not URI, reason="ALMAT_TEST_MONGO_URI not set")]


def test_typical_queries_use_indexes_on_mongodb():
    settings = AlmatSettings(mongo_uri=URI, database=f"almat_test_{uuid.uuid4().hex[:8]}")
    db = CampaignDB.from_settings(settings).connect(indexes=True)  # as almat run does
    try:
        cu = label_all(cu_structures(3), campaign="a", iteration=0)
        cuau = label_all(cuau_structures(3), campaign="b", iteration=1)
        db.upsert("labels", cu + cuau)
        fp = cu[0].oracle_fingerprint
        for kw in (dict(chemsys="Cu"), dict(elements="Au"), dict(campaign="b"),
                   dict(oracle_fingerprint=fp, chemsys="Au-Cu")):
            q = query_labels(db, **kw)
            plan = q.explain()
            assert plan["backend"] == "mongodb", (kw, plan)
            raw = db.labels._collection.find(q.criteria).explain()
            if raw.get("cxp", {}).get("provider") == "mongoeco":
                # the local stand-in (scripts/mongo/start.sh) answers explain() with its SQLite plan, not
                # MongoDB's queryPlanner/IXSCAN tree that almat reads: check there that it searched the
                # entries of the indexes ensure_indexes() created, one search per equality criterion (it
                # matches `$all` on an array, as for elements, by scanning the array with json_each)
                steps = raw["details"]["engine_details"]
                searched = sum("_entries USING" in step and "INDEX" in step for step in steps)
                equalities = sum(not isinstance(v, dict) for v in q.criteria.values())
                assert searched >= equalities > 0, (kw, q.criteria, steps)
            else:
                assert plan["uses_index"], (kw, plan)
        assert sorted(query_labels(db, chemsys="Au-Cu").ids()) == sorted(lab.label_id for lab in cuau)
    finally:
        db.labels._collection.database.client.drop_database(settings.database)
        db.close()
