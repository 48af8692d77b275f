"""A sidecar SQLite index of a labels collection kept in the embedded MontyStore (sqlite backend).

Details: ``docs/architecture.md``, module notes (almat/stores/sqlindex.py)."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import bson
from bson.raw_bson import RawBSONDocument
from maggma.stores import MontyStore

SCHEMA_VERSION = "1"

#: columns of the index (besides the MontyDB key ``k`` and the stored length ``vlen``)
INDEXED_COLUMNS = (
    "label_id", "campaign", "iteration", "chemsys", "formula", "source", "oracle", "oracle_fingerprint",
    "status", "natoms", "created_at", "structure_hash", "reused_from",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS labels (
    k TEXT PRIMARY KEY,
    vlen INTEGER NOT NULL,
    {", ".join(f"{c} {'INTEGER' if c in ('iteration', 'natoms') else 'TEXT'}" for c in INDEXED_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS label_elements (
    element TEXT NOT NULL,
    k TEXT NOT NULL,
    PRIMARY KEY (element, k)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_label_elements_k ON label_elements (k);
CREATE INDEX IF NOT EXISTS ix_labels_label_id ON labels (label_id);
CREATE INDEX IF NOT EXISTS ix_labels_campaign ON labels (campaign, iteration);
CREATE INDEX IF NOT EXISTS ix_labels_chemsys ON labels (chemsys);
CREATE INDEX IF NOT EXISTS ix_labels_fingerprint_chemsys ON labels (oracle_fingerprint, chemsys);
CREATE INDEX IF NOT EXISTS ix_labels_oracle ON labels (oracle);
CREATE INDEX IF NOT EXISTS ix_labels_formula ON labels (formula);
CREATE INDEX IF NOT EXISTS ix_labels_structure_hash ON labels (structure_hash, oracle_fingerprint);
CREATE INDEX IF NOT EXISTS ix_labels_source ON labels (source);
CREATE INDEX IF NOT EXISTS ix_labels_created_at ON labels (created_at);
CREATE INDEX IF NOT EXISTS ix_labels_natoms ON labels (natoms);
"""

_BATCH = 500


