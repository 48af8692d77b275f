"""Export labels for training and exchange; import them into another store.

Details: ``docs/architecture.md``, module notes (almat/export/io.py)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import ase.db
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.extxyz import write_extxyz as ase_write_extxyz
from pydantic import ValidationError

from almat.campaign.config import format_validation_error
from almat.query import query_labels
from almat.schemas import LabelDoc, structure_hash, to_atoms, utcnow
from almat.stores import CampaignDB

EXPORT_FORMATS = ("extxyz", "ase-db", "jsonl")
_SUFFIXES = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "ase-db", ".jsonl": "jsonl"}
JSONL_KIND = "almat-labels"
JSONL_VERSION = 1

#: the keys MACE's CLI reads by default (mace-torch 0.3.16 DefaultKeys)
logger = logging.getLogger(__name__)

MACE_ENERGY_KEY, MACE_FORCES_KEY, MACE_STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"


class LabelImportError(ValueError):
    """An import file was rejected as a whole (the message names the line)."""


@dataclass
class ExportResult:
    path: Path
    format: str
    n_labels: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "n_labels": self.n_labels}


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        return fmt
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot tell the format from {path.name!r}: use a suffix "
                         f"({', '.join(_SUFFIXES)}) or pass fmt") from None


@contextmanager
def _atomic_output(path: Path, force: bool):
    """A temp path next to ``path``, renamed onto it on success; refuses an existing file unless forced."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers create it (ase.db needs a fresh file)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _voigt(stress: Any) -> np.ndarray:
    s = np.asarray(stress, dtype=float)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def _provenance(label: LabelDoc) -> dict[str, Any]:
    info = {
        "label_id": label.label_id,
        "structure_hash": label.structure_hash,
        "campaign": label.campaign,
        "iteration": label.iteration,
        "oracle": label.oracle,
        "oracle_fingerprint": label.oracle_fingerprint,
        "reused_from": label.reused_from,
    }
    return {k: v for k, v in info.items() if v is not None}


def label_to_mace_atoms(label: LabelDoc):
    """ASE Atoms carrying the label under MACE's default keys (no calculator attached)."""
    atoms = to_atoms(label.structure)
    atoms.info[MACE_ENERGY_KEY] = float(label.energy)
    atoms.arrays[MACE_FORCES_KEY] = np.asarray(label.forces, dtype=float)
    if label.stress is not None:
        atoms.info[MACE_STRESS_KEY] = _voigt(label.stress)
    atoms.info["config_type"] = label.source.value if label.source is not None else "Default"
    atoms.info.update(_provenance(label))
    if label.energy_weight is not None:
        atoms.info["config_energy_weight"] = float(label.energy_weight)  # MACE's per-config key
    if label.force_weights is not None:
        atoms.arrays["force_weights"] = np.asarray(label.force_weights, dtype=float)
    return atoms


def write_extxyz(labels: Iterable[LabelDoc], path: str | Path, force: bool = False) -> int:
    """Write the ok labels as extended XYZ for MACE; returns how many frames were written."""
    n = masked = 0
    with _atomic_output(Path(path), force) as tmp, open(tmp, "w") as fh:
        for label in labels:
            if label.ok:
                ase_write_extxyz(fh, [label_to_mace_atoms(label)])
                n += 1
                masked += label.force_weights is not None and min(label.force_weights) < 1
    if masked:
        logger.warning("%d of %d frames are NFT chunks with per-atom force weights (arrays 'force_weights'); "
                       "MACE's CLI ignores them and would fit the masked forces too", masked, n)
    return n


def write_ase_db(labels: Iterable[LabelDoc], path: str | Path, force: bool = False) -> int:
    """Write the ok labels to an ASE database (results + provenance key-value pairs)."""
    n = 0
    with _atomic_output(Path(path), force) as tmp:
        with ase.db.connect(str(tmp), type="db", append=False) as con:
            for label in labels:
                if not label.ok:
                    continue
                atoms = to_atoms(label.structure)
                results: dict[str, Any] = {"energy": label.energy, "forces": np.asarray(label.forces)}
                if label.stress is not None:
                    results["stress"] = _voigt(label.stress)
                atoms.calc = SinglePointCalculator(atoms, **results)
                kvp = _provenance(label)
                kvp["config_type"] = label.source.value if label.source is not None else "Default"
                data: dict[str, Any] = {"oracle_settings": label.oracle_settings}
                if label.energy_weight is not None:
                    kvp["energy_weight"] = float(label.energy_weight)
                if label.force_weights is not None:
                    data["force_weights"] = np.asarray(label.force_weights, dtype=float)
                con.write(atoms, key_value_pairs=kvp, data=data)
                n += 1
    return n


