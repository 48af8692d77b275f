"""Query the labels collection: filters by chemistry, campaign, oracle, source, size and date.

>>> q = query_labels(db, chemsys="Cu-Zr", oracle_fingerprint=fp, natoms=(None, 64))   # doctest: +SKIP
>>> q.count(), q.ids()[:3]                                                            # doctest: +SKIP
>>> for atoms in query_labels(db, campaign="cu", as_="atoms"): ...                     # doctest: +SKIP

- Results stream (generators reading in batches), so a query over 10^5 labels never holds them all.
- Labels of different levels of theory are never mixed silently: when the selected labels carry more
  than one ``oracle_fingerprint`` and the query did not pin one, reading them (or their ids) raises
  :class:`MixedOraclesError` unless ``allow_mixed_oracles=True``. ``count()`` never raises.
- An unknown filter name (``chemsystem=``) or an unknown field in ``raw`` is an error
  (:class:`UnknownFilterError`), never an empty result.
- The filter runs in the store, on the indexes of ``CAMPAIGN_COLLECTIONS``: on the MongoDB server, or
  as SQL on the embedded ``SQLiteStore``'s own indexes (what SQL cannot express, e.g. a ``$regex`` in
  ``raw``, is checked in Python on the rows SQL selected). ``explain()`` shows the plan and the indexes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Literal

from maggma.stores import MongoStore
from pymatgen.core import Composition, Element

from almat.schemas import LabelDoc, LabelStatus, StructureSource, chemsys_of
from almat.stores import CampaignDB
from almat.stores.sqlite import SQLiteStore


#: filter name -> what it matches
KNOWN_FILTERS: dict[str, str] = {
    "chemsys": "chemical system(s), e.g. 'Cu-Zr' (element order does not matter)",
    "elements": "labels containing all these elements (maybe others too)",
    "elements_exact": "labels made of exactly these elements",
    "formula": "reduced formula(s), e.g. 'CuZr2'",
    "campaign": "campaign name(s)",
    "iteration": "iteration number(s) (-1: initial data)",
    "source": "structure source(s): " + ", ".join(s.value for s in StructureSource),
    "oracle": "oracle name(s), e.g. 'ase:ase.calculators.emt.EMT'",
    "oracle_fingerprint": "oracle settings fingerprint(s)",
    "status": "'ok' (default), 'failed', or None for both",
    "natoms": "number of atoms: an int or an inclusive (min, max) range, either bound None",
    "since": "created at or after this date (datetime or ISO string; naive = UTC)",
    "until": "created before this date",
    "structure_hash": "structure hash(es)",
    "label_ids": "restrict to these label ids",
    "reused": "True: only labels copied from an earlier label; False: only labels the oracle computed",
    "raw": "an extra MongoDB filter on LabelDoc fields, ANDed with the rest",
}

_FIELDS = set(LabelDoc.model_fields) | {"_id", "last_updated"}
_LOGICAL = {"$and", "$or", "$nor"}
Output = Literal["docs", "atoms", "structures", "dicts"]


class UnknownFilterError(ValueError):
    """A filter name or raw-filter field that labels don't have."""


class MixedOraclesError(ValueError):
    """The selected labels come from more than one level of theory."""


def _unknown(name: str, known: Iterable[str], what: str) -> UnknownFilterError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownFilterError(f"unknown {what} {name!r}{hint} (known: {', '.join(known)})")


def _check_raw(raw: Any, path: str = "raw") -> None:
    if not isinstance(raw, dict):
        raise UnknownFilterError(f"{path} must be a dict (a MongoDB filter), got {type(raw).__name__}")
    for key, value in raw.items():
        if key in _LOGICAL:
            if not isinstance(value, list):
                raise UnknownFilterError(f"{path}.{key} must be a list of filters")
            for i, sub in enumerate(value):
                _check_raw(sub, f"{path}.{key}[{i}]")
        elif key.startswith("$"):
            raise UnknownFilterError(f"unsupported top-level operator {key!r} in {path}")
        elif key.split(".", 1)[0] not in _FIELDS:
            raise _unknown(key, _FIELDS - {"_id", "last_updated"}, f"label field in {path}")


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _strings(name: str, value: Any) -> list[str]:
    out = []
    for v in _as_list(value):
        v = getattr(v, "value", v)
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be a non-empty string or a list of them, got {v!r}")
        out.append(v)
    return out


