"""Stores: the jobflow ``JobStore`` and the campaign collections, built from the settings.

- ``build_job_store(settings)`` gives jobflow's ``JobStore``: a docs store for job outputs and an
  additional store ``data`` for large objects (model weights, trajectories): ``MongoStore`` + ``GridFSStore``
  on a MongoDB server, two collections of the embedded ``SQLiteStore`` (``almat.stores.sqlite``) otherwise.
- ``CampaignDB`` holds the campaign collections (structures, labels, models, iterations, campaigns)
  next to the job outputs. Jobs find it from the ``JobStore`` they run with (``CampaignDB.from_job_store``),
  so a FireWorks worker writes where its JobStore points.
- Readers never write: ``connect()`` only opens the collections. The indexes that queries need are made by
  ``connect(indexes=True)`` / ``ensure_indexes()``, which ``almat run``, ``submit``, ``import`` and
  ``almat db init`` call; a user who may only read (MongoDB's ``read`` role) gets ``ReadOnlyStoreError`` there.
- ``put_blob``/``get_blob`` keep large objects in the ``data`` store in jobflow's own blob layout
  (``blob_uuid`` + ``data``), so they never hit MongoDB's 16 MB document limit (``limits``).
- ``migrate_montydb``: copies an embedded store of almat <= 0.1 (montydb) into the SQLite store;
  ``runinfo``: where a job ran; ``ledger``: what each job cost (wall, core and GPU seconds, host, queue).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from jobflow import CURRENT_JOB, JobConfig, JobStore, job
from maggma.core import Store
from maggma.stores import GridFSStore, MemoryStore, MongoStore
from monty.json import MontyDecoder
from pymongo import IndexModel, MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from almat.settings import AlmatSettings, get_settings
from almat.stores.heartbeat import job_heartbeat
from almat.stores.limits import assert_document_size
from almat.stores.runinfo import with_run_record
from almat.stores.sqlite import SQLiteStore, StoreError

#: collection -> (unique key fields, indexed fields)
CAMPAIGN_COLLECTIONS: dict[str, tuple[list[str], list[str]]] = {
    "campaigns": (["name"], ["name", "status", "chemsys", "elements"]),
    "structures": (
        ["campaign", "structure_hash"],
        ["campaign", "iteration", "chemsys", "elements", "structure_hash", "source", "formula"],
    ),
    "labels": (
        ["label_id"],
        [
            "label_id", "campaign", "iteration", "chemsys", "elements", "structure_hash",
            "oracle", "oracle_fingerprint", "status", "source", "natoms", "formula", "created_at", "reused_from",
        ],
    ),
    "models": (["model_id"], ["model_id", "campaign", "iteration", "elements"]),
    "iterations": (["campaign", "iteration"], ["campaign", "iteration"]),
    "pool_iterations": (["campaign", "iteration"], ["campaign", "iteration"]),
    "nft_iterations": (["campaign", "iteration"], ["campaign", "iteration"]),
    # the cost ledger (almat.stores.ledger): one entry per run of a job, replaced when the job reruns
    "ledger": (["job_uuid", "job_index"], ["campaign", "iteration", "role", "job_uuid"]),
}


class ReadOnlyStoreError(StoreError):
    """The user may read the store but not write it (e.g. a MongoDB user with only the ``read`` role)."""


def _where(store: Store) -> str:
    """The store's server (or file) and database, never its credentials."""
    if isinstance(store, SQLiteStore):
        return f"the embedded store {store.database_path}"
    host = urlsplit(getattr(store, "uri", None) or "").netloc.rsplit("@", 1)[-1] or getattr(store, "host", "?")
    return f"MongoDB at {host} [{getattr(store, 'database', '?')}]"


