"""``SQLiteStore``: a maggma ``Store`` in one SQLite file, with real indexes, safe for several processes.

- One table per collection: ``(id, k, doc)``, documents as BSON blobs; ``k`` is the unique key of
  ``update(docs, key=...)`` (the key of the collection's first update), so upserts are one indexed write.
- ``ensure_index(field)`` adds ``field`` to the collection's index table ``<collection>$ix``: one row
  ``(field, type, value, id)`` per value, extracted in Python on write and backfilled when the index is
  added. Arrays give one row per element, so ``{"elements": "Cu"}`` and ``$all`` work as in MongoDB.
- Queries: the criteria on indexed fields (equality, ``$in``, ``$nin``, ``$ne``, ``$gt``..``$lte``,
  ``$exists``, ``$all``, ``$and``/``$or``/``$nor`` of those) run in SQL; the rest is checked in Python
  with mongomock's ``filter_applies``. ``explain(criteria)`` shows which part ran where.
- ``ensure_index(field, unique=True)`` adds a unique SQL index on the field's index rows: a document that
  repeats another's value is refused in one line naming the field (those without it are not checked).
- WAL journal, a busy timeout, one connection per store and process (reopened after a fork), every write
  one ``BEGIN IMMEDIATE`` transaction: several processes can read and write the same file.
- A reader writes nothing: on a file it may not write, a collection never written reads as empty.
- SQLite errors become a one-line :class:`StoreError` (read-only, disk full, locked, not a database).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import bson
from bson.raw_bson import RawBSONDocument
from maggma.core import Store
from monty.json import jsanitize

# value types of the index, in MongoDB's sort order
NULL, NUMBER, STRING, OTHER, BOOL, DATE = range(6)
_BATCH = 500
_META = "_almat_collections"
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_MISSING = object()


class StoreError(ValueError):
    """The embedded store cannot be used: the message says why and where."""


def _typed(value: Any) -> tuple[int, Any]:
    """(type, SQL value) of one scalar as the index keeps it; OTHER for what it does not compare."""
    if value is None:
        return NULL, 0
    if isinstance(value, bool):
        return BOOL, int(value)
    if isinstance(value, (int, float)):
        if value != value or abs(value) >= 2**63:  # NaN; integers SQLite cannot hold
            return (OTHER, 0) if value != value else (NUMBER, float(value))
        return NUMBER, value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return DATE, value.replace(microsecond=value.microsecond // 1000 * 1000).isoformat(timespec="microseconds")
    return OTHER, 0


def _untyped(t: int, v: Any) -> Any:
    return None if t == NULL else bool(v) if t == BOOL else datetime.fromisoformat(v) if t == DATE else v


def _values(doc: Mapping, path: str) -> tuple[list[tuple[int, Any]], bool]:
    """The index rows of ``doc`` at a (dotted) path, one per array element (MongoDB style), and
    whether an array was met on the way (a *multikey* field)."""
    found, multi = [doc], False
    for part in path.split("."):
        nxt = []
        for item in found:
            multi |= isinstance(item, (list, tuple))
            for sub in item if isinstance(item, (list, tuple)) else [item]:
                if isinstance(sub, Mapping) and part in sub:
                    nxt.append(sub[part])
        found = nxt
    rows = []
    for value in found:
        if isinstance(value, (list, tuple)):
            multi = True
            rows.extend(_typed(v) if not isinstance(v, (list, Mapping)) else (OTHER, 0) for v in value)
            if not value:
                rows.append((OTHER, 0))
        else:
            rows.append(_typed(value))
    return rows, multi


def _encode(doc: Any) -> tuple[Mapping, bytes]:
    """The document as stored and its BSON (``jsanitize`` only when BSON can't encode it as it is)."""
    try:
        return doc, bson.encode(doc)
    except (bson.errors.InvalidDocument, TypeError):
        doc = jsanitize(doc, allow_bson=True, recursive_msonable=True)
        return doc, bson.encode(doc)


def _get(doc: Any, path: str) -> Any:
    """The value at a dotted path (list items by number), or ``_MISSING``."""
    for part in path.split("."):
        if isinstance(doc, Mapping) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _plain(value: Any) -> Any:
    if isinstance(value, RawBSONDocument):
        return bson.decode(value.raw)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _project(doc: Mapping, props: list[str]) -> dict:
    out: dict = {}
    for p in props:
        if (value := _get(doc, p)) is not _MISSING:
            _set(out, p, _plain(value))
    return out


def _properties(properties: Any) -> list[str] | None:
    if isinstance(properties, dict):
        properties = [k for k, v in properties.items() if v]
    return list(properties) if properties else None


def _sort_key(value: Any) -> tuple:
    t, v = _typed(min(value, default=None, key=_sort_key) if isinstance(value, list) else value)
    return (t, v if t != OTHER else str(value))


class SQLiteStore(Store):
    """A maggma Store on one collection of an SQLite file (see the module notes)."""

    def __init__(self, collection_name: str, database_path: str | Path, timeout: float = 60.0, **kwargs):
        """
        Args:
            collection_name: the collection (one table of the file).
            database_path: the SQLite file; its folder is created on connect.
            timeout: seconds to wait for another process's write before giving up.
        """
        self.collection_name = collection_name
        self.database_path = str(database_path)
        self.timeout = timeout
        self.kwargs = kwargs
        self._conn: sqlite3.Connection | None = None
        self._pid = None
        self._lock = threading.RLock()
        q = '"' + collection_name.replace('"', '""')
        self._t, self._ix = q + '"', q + '$ix"'
        super().__init__(**kwargs)

    # -- connection --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"sqlite://{self.database_path}/{self.collection_name}"

    @property
    def _collection(self) -> sqlite3.Connection:
        return self._db

    def connect(self, force_reset: bool = False) -> None:
        if force_reset:
            self.close()
        self._db  # noqa: B018 - opens the connection

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own connection
            path = Path(self.database_path)
            if path.is_dir():
                raise StoreError(f"the embedded store {path} is a folder, not an SQLite file")
            with self._errors():
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._conn, self._pid = conn, os.getpid()
                missing = not conn.execute("SELECT 1 FROM sqlite_master WHERE name=?",
                                           (self.collection_name,)).fetchone()
            if missing:
                try:
                    with self._write() as c:
                        self._create(c)
                except StoreError as exc:
                    if "read-only" not in str(exc):
                        raise
                    with self._errors():  # a reader: a collection not written yet reads as empty, as on MongoDB
                        self._create(conn, "TEMP ")
        return self._conn

    def _create(self, c: sqlite3.Connection, temp: str = "") -> None:
        c.execute(f"CREATE {temp}TABLE IF NOT EXISTS {_META} (name TEXT PRIMARY KEY, key TEXT, "
                  "fields TEXT NOT NULL DEFAULT '[]', multi TEXT NOT NULL DEFAULT '[]')")
        c.execute(f"INSERT OR IGNORE INTO {_META} (name) VALUES (?)", (self.collection_name,))
        c.execute(f"CREATE {temp}TABLE IF NOT EXISTS {self._t} "
                  "(id INTEGER PRIMARY KEY, k TEXT UNIQUE, doc BLOB NOT NULL)")
        c.execute(f"CREATE {temp}TABLE IF NOT EXISTS {self._ix} (f INTEGER NOT NULL, t INTEGER NOT NULL, "
                  "v NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (f, t, v, id)) WITHOUT ROWID")
        c.execute(f'CREATE INDEX IF NOT EXISTS {self._ix[:-1]}_id" ON {self._ix} (id, f)')

    @contextmanager
    def _errors(self):
        """SQLite's errors as one-line ``StoreError``s naming the file."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            msg, where = str(exc), f"the embedded store {self.database_path}"
            if "readonly" in msg or "read-only" in msg.lower() or isinstance(exc, PermissionError):
                why = f"{where} is read-only: make the file and its folder writable, or set ALMAT_DB_PATH"
            elif "disk is full" in msg or "No space" in msg:
                why = f"{where} cannot grow: the database or disk is full; free space or set ALMAT_DB_PATH"
            elif "locked" in msg or "busy" in msg:
                why = f"{where} stayed locked by another process for more than {self.timeout:g} s"
            elif "unable to open" in msg:
                why = f"cannot open {where}: the file or its folder is read-only or missing"
            elif "not a database" in msg or "malformed" in msg:
                why = f"{where} is not an SQLite database (or is damaged)"
            else:
                why = f"{where}: {type(exc).__name__}"
            raise StoreError(f"{why} ({msg})") from exc

    @contextmanager
    def _write(self):
        """One write transaction (``BEGIN IMMEDIATE``: waits up to ``timeout`` for other writers)."""
        with self._lock, self._errors():
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _rows(self, sql: str, params=()) -> list[tuple]:
        with self._errors():
            return self._db.execute(sql, list(params)).fetchall()

    def _meta(self, conn=None) -> tuple[list[str] | None, list[str], list[str]]:
        """(key fields of ``update``, indexed fields, multikey fields) as stored in the file (another
        process may have added some)."""
        key, fields, multi = (conn or self._db).execute(f"SELECT key, fields, multi FROM {_META} WHERE name=?",
                                                        (self.collection_name,)).fetchone()
        return (json.loads(key) if key else None), json.loads(fields), json.loads(multi)

    # -- writing -----------------------------------------------------------------------------------

    def _index_docs(self, conn, docs: Iterable[tuple[int, Mapping]], fields: list[str], only=None) -> None:
        """(Re)write the index rows of these documents (only of the fields ``only`` when given)."""
        multi = set()
        for doc_id, doc in docs:
            if only is None:
                conn.execute(f"DELETE FROM {self._ix} WHERE id=?", (doc_id,))
            rows = []
            for f, name in enumerate(fields):
                if only is None or name in only:
                    values, many = _values(doc, name)
                    rows += [(f, t, v, doc_id) for t, v in values]
                    multi |= {name} if many else set()
            try:  # only a repeated value within the document is skipped: a unique index still refuses
                conn.executemany(f"INSERT INTO {self._ix} VALUES (?, ?, ?, ?) ON CONFLICT (f, t, v, id) DO NOTHING",
                                 rows)
            except sqlite3.IntegrityError:
                raise self._duplicate(conn, rows, fields) from None
        known = self._meta(conn)[2]
        if multi - set(known):
            conn.execute(f"UPDATE {_META} SET multi=? WHERE name=?", (json.dumps(known + sorted(multi - set(known))),
                                                                      self.collection_name))

    def _add_index(self, conn, fields: list[str], new: list[str]) -> list[str]:
        fields = fields + [f for f in new if f not in fields]
        conn.execute(f"UPDATE {_META} SET fields=? WHERE name=?", (json.dumps(fields), self.collection_name))
        rows = conn.execute(f"SELECT id, doc FROM {self._t}").fetchall()  # backfill
        self._index_docs(conn, ((i, RawBSONDocument(blob)) for i, blob in rows), fields, new)
        return fields

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        """Index ``key`` (a dotted field); existing documents are indexed now. ``unique``: no two documents may
        share a value of it (a unique SQL index on its index rows; documents without the field, or with a
        sub-document there, are not checked): a duplicate is refused, now or on a later write, in one line."""
        if key not in self._meta()[1] or (unique and key not in self.unique_fields()):
            with self._write() as conn:
                fields = self._meta(conn)[1]
                if key not in fields:
                    fields = self._add_index(conn, fields, [key])
                if unique:
                    f = fields.index(key)
                    dup = conn.execute(f"SELECT t, v FROM {self._ix} WHERE f=? AND t<>{OTHER} GROUP BY t, v "
                                       "HAVING COUNT(*) > 1 LIMIT 1", (f,)).fetchone()
                    if dup:
                        raise StoreError(f"cannot make {key!r} unique in {self.collection_name}: several documents "
                                         f"have {key} = {_untyped(*dup)!r}")
                    conn.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS {self._ix[:-1]}$unique{f}" '
                                 f"ON {self._ix} (t, v) WHERE f={f} AND t<>{OTHER}")
        return True

    def check_writable(self) -> None:
        """A one-line ``StoreError`` ("... is read-only ...") when this process may not write the file."""
        with self._write() as conn:  # rewrites the file's header as it is: a write that changes nothing
            conn.execute(f"PRAGMA main.user_version = {int(conn.execute('PRAGMA main.user_version').fetchone()[0])}")

    def unique_fields(self, conn=None) -> list[str]:
        """The fields with a unique index (``ensure_index(field, unique=True)``)."""
        fields, mark = self._meta(conn)[1], f"{self.collection_name}$ix$unique"
        names = (conn or self._db).execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?",
                                           (f"{self.collection_name}$ix",)).fetchall()
        return [fields[int(n[len(mark):])] for n, in names if n.startswith(mark)]

    def _duplicate(self, conn, rows: list[tuple], fields: list[str]) -> StoreError:
        """The one-line error for index rows that a unique index refused: which field and value."""
        unique = {fields.index(name) for name in self.unique_fields(conn)}
        for f, t, v, doc_id in rows:
            if f in unique and t != OTHER and conn.execute(
                    f"SELECT 1 FROM {self._ix} WHERE f=? AND t=? AND v=? AND id<>?", (f, t, v, doc_id)).fetchone():
                return StoreError(f"duplicate key in {self.collection_name}: another document has {fields[f]} = "
                                  f"{_untyped(t, v)!r} (a unique index)")
        return StoreError(f"a unique index of {self.collection_name} refused a document")

    def update(self, docs: list[dict] | dict, key: list | str | None = None) -> None:
        """Insert or replace documents on ``key`` (default: the store's key), as MongoDB's upsert does."""
        docs = docs if isinstance(docs, list) else [docs]
        key = key or self.key
        key = [key] if isinstance(key, str) else list(key)
        docs, blobs = zip(*map(_encode, docs)) if docs else ((), ())
        with self._write() as conn:
            table_key, fields, _ = self._meta(conn)
            if table_key is None:  # the first update's key is the collection's unique key
                table_key = key
                conn.execute(f"UPDATE {_META} SET key=? WHERE name=?", (json.dumps(key), self.collection_name))
            if any(k not in fields for k in key):
                fields = self._add_index(conn, fields, key)
            ids = []
            for doc, blob in zip(docs, blobs):
                k = json.dumps([doc.get(f) for f in table_key], sort_keys=True, default=str)
                found = None if key == table_key else self._ids(conn, {f: doc.get(f) for f in key}, limit=1)
                if found:
                    conn.execute(f"UPDATE {self._t} SET k=?, doc=? WHERE id=?", (k, blob, found[0]))
                    doc_id = found[0]
                else:
                    doc_id = conn.execute(f"INSERT INTO {self._t} (k, doc) VALUES (?, ?) ON CONFLICT (k) DO UPDATE "
                                          "SET doc=excluded.doc RETURNING id", (k, blob)).fetchone()[0]
                ids.append(doc_id)
            self._index_docs(conn, zip(ids, docs), fields)

    def remove_docs(self, criteria: dict) -> None:
        with self._write() as conn:
            ids = self._ids(conn, criteria)
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start:start + _BATCH]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM {self._ix} WHERE id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM {self._t} WHERE id IN ({marks})", chunk)

    # -- criteria to SQL ---------------------------------------------------------------------------

    def _sql(self, criteria: dict, fields: list[str]) -> tuple[list[str], list, dict]:
        """The criteria as SQL conditions on ``id`` with their parameters, and the rest for Python."""
        parts: list[str] = []
        params: list = []
        rest: dict = {}
        for name, cond in (criteria or {}).items():
            if name == "$and" and isinstance(cond, list):
                subs = []
                for sub in cond:
                    p, q, r = self._sql(sub, fields)
                    parts += p
                    params += q
                    subs += [r] if r else []
                if subs:
                    rest.setdefault("$and", []).extend(subs)
            elif name in ("$or", "$nor") and isinstance(cond, list) and cond:
                branches = [self._sql(sub, fields) for sub in cond]
                if any(r for _, _, r in branches):
                    rest[name] = cond
                    continue
                sql = " OR ".join("(" + (" AND ".join(p) or "1") + ")" for p, _, _ in branches)
                parts.append(f"({sql})" if name == "$or" else f"NOT ({sql})")
                params += [x for _, q, _ in branches for x in q]
            elif name.startswith("$") or name not in fields:
                rest[name] = cond
            else:
                f = fields.index(name)
                ops = cond if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond) else {"$eq": cond}
                for op, value in ops.items():
                    got = self._op(f, op, value)
                    if got is None:
                        rest.setdefault(name, {})[op] = value
                    else:
                        parts.append(got[0])
                        params += got[1]
        rest = {k: (v["$eq"] if isinstance(v, dict) and list(v) == ["$eq"] else v) for k, v in rest.items()}
        return parts, params, rest

    def _op(self, f: int, op: str, value: Any) -> tuple[str, list] | None:
        """One operator on indexed field number ``f`` as SQL, or None when it must run in Python."""
        sub = f"SELECT id FROM {self._ix} WHERE f={f}"
        if op == "$exists":
            return f"id {'' if value else 'NOT '}IN ({sub})", []
        if op in ("$in", "$nin", "$all"):
            if not isinstance(value, (list, tuple)):
                return None
            typed = [_typed(v) for v in value]
            if any(t in (NULL, OTHER) for t, _ in typed):
                return None
            if not typed:
                return ("0" if op != "$nin" else "1"), []
            if op == "$all":
                return " AND ".join([f"id IN ({sub} AND t=? AND v=?)"] * len(typed)), [x for tv in typed for x in tv]
            groups = {t: [v for t2, v in typed if t2 == t] for t, _ in typed}
            sql = " OR ".join(f"(t={t} AND v IN ({','.join('?' * len(vs))}))" for t, vs in groups.items())
            return f"id {'NOT ' if op == '$nin' else ''}IN ({sub} AND ({sql}))", [v for vs in groups.values() for v in vs]
        t, v = _typed(value)
        if t == OTHER:
            return None
        if op in ("$eq", "$ne") and t == NULL:
            sql = f"(id NOT IN ({sub}) OR id IN ({sub} AND t={NULL}))"
            return (sql, []) if op == "$eq" else (f"NOT {sql}", [])
        if op in ("$eq", "$ne"):
            return f"id {'NOT ' if op == '$ne' else ''}IN ({sub} AND t={t} AND v=?)", [v]
        if op in _RANGE and t != NULL:
            return f"id IN ({sub} AND t={t} AND v {_RANGE[op]} ?)", [v]
        return None

    def _plan(self, criteria: dict | None, conn=None) -> tuple[str, list, dict, list[str]]:
        _, fields, _ = self._meta(conn)
        parts, params, rest = self._sql(criteria or {}, fields)
        return " AND ".join(parts) or "1", params, rest, fields

    def _ids(self, conn, criteria: dict | None, limit: int = 0) -> list[int]:
        where, params, rest, _ = self._plan(criteria, conn)
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {self._t} WHERE {where} ORDER BY id", params)]
        if rest:
            ids = [i for i, doc in self._read(ids, conn) if _matches(rest, doc)]
        return ids[:limit] if limit else ids

    def _read(self, ids: list[int], conn=None, raw: bool = False) -> Iterator[tuple[int, Mapping]]:
        """The documents of these ids, in this order, read in batches (missing ones skipped)."""
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            with self._errors():
                found = dict((conn or self._db).execute(
                    f"SELECT id, doc FROM {self._t} WHERE id IN ({','.join('?' * len(chunk))})", chunk))
            for i in chunk:
                if i in found:
                    yield i, RawBSONDocument(found[i]) if raw else bson.decode(found[i])

    # -- reading -----------------------------------------------------------------------------------

    def query(self, criteria: dict | None = None, properties: dict | list | None = None,
              sort: dict | None = None, skip: int = 0, limit: int = 0) -> Iterator[dict]:
        where, params, rest, fields = self._plan(criteria)
        sort = {k: getattr(v, "value", v) for k, v in (sort or {}).items()}
        in_sql = all(k in fields for k in sort) and not rest
        order = ["id"]
        if in_sql and sort:
            order = []
            for name, d in sort.items():
                pick = f"(SELECT {{}} FROM {self._ix} x WHERE x.id={self._t}.id AND x.f={fields.index(name)} " \
                       f"ORDER BY t {'DESC' if d < 0 else ''}, v {'DESC' if d < 0 else ''} LIMIT 1)"
                order += [f"{pick.format(c)} {'DESC' if d < 0 else 'ASC'}" for c in ("t", "v")]
            order.append("id")
        sql = f"SELECT id FROM {self._t} WHERE {where} ORDER BY {', '.join(order)}"
        if in_sql and (skip or limit):
            sql, params = sql + " LIMIT ? OFFSET ?", params + [limit or -1, skip]
        props = _properties(properties)
        ids = [r[0] for r in self._rows(sql, params)]
        if props and not rest and (in_sql or not sort) and not set(props) - (set(fields) - set(self._meta()[2])):
            yield from self._covered(ids, props, fields)  # every property is a single-valued indexed field
            return
        docs = (d for _, d in self._read(ids, raw=bool(props) and not rest))
        if rest:
            docs = (d for d in docs if _matches(rest, d))
        if not in_sql:
            if sort:
                docs = list(docs)
                for name, d in reversed(sort.items()):
                    docs.sort(key=lambda doc, n=name: _sort_key(_get(doc, n)), reverse=d < 0)
            docs = itertools.islice(docs, skip, skip + limit if limit else None)
        yield from (docs if props is None else (_project(doc, props) for doc in docs))

    def _covered(self, ids: list[int], props: list[str], fields: list[str]) -> Iterator[dict]:
        """Projections read from the index alone (no document decoded unless a value is not a scalar)."""
        fids = {fields.index(p): p for p in props}
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            found: dict[int, dict] = {}
            for i, f, t, v in self._rows(f"SELECT id, f, t, v FROM {self._ix} WHERE id IN ({','.join('?' * len(chunk))})"
                                         f" AND f IN ({','.join(map(str, fids))})", chunk):
                found.setdefault(i, {})[f] = (t, v)
            for i in chunk:
                got = found.get(i, {})
                if any(t == OTHER for t, _ in got.values()):  # a dict or an empty list: read the document
                    yield from (_project(d, props) for _, d in self._read([i], raw=True))
                    continue
                out: dict = {}
                for f, (t, v) in got.items():
                    _set(out, fids[f], _untyped(t, v))
                yield out

    def count(self, criteria: dict | None = None, hint: dict | None = None) -> int:
        where, params, rest, _ = self._plan(criteria)
        if rest:
            return sum(1 for _ in self.query(criteria))
        return self._rows(f"SELECT COUNT(*) FROM {self._t} WHERE {where}", params)[0][0]

    def count_by(self, field: str, criteria: dict | None = None) -> dict[Any, int]:
        """Number of matching documents per value of ``field`` (array elements count one by one)."""
        where, params, rest, fields = self._plan(criteria)
        if field in fields and not rest:
            rows = self._rows(f"SELECT t, v, COUNT(*) FROM {self._ix} WHERE f=? AND id IN "
                              f"(SELECT id FROM {self._t} WHERE {where}) GROUP BY t, v", [fields.index(field), *params])
            if all(t != OTHER for t, _, _ in rows):
                out = {_untyped(t, v): n for t, v, n in rows}
                missing = self.count(criteria) - self._rows(
                    f"SELECT COUNT(DISTINCT id) FROM {self._ix} WHERE f=? AND id IN "
                    f"(SELECT id FROM {self._t} WHERE {where})", [fields.index(field), *params])[0][0]
                if missing:
                    out[None] = out.get(None, 0) + missing
                return out
        out: dict[Any, int] = {}
        for doc in self.query(criteria, properties=[field]):
            value = _get(doc, field)
            for v in value if isinstance(value, list) else [None if value is _MISSING else value]:
                out[v] = out.get(v, 0) + 1
        return out

    def distinct(self, field: str, criteria: dict | None = None, all_exist: bool = False) -> list:
        return [v for v in self.count_by(field, criteria) if v is not None]

    def groupby(self, keys: list[str] | str, criteria: dict | None = None, properties: dict | list | None = None,
                sort: dict | None = None, skip: int = 0, limit: int = 0) -> Iterator[tuple[dict, list[dict]]]:
        keys = [keys] if isinstance(keys, str) else list(keys)
        props = _properties(properties)
        docs = [d for d in self.query(criteria, props and props + keys, sort)
                if all(_get(d, k) is not _MISSING for k in keys)]

        def group_key(doc):
            return json.dumps([_get(doc, k) for k in keys], sort_keys=True, default=str)

        groups = itertools.groupby(sorted(docs, key=group_key), key=group_key)
        for _, group in itertools.islice(groups, skip, skip + limit if limit else None):
            group = list(group)
            first: dict = {}
            for k in keys:
                _set(first, k, _get(group[0], k))
            yield first, group

    def explain(self, criteria: dict | None = None) -> dict[str, Any]:
        """Which criteria run in SQL (and SQLite's plan for them), and which in Python."""
        where, params, rest, fields = self._plan(criteria)
        plan = [r[-1] for r in self._rows(f"EXPLAIN QUERY PLAN SELECT id FROM {self._t} WHERE {where}", params)]
        return {"sql": where, "plan": plan, "python_filter": rest,
                "uses_index": any("INDEX" in step or "PRIMARY KEY" in step for step in plan)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SQLiteStore) and (
            os.path.abspath(self.database_path), self.collection_name) == (
            os.path.abspath(other.database_path), other.collection_name)

    def __hash__(self) -> int:
        return hash((os.path.abspath(self.database_path), self.collection_name))


def _matches(criteria: dict, doc: Mapping) -> bool:
    from mongomock_ng.filtering import filter_applies

    return filter_applies(criteria, doc)
