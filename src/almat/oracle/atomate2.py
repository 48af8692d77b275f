"""What the VASP and CP2K oracles share of atomate2: task documents read as dicts, settings hashes, and
the flow [atomate2 job, parse job] whose parse job also runs when the code job failed."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from jobflow import Flow, OnMissing
from monty.json import jsanitize
from pymatgen.core import Structure

from almat.oracle.jobs import as_structure_doc
from almat.schemas import StructureDoc

__all__ = ["as_task_dict", "code_flow", "settings_hash", "task_get", "to_structure"]


def settings_hash(settings: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the settings as sorted JSON: the oracle fingerprints (never change it,
    or stored labels would stop matching)."""
    blob = json.dumps(jsanitize(settings, strict=False), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def as_task_dict(task: Any) -> dict[str, Any] | None:
    """An atomate2 task document (pydantic model or dict) as a dict; None stays None (the job failed)."""
    if task is None:
        return None
    if hasattr(task, "model_dump"):
        return task.model_dump()
    return dict(task)


def to_structure(x: Any) -> Structure:
    """A pymatgen ``Structure`` from itself or its dict."""
    return x if isinstance(x, Structure) else Structure.from_dict(x)


def task_get(obj: Any, *keys, default=None):
    """``obj[k1][k2]...`` through dicts, lists (int keys) and attributes; ``default`` where one is missing."""
    for key in keys:
        if obj is None:
            return default
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, (list, tuple)) and isinstance(key, int):
            obj = obj[key] if -len(obj) <= key < len(obj) else None
        else:
            obj = getattr(obj, key, None)
    return default if obj is None else obj


def code_flow(code_maker: Any, structure: StructureDoc | Structure, campaign: str | None, iteration: int | None,
              name: str, parse: Callable) -> Flow:
    """Flow [atomate2 job, parse job]; ``parse(code_job, doc)`` makes the parse job, which also runs when the
    code job failed (``OnMissing.NONE``: it then gets None)."""
    doc = as_structure_doc(structure, campaign, iteration)
    code_job = code_maker.make(doc.structure)
    parse_job = parse(code_job, doc)
    parse_job.name = f"{name} labels"
    parse_job.config.on_missing_references = OnMissing.NONE
    parse_job.config.expose_store = True
    return Flow([code_job, parse_job], output=parse_job.output, name=name)