def _create_indexes(store: Store, fields: list[str]) -> dict[str, bool]:
    """Index ``fields`` of one collection; ``ReadOnlyStoreError`` when the user may not write."""
    try:
        if isinstance(store, MongoStore) and not isinstance(store, MemoryStore):
            # one command; the server checks the right to write even where the indexes exist already
            store._collection.create_indexes([IndexModel(f) for f in fields])
            return dict.fromkeys(fields, True)
        if isinstance(store, SQLiteStore):
            store.check_writable()  # as the server does: refused even where the indexes exist already
        return {f: bool(store.ensure_index(f)) for f in fields}
    except (OperationFailure, StoreError) as exc:
        # MongoDB's Unauthorized (13; Atlas: 8000), or the embedded store's file
        if getattr(exc, "code", None) in (13, 8000) or "not authorized" in str(exc) or "read-only" in str(exc):
            raise ReadOnlyStoreError(f"{_where(store)} is read-only for this user: a user with write access must "
                                     "run campaigns (and create the indexes: almat db init)") from None
        raise


def _mongo_kwargs(settings: AlmatSettings) -> dict[str, Any]:
    return {"serverSelectionTimeoutMS": settings.mongo_timeout_ms, "connectTimeoutMS": settings.mongo_timeout_ms}


def _store_for(settings: AlmatSettings, collection_name: str, blobs: bool = False) -> Store:
    if settings.embedded:
        return SQLiteStore(collection_name, database_path=str(embedded_path(settings)))
    uri = settings.mongo_uri.get_secret_value()
    cls = GridFSStore if blobs else MongoStore
    extra = {"compression": True} if blobs else {}
    return cls(
        database=settings.database,
        collection_name=collection_name,
        uri=uri,
        mongoclient_kwargs=_mongo_kwargs(settings),
        **extra,
    )


def embedded_path(settings: AlmatSettings) -> Path:
    """The SQLite file of the embedded store; a clear error when ``db_path`` can't hold it."""
    folder = settings.db_path.resolve()
    path = folder / f"{settings.database}.sqlite"
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"the store folder {folder} (ALMAT_DB_PATH) is a file: point ALMAT_DB_PATH at a folder")
    if (folder / ".monty.storage").exists() and not path.exists():
        raise StoreError(f"{folder} holds a store of an earlier almat version (montydb); "
                         f"copy it into the new store with: almat migrate-store {folder}")
    return path


def migrate_montydb(folder: str | Path) -> dict[str, int]:
    """Copy every collection of a montydb store (almat <= 0.1) in ``folder`` into the SQLite store there
    (``<database>.sqlite``); returns the documents copied per ``database.collection``. The montydb files
    are left as they were."""
    from montydb import MontyClient

    folder = Path(folder).resolve()
    if not (folder / ".monty.storage").is_file():
        raise StoreError(f"{folder} holds no montydb store (no .monty.storage file)")
    client = MontyClient(str(folder))
    copied: dict[str, int] = {}
    for database in client.list_database_names():
        target = folder / f"{database}.sqlite"
        if target.exists():
            raise StoreError(f"{target} exists already: {folder} was migrated (remove it to migrate again)")
        tmp = target.with_name(target.name + ".migrating")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        for name in client[database].list_collection_names():
            store, cursor = SQLiteStore(name, tmp), client[database][name].find()
            copied[f"{database}.{name}"] = 0
            while batch := list(itertools.islice(cursor, 500)):
                store.update(batch, key=_migration_key(name, batch[0]))
                copied[f"{database}.{name}"] += len(batch)
            for fields in [f for coll, (_, f) in CAMPAIGN_COLLECTIONS.items() if name.endswith(f"_{coll}")][:1]:
                for field in fields:  # the indexes almat run would make: the store is ready for readers
                    store.ensure_index(field)
            store.close()
        if tmp.exists():
            tmp.rename(target)
    client.close()
    return copied


def _migration_key(collection: str, doc: dict) -> str | list[str]:
    """The key almat updates this collection with (the new store keeps one unique key per collection)."""
    for name, (key, _) in CAMPAIGN_COLLECTIONS.items():
        if collection.endswith(f"_{name}"):
            return key if len(key) > 1 else key[0]
    if "blob_uuid" in doc:
        return "blob_uuid"
    return ["uuid", "index"] if "uuid" in doc and "index" in doc else "_id"