def _elements(name: str, value: Any) -> list[str]:
    items = []
    for v in _strings(name, value):
        items.extend(p for p in v.replace(",", "-").split("-") if p)
    for el in items:
        try:
            Element(el)
        except ValueError:
            raise ValueError(f"{name}: {el!r} is not an element symbol") from None
    return sorted(set(items))


def _normalise(filters: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise filter values; unknown names raise ``UnknownFilterError``."""
    for key in filters:
        if key not in KNOWN_FILTERS:
            raise _unknown(key, KNOWN_FILTERS, "filter")
    f: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None and key != "status":
            continue
        if key == "chemsys":
            f[key] = sorted({chemsys_of(_elements(key, s)) for s in _strings(key, value)})
        elif key == "elements":
            f[key] = _elements(key, value)
        elif key == "elements_exact":
            continue  # below: exactly these elements is a chemical system
        elif key == "formula":
            f[key] = sorted({Composition(s).reduced_formula for s in _strings(key, value)})
        elif key in ("campaign", "oracle", "oracle_fingerprint", "structure_hash", "label_ids"):
            f[key] = _strings(key, value)
        elif key == "iteration":
            its = _as_list(value)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in its):
                raise ValueError(f"iteration must be an int or a list of ints, got {value!r}")
            f[key] = its
        elif key == "source":
            try:
                f[key] = [StructureSource(getattr(v, "value", v)).value for v in _as_list(value)]
            except ValueError as exc:
                raise ValueError(f"source: {exc}; known: {', '.join(s.value for s in StructureSource)}") from None
        elif key == "status":
            if value in (None, "any"):
                continue
            f[key] = LabelStatus(getattr(value, "value", value)).value
        elif key == "natoms":
            if isinstance(value, int) and not isinstance(value, bool):
                lo = hi = value
            elif isinstance(value, (tuple, list)) and len(value) == 2:
                lo, hi = value
            else:
                raise ValueError(f"natoms must be an int or a (min, max) pair, got {value!r}")
            f[key] = (lo, hi)
        elif key in ("since", "until"):
            if not isinstance(value, (datetime, str)):
                raise ValueError(f"{key} must be a datetime or an ISO date string, got {value!r}")
            value = datetime.fromisoformat(value) if isinstance(value, str) else value
            f[key] = value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
        elif key == "reused":
            f[key] = bool(value)
        elif key == "raw":
            _check_raw(value)
            f[key] = value
    if filters.get("elements_exact") is not None:
        exact = chemsys_of(_elements("elements_exact", filters["elements_exact"]))
        f["chemsys"] = [exact] if "chemsys" not in f or exact in f["chemsys"] else []
    return f


#: filter name -> label field, for the filters that match one value or any of a list
_EQUAL_FIELDS = {name: name for name in ("chemsys", "formula", "campaign", "oracle", "oracle_fingerprint",
                                         "structure_hash", "iteration", "source")} | {"label_ids": "label_id"}


def _mongo_criteria(f: dict[str, Any]) -> dict[str, Any]:
    """The normalised filters as a MongoDB filter (what runs on MongoDB, and post-filters elsewhere)."""
    c: dict[str, Any] = {}
    for key, fld in _EQUAL_FIELDS.items():
        if key in f:
            vals = f[key]
            c[fld] = vals[0] if len(vals) == 1 else {"$in": list(vals)}
    if "elements" in f:
        c["elements"] = {"$all": f["elements"]}
    if "status" in f:
        c["status"] = f["status"]
    if "natoms" in f:
        lo, hi = f["natoms"]
        rng = {**({"$gte": lo} if lo is not None else {}), **({"$lte": hi} if hi is not None else {})}
        if rng:
            c["natoms"] = rng
    if "since" in f or "until" in f:
        rng = {}
        if "since" in f:
            rng["$gte"] = f["since"]
        if "until" in f:
            rng["$lt"] = f["until"]
        c["created_at"] = rng
    if "reused" in f:
        c["reused_from"] = {"$ne": None} if f["reused"] else None
    if "raw" in f:
        c = {"$and": [c, f["raw"]]} if c else dict(f["raw"])
    return c


def _matches(criteria: dict[str, Any], doc: dict[str, Any]) -> bool:
    from mongomock_ng.filtering import filter_applies

    return filter_applies(criteria, doc)


def _decorate_atoms(label: LabelDoc):
    atoms = label.to_atoms()
    atoms.info.update({
        "label_id": label.label_id,
        "structure_hash": label.structure_hash,
        "campaign": label.campaign,
        "iteration": label.iteration,
        "source": label.source.value if label.source is not None else None,
        "config_type": label.source.value if label.source is not None else "Default",
        "oracle": label.oracle,
        "oracle_fingerprint": label.oracle_fingerprint,
        "status": label.status.value,
    })
    if label.reused_from:
        atoms.info["reused_from"] = label.reused_from
    return atoms


def _structure(label: LabelDoc):
    s = label.structure.copy()
    if label.ok:
        s.add_site_property("forces", [list(map(float, f)) for f in label.forces])
    props = {
        "label_id": label.label_id, "energy": label.energy, "stress": label.stress,
        "campaign": label.campaign, "iteration": label.iteration, "oracle": label.oracle,
        "oracle_fingerprint": label.oracle_fingerprint, "status": label.status.value,
        "source": label.source.value if label.source is not None else None,
    }
    try:
        s.properties.update(props)
    except AttributeError:  # pragma: no cover - old pymatgen without Structure.properties
        pass
    return s


@dataclass
class LabelQuery:
    """A query on the labels collection; build it with :func:`query_labels`."""

    db: CampaignDB
    filters: dict[str, Any] = field(default_factory=dict)
    as_: Output = "docs"
    allow_mixed_oracles: bool = False
    use_index: bool = True
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.as_ not in ("docs", "atoms", "structures", "dicts"):
            raise ValueError(f"as_ must be 'docs', 'atoms', 'structures' or 'dicts', got {self.as_!r}")
        self._f = _normalise(self.filters)

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def criteria(self) -> dict[str, Any]:
        """The MongoDB filter this query runs (on MongoDB, or translated to SQL on the embedded store)."""
        return _mongo_criteria(self._f)

    @property
    def backend(self) -> str:
        if isinstance(self.db.labels, SQLiteStore):
            return "sqlite"
        return "mongodb" if isinstance(self.db.labels, MongoStore) else type(self.db.labels).__name__

    def _raw_dicts(self, properties: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Matching documents as stored (dicts), streamed; ``use_index=False`` filters every label in Python."""
        criteria = self.criteria
        if self.use_index:
            yield from self.db.labels.query(criteria=criteria, properties=properties)
            return
        for doc in self.db.labels.query():
            if _matches(criteria, doc):
                yield doc

    def _pinned_fingerprint(self) -> bool:
        return len(self._f.get("oracle_fingerprint", [])) == 1

    def _check_mixed(self) -> None:
        if self.allow_mixed_oracles or self._pinned_fingerprint():
            return
        fps = self.oracle_fingerprints()
        if len(fps) > 1:
            detail = ", ".join(f"{fp} ({n} labels)" for fp, n in sorted(fps.items(), key=lambda x: -x[1]))
            raise MixedOraclesError(
                f"the selected labels come from {len(fps)} oracle settings: {detail}. Labels of different "
                "levels of theory are not mixed silently: pass oracle_fingerprint=... to pick one, or "
                "allow_mixed_oracles=True"
            )

    # -- results ---------------------------------------------------------------------------------

    def count(self) -> int:
        """How many labels match (never raises on mixed oracles)."""
        if self.use_index:
            return self.db.labels.count(self.criteria)
        return sum(1 for _ in self._raw_dicts())

    def oracle_fingerprints(self) -> dict[str, int]:
        """Number of matching labels per oracle fingerprint."""
        return self.group_count("oracle_fingerprint")

    def group_count(self, field_name: str) -> dict[Any, int]:
        """Number of matching labels per value of an indexed field (source, oracle, iteration, ...)."""
        if self.use_index and isinstance(self.db.labels, SQLiteStore):
            return self.db.labels.count_by(field_name, self.criteria)
        out: dict[Any, int] = {}
        for doc in self._raw_dicts(properties=[field_name]):
            v = doc.get(field_name)
            out[v] = out.get(v, 0) + 1
        return out

    def iter_ids(self) -> Iterator[str]:
        self._check_mixed()
        for doc in self._raw_dicts(properties=["label_id"]):
            yield doc["label_id"]

    def ids(self) -> list[str]:
        """The matching label ids (raises ``MixedOraclesError`` on mixed oracles unless allowed)."""
        return list(self.iter_ids())

    def dicts(self) -> Iterator[dict[str, Any]]:
        self._check_mixed()
        yield from self._raw_dicts()

    def docs(self) -> Iterator[LabelDoc]:
        for doc in self.dicts():
            yield LabelDoc.from_store(doc)

    def atoms(self):
        """ASE Atoms with the label as SinglePointCalculator results and provenance in ``info``."""
        for label in self.docs():
            yield _decorate_atoms(label)

    def structures(self):
        """pymatgen Structures with ``forces`` site properties and the label in ``properties``."""
        for label in self.docs():
            yield _structure(label)

    def __iter__(self):
        return {"docs": self.docs, "atoms": self.atoms, "structures": self.structures,
                "dicts": self.dicts}[self.as_]()

    def first(self):
        return next(iter(self), None)

    def explain(self) -> dict[str, Any]:
        """How the backend answers this query, and whether it uses an index."""
        store = self.db.labels
        if not self.use_index:
            return {"backend": self.backend, "uses_index": False,
                    "reason": "use_index=False: every label is read and filtered in Python"}
        if isinstance(store, SQLiteStore):
            plan = store.explain(self.criteria)
            return {"backend": "sqlite", **plan, "post_filter": bool(plan["python_filter"]),
                    "indexed_fields": sorted(_fields(self.criteria) - _fields(plan["python_filter"]))}
        try:
            plan = store._collection.find(self.criteria).explain()
        except Exception as exc:  # noqa: BLE001 - mongomock, MemoryStore...
            return {"backend": self.backend, "supported": False, "uses_index": False,
                    "reason": f"explain() not available: {type(exc).__name__}: {exc}"}
        winning = plan.get("queryPlanner", {}).get("winningPlan", {})
        names: list[str] = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("stage") == "IXSCAN" and "indexName" in node:
                    names.append(node["indexName"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(winning)
        return {"backend": "mongodb", "plan": winning, "indexes": names, "uses_index": bool(names)}


def _fields(criteria: Any) -> set[str]:
    """The field names a MongoDB filter tests."""
    if isinstance(criteria, list):
        return set().union(*map(_fields, criteria)) if criteria else set()
    if not isinstance(criteria, dict):
        return set()
    return {k for k in criteria if not k.startswith("$")} | _fields([v for k, v in criteria.items() if k in _LOGICAL])


def query_labels(
    db: CampaignDB,
    *,
    as_: Output = "docs",
    allow_mixed_oracles: bool = False,
    use_index: bool = True,
    **filters: Any,
) -> LabelQuery:
    """A :class:`LabelQuery` on ``db.labels``; see :data:`KNOWN_FILTERS` for the filters.

    Iterate it for ``as_`` objects (docs, atoms, structures or dicts), or call ``count()``, ``ids()``,
    ``explain()``. ``status`` defaults to ``'ok'``.
    """
    filters.setdefault("status", "ok")
    return LabelQuery(db, filters, as_=as_, allow_mixed_oracles=allow_mixed_oracles, use_index=use_index)


def reuse_summary(db: CampaignDB, campaign: str | list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per campaign: ok labels, how many were reused (no oracle call), and the oracle calls paid."""
    q = LabelQuery(db, {"campaign": campaign, "status": "ok"})
    total = q.group_count("campaign")
    reused = LabelQuery(db, {"campaign": campaign, "status": "ok", "reused": True}).group_count("campaign")
    return {c: {"labels": n, "reused": reused.get(c, 0), "oracle_calls": n - reused.get(c, 0)}
            for c, n in sorted(total.items(), key=lambda x: str(x[0]))}
