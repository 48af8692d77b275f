"""Shared fixtures: an embedded store in a temp folder, EMT-labelled Cu data, a tiny trained committee."""

from __future__ import annotations

import os

import pytest
from emt_cu import emt_cu_atoms

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow torch 20x on 2 cores


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Every test gets its own embedded store; no user settings file leaks in."""
    monkeypatch.delenv("ALMAT_CONFIG_FILE", raising=False)
    monkeypatch.delenv("ALMAT_MONGO_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALMAT_DB_PATH", str(tmp_path / "almat_db"))
    monkeypatch.setenv("ALMAT_RUN_DIR", str(tmp_path / "almat_runs"))
    yield


@pytest.fixture
def settings(tmp_path):
    from almat.settings import AlmatSettings

    return AlmatSettings(db_path=tmp_path / "almat_db", run_dir=tmp_path / "almat_runs")


@pytest.fixture
def job_store(settings):
    from almat.stores import build_job_store

    return build_job_store(settings)


@pytest.fixture
def db(job_store):
    from almat.stores import CampaignDB

    database = CampaignDB.from_job_store(job_store).connect()
    yield database
    database.close()


@pytest.fixture(scope="session")
def cu_data():
    """24 labelled Cu8 configurations (training) and 8 more (held out)."""
    data = emt_cu_atoms(32, seed=1)
    return data[:24], data[24:]


@pytest.fixture(scope="session")
def tiny_committee(cu_data):
    """Two small MACE models trained for a few epochs on the Cu8 data (about 20 s)."""
    from almat.learner.committee import Committee
    from almat.learner.mace import MaceHyperParameters, train_mace

    train, _ = cu_data
    hp = MaceHyperParameters(num_channels=8, epochs=12, batch_size=6, eval_every=4)
    ids = [f"c{i}" for i in range(len(train))]
    results = [train_mace(train, ids, hp, seed=s) for s in (0, 1)]
    return Committee([r.model for r in results]), results


# --------------------------------------------------------------------------- a MongoDB server for tests
# ALMAT_TEST_MONGO_URI: a real MongoDB, or the local stand-in (`bash scripts/mongo/start.sh` prints its URI;
# .ci/run starts it). Without it the tests that ask for these fixtures skip.


@pytest.fixture
def mongo_uri() -> str:
    uri = os.environ.get("ALMAT_TEST_MONGO_URI")
    if not uri:
        pytest.skip("ALMAT_TEST_MONGO_URI not set (bash scripts/mongo/start.sh starts a local server)")
    return uri


@pytest.fixture
def new_mongo_database(mongo_uri):
    """``new_mongo_database()`` gives a fresh database name on the test server; all are dropped afterwards,
    so concurrent and repeated runs never share data."""
    import uuid

    names: list[str] = []

    def new() -> str:
        names.append(f"almat_test_{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    if names:
        from pymongo import MongoClient

        client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
        try:
            for name in names:
                client.drop_database(name)
        finally:
            client.close()