def build_job_store(settings: AlmatSettings | None = None) -> JobStore:
    """The jobflow ``JobStore`` for these settings: docs store plus a ``data`` store for blobs."""
    settings = settings or get_settings()
    docs = _store_for(settings, settings.jobs_collection)
    data = _store_for(settings, settings.data_collection, blobs=True)
    return JobStore(docs, additional_stores={"data": data})


def check_connection(settings: AlmatSettings | None = None) -> None:
    """Fail fast, naming the host, when the MongoDB server cannot be reached."""
    settings = settings or get_settings()
    if settings.embedded:
        return
    try:
        client = MongoClient(settings.mongo_uri.get_secret_value(), **_mongo_kwargs(settings))
    except (PyMongoError, ValueError) as exc:  # InvalidURI, ConfigurationError: never print the URI itself
        raise ValueError(f"mongo_uri (ALMAT_MONGO_URI) is not a valid MongoDB URI: {str(exc).split('. Hint')[0]}"
                         ) from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise ConnectionError(
            f"cannot reach MongoDB at {settings.mongo_host} within "
            f"{settings.mongo_timeout_ms / 1000:.0f} s ({type(exc).__name__})"
        ) from None
    finally:
        client.close()


def lost_connection(exc: BaseException, settings: AlmatSettings) -> ConnectionError | None:
    """``exc`` as one line naming the host when it says the MongoDB server went away (refused, timed out,
    reset); None for any other error. What ``almat run`` ends with when the server stops mid-campaign."""
    if settings.embedded or not isinstance(exc, ConnectionFailure):
        return None
    return ConnectionError(f"lost the connection to MongoDB at {settings.mongo_host} ({type(exc).__name__}): "
                           "start the server again, then resume the campaign (--resume)")


def sibling_store(store: Store, collection_name: str) -> Store:
    """A store of the same kind and connection as ``store``, on another collection."""
    if type(store) is MemoryStore:
        # MemoryStores don't share a server; keep one per name on the original store
        cache = store.__dict__.setdefault("_almat_siblings", {})
        if collection_name not in cache:
            cache[collection_name] = MemoryStore(collection_name)
        return cache[collection_name]
    spec = store.as_dict()
    spec["collection_name"] = collection_name
    return MontyDecoder().process_decoded(spec)