def _json_default(obj: Any):
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_jsonl(labels: Iterable[LabelDoc], path: str | Path, force: bool = False) -> int:
    """Write every field of every label, one per line, between a header and an end line."""
    n = 0
    with _atomic_output(Path(path), force) as tmp, open(tmp, "w") as fh:
        fh.write(json.dumps({"kind": JSONL_KIND, "version": JSONL_VERSION, "created_at": utcnow().isoformat()})
                 + "\n")
        for label in labels:
            fh.write(json.dumps(label.to_store(), default=_json_default, allow_nan=False) + "\n")
            n += 1
        fh.write(json.dumps({"end": JSONL_KIND, "n_labels": n}) + "\n")
    return n


_WRITERS = {"extxyz": write_extxyz, "ase-db": write_ase_db, "jsonl": write_jsonl}


def export_labels(
    db: CampaignDB,
    path: str | Path,
    fmt: str | None = None,
    force: bool = False,
    labels: Iterable[LabelDoc] | None = None,
    allow_mixed_oracles: bool = False,
    **filters: Any,
) -> ExportResult:
    """Export the labels a query selects (``filters`` as in ``almat.query.query_labels``), streamed.

    For training sets (extxyz, ASE db) the labels must come from one oracle setting unless
    ``allow_mixed_oracles``: the query raises ``MixedOraclesError`` otherwise.
    """
    path = Path(path)
    fmt = _format_of(path, fmt)
    if path.exists() and not force:  # fail before running the query
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    if labels is None:
        query = query_labels(db, allow_mixed_oracles=allow_mixed_oracles, **filters)
        names = filters.get("campaign")
        unknown = [c for c in ([names] if isinstance(names, str) else names or [])
                   if db.campaigns.query_one({"name": c}) is None and db.labels.count({"campaign": c}) == 0]
        if unknown:
            known = sorted(d["name"] for d in db.campaigns.query({}, properties=["name"]))
            raise ValueError(f"no campaign {', '.join(map(repr, unknown))} in the store"
                             + (f"; known: {', '.join(known)}" if known else "") + "; nothing written")
        if query.count() == 0:
            raise ValueError("no labels match these filters; nothing written")
        labels = query.docs()
    n = _WRITERS[fmt](labels, path, force=force)
    return ExportResult(path, fmt, n)


# -- import ------------------------------------------------------------------------------------------

_REQUIRED = set(LabelDoc.model_fields)


def _validated(lineno: int, raw: Any, seen: dict[str, int]) -> LabelDoc:
    if not isinstance(raw, dict):
        raise LabelImportError(f"line {lineno}: expected a JSON object (a label), got {type(raw).__name__}")
    foreign = sorted(set(raw) - _REQUIRED)
    if foreign:
        raise LabelImportError(f"line {lineno}: unknown field(s) {', '.join(map(repr, foreign))}; "
                               "not an almat label")
    missing = sorted(_REQUIRED - set(raw))
    if missing:
        raise LabelImportError(f"line {lineno}: missing field(s) {', '.join(map(repr, missing))}")
    try:
        label = LabelDoc.model_validate(raw)
    except ValidationError as exc:  # pydantic's reasons, on one line, with the line number
        raise LabelImportError(format_validation_error(exc, f"line {lineno}: invalid label")[:500]) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a structure pymatgen can't read
        raise LabelImportError(f"line {lineno}: invalid label: {' '.join(str(exc).split())[:500]}") from None
    if structure_hash(label.structure) != label.structure_hash:
        raise LabelImportError(f"line {lineno}: structure_hash {label.structure_hash} does not match the "
                               "structure (edited or corrupted)")
    if label.label_id in seen:
        raise LabelImportError(f"line {lineno}: label_id {label.label_id} repeats line {seen[label.label_id]}")
    seen[label.label_id] = lineno
    return label


