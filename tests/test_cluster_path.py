"""The cluster path on a MongoDB server (``ALMAT_TEST_MONGO_URI``: a real one, or the stand-in that
``scripts/mongo/start.sh`` starts and .ci/run exports): large objects in GridFS, and a URI's password
kept out of every log line and stored document. The shipped LaunchPad template loads without a server."""

from __future__ import annotations

import base64
import logging
import zlib
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pytest
import yaml

from almat.settings import AlmatSettings
from almat.stores import CampaignDB, build_job_store, get_blob, put_blob

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _dump(client, database: str) -> dict[str, str]:
    """Every document of every collection of ``database`` as text; GridFS files read back (and
    decompressed) through GridFS too, so text inside a blob is searched as well."""
    import gridfs
    from bson import json_util

    db, out = client[database], {}
    for name in db.list_collection_names():
        docs = list(db[name].find())
        out[name] = json_util.dumps(docs) + "".join(
            bytes(d["data"]).decode("latin-1") for d in docs if name.endswith(".chunks") and "data" in d)
        if name.endswith(".files"):
            bucket = gridfs.GridFSBucket(db, bucket_name=name.removesuffix(".files"))
            for f in docs:
                data = bucket.open_download_stream(f["_id"]).read()
                if (f.get("metadata") or {}).get("compression") == "zlib":
                    data = zlib.decompress(data)
                out[f"{name}/{f['_id']}"] = data.decode("utf-8", "replace")
    return out


# --------------------------------------------------------------------------- large objects


