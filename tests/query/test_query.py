"""The label query API on the embedded SQLite store (SQL on its indexes, and a Python scan) and on MongoDB (mongomock)."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from almat_query_testutils import (
    EMT_ASAP_SPEC,
    cu_structures,
    cuau_structures,
    label_all,
    source_cycle,
)
from ase.build import bulk
from ase.calculators.emt import EMT

from almat.query import MixedOraclesError, UnknownFilterError, query_labels
from almat.schemas import LabelDoc, StructureSource, to_structure
from almat.stores import CampaignDB


def _fill(db):
    """Campaign 'cu' (8 Cu8 labels, iterations 0/1, sources cycling), campaign 'cuau' (6 Cu2Au2 labels),
    2 failed Si labels in 'cu', and 3 Cu8 labels of 'cu' by a second oracle setting."""
    cu = label_all(cu_structures(8, seed=0), campaign="cu")
    for i, lab in enumerate(cu):
        lab.iteration, lab.source = i % 2, source_cycle(i)
    cuau = label_all(cuau_structures(6), campaign="cuau", iteration=0, source=StructureSource.md)
    si = to_structure(bulk("Si", "diamond", a=5.43, cubic=True))
    failed = label_all([si, si.copy().perturb(0.05)], campaign="cu", iteration=1)
    other = label_all(cu_structures(3, seed=9), spec=EMT_ASAP_SPEC, campaign="cu", iteration=2)
    db.upsert("labels", cu + cuau + failed + other)
    return {"cu": cu, "cuau": cuau, "failed": failed, "other": other}


@pytest.fixture(params=["embedded-index", "embedded-scan", "mongodb"])
def filled(request, db, monkeypatch):
    if request.param == "mongodb":
        import functools

        import maggma.stores.mongolike as mongolike
        import mongomock_ng as mongomock
        from mongomock_ng.store import ServerStore

        from almat.settings import AlmatSettings

        monkeypatch.setattr(mongolike, "MongoClient", functools.partial(mongomock.MongoClient, _store=ServerStore()))
        mdb = CampaignDB.from_settings(AlmatSettings(mongo_uri="mongodb://localhost:27017/", database="q")).connect()
        return mdb, _fill(mdb), True
    return db, _fill(db), request.param == "embedded-index"


def ids_of(labels):
    return sorted(lab.label_id for lab in labels)


def test_query_across_two_campaigns_of_different_chemsys(filled):
    db, data, use_index = filled
    q = lambda **kw: query_labels(db, use_index=use_index, **kw)  # noqa: E731
    emt = data["cu"][0].oracle_fingerprint
    assert sorted(q(chemsys="Au-Cu").ids()) == ids_of(data["cuau"])
    assert sorted(q(chemsys="Cu-Au").ids()) == ids_of(data["cuau"])  # element order does not matter
    assert sorted(q(chemsys="Cu", oracle_fingerprint=emt).ids()) == ids_of(data["cu"])
    assert sorted(q(elements_exact=["Cu"], oracle_fingerprint=emt).ids()) == ids_of(data["cu"])
    # contains Cu: both campaigns (pinning the oracle)
    assert sorted(q(elements="Cu", oracle_fingerprint=emt).ids()) == ids_of(data["cu"] + data["cuau"])
    assert sorted(q(elements=["Au", "Cu"]).ids()) == ids_of(data["cuau"])
    assert sorted(q(formula="AuCu").ids()) == ids_of(data["cuau"])
    assert sorted(q(campaign="cuau", iteration=0).ids()) == ids_of(data["cuau"])
    assert sorted(q(campaign="cu", iteration=1, oracle_fingerprint=emt).ids()) == ids_of(data["cu"][1::2])
    assert sorted(q(campaign="cu", source="md").ids()) == ids_of(data["cu"][2::3])
    assert sorted(q(source=["md"], oracle_fingerprint=emt).ids()) == ids_of(data["cu"][2::3] + data["cuau"])
    assert q(natoms=(1, 4)).count() == 6 and q(natoms=(8, None), oracle_fingerprint=emt).count() == 8
    assert q(natoms=4).count() == 6
    assert sorted(q(oracle_fingerprint=EMT_ASAP_SPEC.fingerprint).ids()) == ids_of(data["other"])
    # status: ok by default; failed labels on request
    assert sorted(q(status="failed").ids()) == ids_of(data["failed"])
    assert q(status=None, campaign="cu", allow_mixed_oracles=True).count() == 8 + 2 + 3
    assert q(raw={"energy": {"$lt": -1e9}}).count() == 0
    high = sorted((lab for lab in data["cuau"]), key=lambda lab: lab.energy)[3:]
    assert sorted(q(campaign="cuau", raw={"energy": {"$gte": high[0].energy}}).ids()) == ids_of(high)
    assert q(campaign="nope").ids() == []


def test_results_as_atoms_structures_and_docs(filled):
    db, data, use_index = filled
    want = {lab.label_id: lab for lab in data["cuau"]}
    atoms = list(query_labels(db, campaign="cuau", as_="atoms", use_index=use_index))
    assert sorted(a.info["label_id"] for a in atoms) == sorted(want)
    for a in atoms:
        lab = want[a.info["label_id"]]
        assert a.get_potential_energy() == pytest.approx(lab.energy)
        np.testing.assert_allclose(a.get_forces(), lab.forces)
        assert a.info["campaign"] == "cuau" and a.info["oracle_fingerprint"] == lab.oracle_fingerprint
        ref = a.copy()
        ref.calc = EMT()
        assert ref.get_potential_energy() == pytest.approx(lab.energy)  # positions are the labelled ones
    structures = list(query_labels(db, campaign="cuau", as_="structures", use_index=use_index))
    assert {s.properties["label_id"] for s in structures} == set(want)
    s = structures[0]
    np.testing.assert_allclose(s.site_properties["forces"], want[s.properties["label_id"]].forces)
    docs = query_labels(db, campaign="cuau", use_index=use_index)
    gen = iter(docs)
    assert not isinstance(gen, list) and hasattr(gen, "__next__")  # streamed
    assert all(isinstance(d, LabelDoc) for d in gen)


def test_mixed_oracles_are_refused_unless_asked(filled):
    db, data, use_index = filled
    q = query_labels(db, campaign="cu", use_index=use_index)
    assert q.count() == 11  # counting never raises
    with pytest.raises(MixedOraclesError, match="2 oracle settings"):
        q.ids()
    with pytest.raises(MixedOraclesError):
        next(iter(q))
    assert len(query_labels(db, campaign="cu", allow_mixed_oracles=True, use_index=use_index).ids()) == 11
    fps = q.oracle_fingerprints()
    assert fps == {data["cu"][0].oracle_fingerprint: 8, EMT_ASAP_SPEC.fingerprint: 3}


def test_unknown_filters_are_errors_not_empty_results(db):
    with pytest.raises(UnknownFilterError, match="did you mean 'chemsys'"):
        query_labels(db, chemsystem="Cu")
    with pytest.raises(UnknownFilterError, match="unknown label field in raw 'energi'"):
        query_labels(db, raw={"energi": 1.0})
    with pytest.raises(UnknownFilterError):
        query_labels(db, raw={"$or": [{"campaign": "a"}, {"nope": 1}]})
    with pytest.raises(ValueError, match="not an element symbol"):
        query_labels(db, elements="Xx")
    with pytest.raises(ValueError, match="source"):
        query_labels(db, source="dft")
    with pytest.raises(ValueError, match="natoms"):
        query_labels(db, natoms=(1, 2, 3))


def test_date_filters(db):
    labs = label_all(cu_structures(4, seed=3), campaign="d", iteration=0)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for i, lab in enumerate(labs):
        lab.created_at = t0 + timedelta(days=i)
    db.upsert("labels", labs)
    for use_index in (True, False):
        q = lambda **kw: query_labels(db, campaign="d", use_index=use_index, **kw)  # noqa: E731
        assert sorted(q(since=t0 + timedelta(days=1)).ids()) == ids_of(labs[1:])
        assert sorted(q(until="2024-01-03T00:00:00+00:00").ids()) == ids_of(labs[:2])
        assert sorted(q(since="2024-01-02", until=t0 + timedelta(days=3)).ids()) == ids_of(labs[1:3])


def test_index_follows_writes_and_overwrites(db):
    labs = label_all(cu_structures(3, seed=4), campaign="w", iteration=0)
    db.upsert("labels", labs)
    assert query_labels(db, campaign="w").count() == 3
    # an overwrite that changes only the iteration is seen at once (the store indexes on write)
    moved = labs[0].model_copy(update={"iteration": 5})
    db.upsert("labels", [moved])
    assert query_labels(db, campaign="w", iteration=5).ids() == [moved.label_id]
    assert query_labels(db, campaign="w", iteration=0).count() == 2
    db.upsert("labels", label_all(cu_structures(2, seed=5), campaign="w", iteration=1))
    assert query_labels(db, campaign="w").count() == 5
    db.labels.remove_docs({"label_id": labs[1].label_id})
    assert labs[1].label_id not in query_labels(db, campaign="w").ids()
    assert query_labels(db, campaign="w").count() == 4


def test_explain_reports_index_use(db):
    db.upsert("labels", label_all(cu_structures(2), campaign="e"))
    assert query_labels(db, chemsys="Cu").explain()["indexed_fields"] == []  # readers never create indexes
    db.ensure_indexes()  # almat run, submit, import and db init do
    plan = query_labels(db, chemsys="Cu", oracle_fingerprint="x").explain()
    assert plan["backend"] == "sqlite" and plan["uses_index"] and not plan["post_filter"]
    assert plan["indexed_fields"] == ["chemsys", "oracle_fingerprint", "status"]
    assert any("USING" in step and "KEY" in step for step in plan["plan"])
    elements_plan = query_labels(db, elements=["Cu", "Au"]).explain()
    assert elements_plan["uses_index"] and "elements" in elements_plan["indexed_fields"]
    regex = query_labels(db, campaign="e", raw={"formula": {"$regex": "^Cu"}}).explain()
    assert regex["uses_index"] and regex["post_filter"] and regex["python_filter"] == {"$and": [{"formula": {"$regex": "^Cu"}}]}
    assert query_labels(db, campaign="e", use_index=False).explain()["uses_index"] is False