def read_jsonl(path: str | Path) -> list[LabelDoc]:
    """Read and validate a whole JSON-lines export; any problem raises ``LabelImportError`` with its line."""
    path = Path(path)
    if _SUFFIXES.get(path.suffix.lower(), "jsonl") != "jsonl":
        raise LabelImportError(f"{path.name}: import reads almat's JSON-lines exports (.jsonl); extxyz and "
                               "ASE databases are training files without the full label provenance")
    labels: list[LabelDoc] = []
    seen: dict[str, int] = {}
    end = None
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                raise LabelImportError(f"line {lineno}: empty line")
            if end is not None:
                raise LabelImportError(f"line {lineno}: data after the end line (line {end[0]})")
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabelImportError(f"line {lineno}: not JSON ({exc.msg} at column {exc.colno})") from None
            if lineno == 1:
                if not (isinstance(raw, dict) and raw.get("kind") == JSONL_KIND):
                    raise LabelImportError(f"line 1: not an almat labels export (expected a header with "
                                           f"kind={JSONL_KIND!r})")
                if raw.get("version") != JSONL_VERSION:
                    raise LabelImportError(f"line 1: unsupported export version {raw.get('version')!r}")
                continue
            if isinstance(raw, dict) and raw.get("end") == JSONL_KIND:
                end = (lineno, raw.get("n_labels"))
                continue
            labels.append(_validated(lineno, raw, seen))
    if end is None:
        raise LabelImportError(f"{path.name}: no end line: the export is truncated or was not written by almat")
    if end[1] != len(labels):
        raise LabelImportError(f"line {end[0]}: the end line announces {end[1]} labels, the file has {len(labels)}")
    return labels


def import_labels(db: CampaignDB, path: str | Path, batch_size: int = 200, replace: bool = False) -> dict[str, Any]:
    """Import a JSON-lines export into ``db``: all labels or none.

    Every line is validated first (no unknown or missing field, a valid ``LabelDoc``: finite numbers, one
    force row per atom, a stress of 6 or 9 components, known elements; a structure hash that matches its
    structure, no repeated label id); the first problem rejects the whole file with its line number.
    Labels already stored (same ``label_id``) are skipped, or overwritten with ``replace``; the result
    says which. If writing fails midway, the labels written so far are removed and the ones they
    replaced are restored.
    """
    labels = read_jsonl(path)
    ids = [lab.label_id for lab in labels]
    previous = {}
    for start in range(0, len(ids), 500):
        for doc in db.labels.query({"label_id": {"$in": ids[start:start + 500]}}):
            doc.pop("_id", None)
            previous[doc["label_id"]] = doc
    todo = labels if replace else [lab for lab in labels if lab.label_id not in previous]
    written: list[str] = []
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            db.upsert("labels", chunk)
            written.extend(lab.label_id for lab in chunk)
    except BaseException:
        new = [i for i in written if i not in previous]
        if new:
            db.labels.remove_docs({"label_id": {"$in": new}})
        restore = [previous[i] for i in written if i in previous]
        if restore:
            db.upsert("labels", restore)
        raise
    existing = sorted(previous)
    return {"n_labels": len(labels), "n_new": len(set(ids) - set(previous)),
            "n_replaced": len(existing) if replace else 0, "n_skipped": 0 if replace else len(existing),
            "existing_ids": existing}


# -- command-line entry points (wired as `almat export` / `almat import`) ------------------------------


def export_command(
    out: str | Path,
    fmt: str | None = None,
    force: bool = False,
    campaign: list[str] | str | None = None,
    chemsys: list[str] | str | None = None,
    elements: list[str] | str | None = None,
    formula: list[str] | str | None = None,
    iteration: list[int] | int | None = None,
    source: list[str] | str | None = None,
    oracle: list[str] | str | None = None,
    oracle_fingerprint: list[str] | str | None = None,
    status: str | None = "ok",
    allow_mixed_oracles: bool = False,
    settings=None,
) -> dict[str, Any]:
    """``almat export OUT``: write the selected labels; returns ``{path, format, n_labels}``."""
    filters = dict(campaign=campaign or None, chemsys=chemsys or None, elements=elements or None,
                   formula=formula or None, iteration=iteration if iteration not in (None, []) else None,
                   source=source or None, oracle=oracle or None, oracle_fingerprint=oracle_fingerprint or None,
                   status=status)
    with CampaignDB.from_settings(settings, check=True) as db:
        return export_labels(db, out, fmt=fmt, force=force, allow_mixed_oracles=allow_mixed_oracles,
                             **filters).as_dict()


def import_command(path: str | Path, settings=None, replace: bool = False) -> dict[str, Any]:
    """``almat import FILE``: import a JSON-lines export; returns counts (all or nothing)."""
    with CampaignDB.from_settings(settings, check=True).connect(indexes=True) as db:
        return {"path": str(path), **import_labels(db, path, replace=replace)}