@pytest.mark.mongo
def test_blobs_over_16mb_go_to_gridfs_and_come_back_intact(mongo_uri, new_mongo_database):
    from pymongo import MongoClient

    settings = AlmatSettings(mongo_uri=mongo_uri, database=new_mongo_database())
    rng = np.random.default_rng(0)
    # model weights as almat stores them (learner.committee.save_model: base64 of the torch bytes), 22 MB;
    # random bytes hardly compress, so the stored GridFS file is also over the 16 MB document limit
    weights = base64.b64encode(rng.bytes(16 * MB + 512 * 1024)).decode("ascii")
    # an MD trajectory blob (sampler.md: a dict of float lists; kept small: the stand-in writes ~2 MB/s)
    traj = {"symbols": ["Cu"] * 256, "positions": rng.normal(size=(40, 256, 3)).tolist(), "exploded": False}
    with CampaignDB.from_settings(settings) as db:
        ids = {"weights": put_blob(db.data, weights, kind="mlip-weights", encoding="torch-pickle+base64"),
               "trajectory": put_blob(db.data, traj, kind="trajectory")}
        assert get_blob(db.data, ids["weights"]) == weights
        assert get_blob(db.data, ids["trajectory"]) == traj
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        files = client[settings.database][f"{settings.data_collection}.files"]
        weights_file = files.find_one({"metadata.blob_uuid": ids["weights"]})
        assert weights_file["length"] > 16 * MB  # stored as GridFS chunks, not as one document
        assert files.find_one({"metadata.blob_uuid": ids["trajectory"]})["length"] > 0
        chunks = client[settings.database][f"{settings.data_collection}.chunks"]
        assert chunks.count_documents({"files_id": weights_file["_id"]}) == -(-weights_file["length"]
                                                                              // weights_file["chunkSize"])
    finally:
        client.close()


# --------------------------------------------------------------------------- credentials


@pytest.mark.mongo
@pytest.mark.filterwarnings("ignore:Some jobs are not connected")
def test_password_of_the_uri_is_in_no_log_and_no_document(mongo_uri, new_mongo_database, tmp_path, caplog,
                                                          capfd, monkeypatch):
    """A job run with ``run_locally`` and a FireWorks workflow run with ``rapidfire`` on a URI with
    user:password; then no log line, job document, firework spec, launch record or almat document (nor
    any file the runs wrote) holds the password."""
    import jobflow
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from jobflow import run_locally
    from jobflow.managers.fireworks import flow_to_workflow
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymongo import MongoClient
    from ase.build import bulk

    from almat.launch.submit import load_launchpad
    from almat.oracle import AseOracleMaker
    from almat.stores import check_connection

    password = urlsplit(mongo_uri).password
    if not password:
        pytest.skip("ALMAT_TEST_MONGO_URI carries no user:password (scripts/mongo/start.sh gives one by default)")
    needles = {unquote(password), password, quote(unquote(password), safe="")}
    assert min(map(len, needles)) >= 6, "too short a password to search for"
    monkeypatch.setenv("ALMAT_MONGO_URI", mongo_uri)  # as a worker gets it; almat must not copy it anywhere
    caplog.set_level(logging.DEBUG)  # every logger: almat, jobflow, FireWorks, maggma, pymongo
    settings = AlmatSettings(mongo_uri=mongo_uri, database=new_mongo_database())
    check_connection(settings)
    logging.getLogger("almat").info("data in %s", settings.describe())
    cu = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.61, cubic=True))

    # a job on a JobStore with the password in its URI
    run_locally(AseOracleMaker().make(cu, campaign="cred-local"), store=build_job_store(settings),
                create_folders=True, root_dir=tmp_path / "local", ensure_success=True)

    # the same through FireWorks: the LaunchPad's host is the URI, the worker's JobStore almat's
    fw_db = new_mongo_database()
    lp_file = tmp_path / "my_launchpad.yaml"
    (tmp_path / "fw_logs").mkdir()
    (tmp_path / "launches").mkdir()
    lp_file.write_text(yaml.safe_dump({"host": mongo_uri, "uri_mode": True, "name": fw_db,
                                       "logdir": str(tmp_path / "fw_logs"), "strm_lvl": "DEBUG"}))
    lp = load_launchpad(lp_file)
    monkeypatch.setattr(jobflow.SETTINGS, "JOB_STORE", build_job_store(settings))  # a worker's jobflow config
    monkeypatch.chdir(tmp_path)
    rattled = cu.copy().perturb(0.05)
    flow = jobflow.Flow([AseOracleMaker().make(rattled, campaign="cred-fw")])
    lp.add_wf(flow_to_workflow(flow, metadata={"almat_campaign": "cred-fw"}))
    rapidfire(lp, FWorker(name="cred worker"), m_dir=str(tmp_path / "launches"), strm_lvl="DEBUG")
    assert [lp.get_fw_by_id(i).state for i in lp.get_fw_ids()] == ["COMPLETED"]
    lp.connection.close()

    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        stored = {f"{settings.database}.{k}": v for k, v in _dump(client, settings.database).items()}
        stored.update({f"{fw_db}.{k}": v for k, v in _dump(client, fw_db).items()})
        labels = client[settings.database][f"{settings.collection_prefix}_labels"]
        assert labels.count_documents({"status": "ok"}) == 2
    finally:
        client.close()
    # what was checked is really there: job outputs, almat documents, firework specs and launch records
    for name in ("jobflow_jobs", "almat_labels", "almat_structures"):
        assert f"{settings.database}.{name}" in stored, sorted(stored)
    for name in ("fireworks", "launches", "workflows"):
        assert f"{fw_db}.{name}" in stored, sorted(stored)
    assert '"fworker"' in stored[f"{fw_db}.launches"] and '"spec"' in stored[f"{fw_db}.fireworks"]

    out, err = capfd.readouterr()
    texts = {"log records": caplog.text, "stdout": out, "stderr": err, **stored}
    for path in tmp_path.rglob("*"):  # FireWorks' log files, launch folders (FW.json), job folders
        if path.is_file() and path != lp_file:  # (the LaunchPad file is where the password is meant to be)
            texts[str(path.relative_to(tmp_path))] = path.read_text(errors="replace")
    assert len(caplog.records) > 50 and "Rocket finished" in caplog.text + out + err  # the logs were captured
    leaks = sorted(where for where, text in texts.items() if any(n in text for n in needles))
    assert not leaks, f"the URI's password appears in: {leaks}"


# --------------------------------------------------------------------------- the shipped LaunchPad file


def test_shipped_launchpad_file_loads_without_a_server(monkeypatch):
    """config/fireworks/my_launchpad.yaml loads with FireWorks' own reader with no network at all: pymongo
    connects lazily, and the placeholder is a plain mongodb:// host (a mongodb+srv:// one would need a DNS
    lookup as soon as the file is read)."""
    import socket
    import threading

    from fireworks import LaunchPad

    lookups = []

    def offline(*args, **kwargs):  # a machine without network; pymongo's monitor threads may try
        lookups.append(threading.current_thread() is threading.main_thread())
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    path = ROOT / "config" / "fireworks" / "my_launchpad.yaml"
    spec = yaml.safe_load(path.read_text())
    assert spec["host"].startswith("mongodb://") and spec["uri_mode"] is True
    lp = LaunchPad.from_file(str(path))
    assert not any(lookups), "reading the file looked a host up"
    try:
        assert lp.name == spec["name"] and lp.uri_mode
        assert lp.db.name == spec["name"] and lp.fireworks.name == "fireworks"
    finally:
        lp.connection.close()