def iso_utc(value: datetime | str | None) -> str | None:
    """A datetime as a sortable UTC string (naive datetimes are taken as UTC, as BSON stores them)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _row(k: str, vlen: int, doc: dict[str, Any]) -> tuple:
    values = []
    for col in INDEXED_COLUMNS:
        v = doc.get(col)
        if col == "created_at":
            v = iso_utc(v) if isinstance(v, (datetime, str)) else None
        elif col in ("iteration", "natoms"):
            v = int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        elif v is not None and not isinstance(v, str):
            v = str(getattr(v, "value", v))
        values.append(v)
    return (k, vlen, *values)


class LabelIndex:
    """The sidecar index of one MontyStore (sqlite) labels collection."""

    def __init__(self, collection_file: Path, index_file: Path):
        self.collection_file = Path(collection_file)
        self.path = Path(index_file)
        self._conn: sqlite3.Connection | None = None
        self._attached = False

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def for_store(cls, store: Any) -> "LabelIndex | None":
        """The index for ``store`` when it is a MontyStore with the sqlite backend, else None."""
        if not isinstance(store, MontyStore) or getattr(store, "storage", None) != "sqlite":
            return None
        root = Path(store.database_path)
        collection_file = root / store.database_name / f"{store.collection_name}.collection"
        index_file = root / ".almat-index" / store.database_name / f"{store.collection_name}.sqlite"
        return cls(collection_file, index_file)

    def connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = None
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                version = row[0] if row else None
            except sqlite3.OperationalError:
                pass
            if version not in (None, SCHEMA_VERSION):
                conn.executescript("DROP TABLE IF EXISTS labels; DROP TABLE IF EXISTS label_elements;"
                                   "DROP TABLE IF EXISTS meta;")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._conn = conn
        self._attach()
        return self._conn

    def _attach(self) -> bool:
        if not self._attached and self.collection_file.is_file():
            self._conn.execute("ATTACH DATABASE ? AS m", (str(self.collection_file),))
            cols = [r[1] for r in self._conn.execute("PRAGMA m.table_info(documents)")]
            if cols[:2] != ["k", "v"]:
                self._conn.execute("DETACH DATABASE m")
                raise RuntimeError(f"unexpected MontyDB sqlite layout in {self.collection_file}: {cols}")
            self._attached = True
        return self._attached

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._attached = False

    # -- synchronisation ------------------------------------------------------------------------

    def token(self) -> str:
        parts = []
        for path in (self.collection_file, Path(f"{self.collection_file}-wal")):
            try:
                st = os.stat(path)
                parts.append(f"{st.st_mtime_ns}:{st.st_size}")
            except FileNotFoundError:
                parts.append("-")
        return "|".join(parts)

    def sync(self) -> int:
        """Bring the index up to date with the collection; returns how many documents were (re)read."""
        conn = self.connect()
        token = self.token()  # taken before reading: a write during the sync triggers the next one
        row = conn.execute("SELECT value FROM meta WHERE key='token'").fetchone()
        if row is not None and row[0] == token:
            return 0
        n_read = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._attached:
                conn.execute("DELETE FROM labels")
                conn.execute("DELETE FROM label_elements")
            else:
                conn.execute("DELETE FROM label_elements WHERE k IN "
                             "(SELECT k FROM labels WHERE k NOT IN (SELECT k FROM m.documents))")
                conn.execute("DELETE FROM labels WHERE k NOT IN (SELECT k FROM m.documents)")
                stale = [r[0] for r in conn.execute(
                    "SELECT d.k FROM m.documents d LEFT JOIN main.labels l ON l.k = d.k "
                    "WHERE l.k IS NULL OR l.vlen != length(d.v)")]
                for start in range(0, len(stale), _BATCH):
                    n_read += self._reindex(conn, stale[start:start + _BATCH])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('token', ?)", (token,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        total = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        if n_read >= max(1000, total // 5):  # planner statistics after large changes (picks selective indexes)
            conn.execute("ANALYZE")
        return n_read

    def _reindex(self, conn: sqlite3.Connection, keys: Sequence[str]) -> int:
        marks = ",".join("?" * len(keys))
        rows, elements = [], []
        for k, v in conn.execute(f"SELECT k, v FROM m.documents WHERE k IN ({marks})", list(keys)):
            doc = RawBSONDocument(bytes(v))  # lazy: decodes only the top-level fields read (~20x faster)
            rows.append(_row(k, len(v), doc))
            elements.extend((str(el), k) for el in (doc.get("elements") or []))
        conn.execute(f"DELETE FROM label_elements WHERE k IN ({marks})", list(keys))
        cols = ", ".join(("k", "vlen", *INDEXED_COLUMNS))
        conn.executemany(f"INSERT OR REPLACE INTO labels ({cols}) VALUES ({','.join('?' * (2 + len(INDEXED_COLUMNS)))})",
                         rows)
        conn.executemany("INSERT OR IGNORE INTO label_elements VALUES (?, ?)", elements)
        return len(rows)

    def invalidate(self, label_ids: Iterable[str]) -> None:
        """Forget these labels so that the next sync reads them again (after an in-place overwrite)."""
        conn = self.connect()
        ids = list(label_ids)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start:start + _BATCH]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM label_elements WHERE k IN (SELECT k FROM labels WHERE label_id IN ({marks}))",
                             chunk)
                conn.execute(f"DELETE FROM labels WHERE label_id IN ({marks})", chunk)
            conn.execute("DELETE FROM meta WHERE key='token'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- queries --------------------------------------------------------------------------------

    def select(self, where: str, params: Sequence[Any], columns: str = "k") -> list[tuple]:
        conn = self.connect()
        return conn.execute(f"SELECT {columns} FROM labels WHERE {where} ORDER BY rowid", list(params)).fetchall()

    def count(self, where: str, params: Sequence[Any]) -> int:
        conn = self.connect()
        return int(conn.execute(f"SELECT COUNT(*) FROM labels WHERE {where}", list(params)).fetchone()[0])

    def group_count(self, column: str, where: str, params: Sequence[Any]) -> dict[Any, int]:
        if column not in INDEXED_COLUMNS:
            raise ValueError(f"cannot group by {column!r}")
        conn = self.connect()
        sql = f"SELECT {column}, COUNT(*) FROM labels WHERE {where} GROUP BY {column}"
        return {k: int(n) for k, n in conn.execute(sql, list(params))}

    def query_plan(self, where: str, params: Sequence[Any]) -> list[str]:
        conn = self.connect()
        return [r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT k FROM labels WHERE {where}", list(params))]

    def read(self, keys: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Decoded documents for these MontyDB keys, in the order given (missing ones are skipped)."""
        conn = self.connect()
        if not self._attached:
            return
        for start in range(0, len(keys), _BATCH):
            chunk = list(keys[start:start + _BATCH])
            marks = ",".join("?" * len(chunk))
            found = {k: v for k, v in conn.execute(f"SELECT k, v FROM m.documents WHERE k IN ({marks})", chunk)}
            for k in chunk:
                if k in found:
                    yield bson.decode(bytes(found[k]))


_INDEXES: dict[tuple, LabelIndex] = {}


def label_index(db) -> LabelIndex | None:
    """The side index of ``db.labels`` (a ``CampaignDB``; embedded MontyStore only), shared per process and thread."""
    probe = LabelIndex.for_store(db.labels)
    if probe is None:
        return None
    # one open SQLite connection per process and thread (sqlite3 connections are not shared)
    key = (str(probe.collection_file), str(probe.path), os.getpid(), threading.get_ident())
    return _INDEXES.setdefault(key, probe)


def invalidate_labels(db, label_ids: Iterable[str]) -> None:
    """Tell the side index that these labels were (re)written (no-op on MongoDB)."""
    index = label_index(db)
    if index is not None:
        index.invalidate(label_ids)