@dataclass
class CampaignDB:
    """The campaign collections: structures, labels, models, iterations, campaigns, the per-iteration
    records of pool-based (``pool_iterations``) and NFT (``nft_iterations``) campaigns, and the cost ledger
    (``ledger``: one entry per job run, ``almat.stores.ledger``)."""

    structures: Store
    labels: Store
    models: Store
    iterations: Store
    campaigns: Store
    pool_iterations: Store
    nft_iterations: Store
    ledger: Store
    data: Store

    @classmethod
    def from_job_store(cls, job_store: JobStore, prefix: str | None = None) -> "CampaignDB":
        """Campaign collections next to the job outputs of ``job_store``."""
        prefix = prefix or get_settings().collection_prefix
        stores = {name: sibling_store(job_store.docs_store, f"{prefix}_{name}") for name in CAMPAIGN_COLLECTIONS}
        return cls(**stores, data=job_store.additional_stores["data"])

    @classmethod
    def from_settings(cls, settings: AlmatSettings | None = None, check: bool = False) -> "CampaignDB":
        """The collections of the settings' store (``check``: fail fast when MongoDB is unreachable)."""
        settings = settings or get_settings()
        if check:
            check_connection(settings)
        return cls.from_job_store(build_job_store(settings), prefix=settings.collection_prefix)

    def all_stores(self) -> dict[str, Store]:
        return {name: getattr(self, name) for name in (*CAMPAIGN_COLLECTIONS, "data")}

    def connect(self, indexes: bool = False) -> "CampaignDB":
        """Open every collection; reading never writes. ``indexes``: also create the indexes (a write, done by
        ``almat run``, ``submit``, ``import`` and ``almat db init``): ``ReadOnlyStoreError`` for a reader."""
        for store in self.all_stores().values():
            store.connect()
        if indexes:
            self.ensure_indexes()
        return self

    def close(self) -> None:
        for store in self.all_stores().values():
            try:
                store.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> "CampaignDB":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure_indexes(self) -> dict[str, dict[str, bool]]:
        """Create the indexes queries need; returns which ones the backend accepted. A write: a user who may
        only read gets a one-line ``ReadOnlyStoreError``.

        MongoDB and the embedded SQLite store create them all (SQLite indexes existing documents then).
        """
        created = {name: _create_indexes(getattr(self, name), fields)
                   for name, (_, fields) in CAMPAIGN_COLLECTIONS.items()}
        if not isinstance(self.data, GridFSStore):  # GridFS indexes its own metadata
            _create_indexes(self.data, ["blob_uuid"])
        return created

    def upsert(self, collection: str, docs: Iterable[Any]) -> int:
        """Insert or replace documents (pydantic docs or dicts) on the collection's unique key.

        Structures are records of where a configuration first came from: one already stored for the
        campaign is kept as it is (e.g. a relaxed structure stays ``relaxed`` when the initial data
        reuse it as their unperturbed member).
        """
        key, _ = CAMPAIGN_COLLECTIONS[collection]
        rows = [d.to_store() if hasattr(d, "to_store") else d for d in docs]
        if collection == "structures" and rows:
            rows = [r for r in rows if self.structures.query_one({k: r.get(k) for k in key}, properties=key) is None]
        for row in rows:
            assert_document_size(row)  # MongoDB's 16 MB limit, checked on the embedded store too
        if rows:
            getattr(self, collection).update(rows, key=key if len(key) > 1 else key[0])
        return len(rows)


def put_blob(data_store: Store, payload: Any, **metadata: Any) -> str:
    """Store a large object in the ``data`` store; returns its ``blob_uuid``."""
    blob_id = uuid.uuid4().hex
    data_store.update({"blob_uuid": blob_id, "data": payload, **metadata}, key="blob_uuid")
    return blob_id


def get_blob(data_store: Store, blob_id: str) -> Any:
    """Load a large object stored with ``put_blob`` (or by jobflow itself)."""
    doc = data_store.query_one({"blob_uuid": blob_id})
    if doc is None:
        raise KeyError(f"no blob {blob_id} in the data store {data_store.name}")
    return doc["data"]


def require_db() -> CampaignDB:
    """``current_db()`` for jobs that can't run without the store: a clear error outside a jobflow run."""
    db = current_db()
    if db is None:
        raise RuntimeError("this job needs a JobStore: run its flow with jobflow (run_locally or FireWorks)")
    return db


def current_db() -> CampaignDB | None:
    """The campaign collections of the JobStore the current jobflow job runs with (None outside a run)."""
    store = CURRENT_JOB.store
    if store is None:
        return None
    return CampaignDB.from_job_store(store).connect()


def store_job(method=None, **job_kwargs):
    """jobflow's ``@job`` for jobs that write to the campaign collections (the store is exposed).

    Every such job also records where it ran (host, ``SLURM_JOB_ID``, ``SLURM_JOB_PARTITION``) in its
    JobStore document under ``metadata["almat_run"]`` (see ``almat.stores.runinfo``). Works on functions
    and on ``Maker.make`` methods; ``output_schema`` and other ``@job`` keywords pass through.
    """

    def decorator(func):
        @functools.wraps(func)
        def recorded(*args, **kwargs):
            with job_heartbeat(sibling_store):  # a submitted campaign's job, under FireWorks: its heartbeat
                return with_run_record(func(*args, **kwargs))

        # keep jobflow's function_filter working: it unwraps one level (``__wrapped__``) and must
        # land on the function the Job holds, which is ``recorded``
        del recorded.__wrapped__
        recorded.__signature__ = inspect.signature(func)
        return job(recorded, config=JobConfig(expose_store=True), **job_kwargs)

    return decorator if method is None else decorator(method)
