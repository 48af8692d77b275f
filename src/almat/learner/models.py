"""What a stored model is, whatever the learner: its state dict plus an architecture record.

A record names a model class that a registered learner declares (``Learner.architectures``: the union is
``almat.learner.registry.architectures()``) and its constructor arguments; ``model_to_bytes`` writes
both with ``torch.save``, and ``model_from_bytes`` reads them back with ``weights_only=True`` (passed
explicitly: importing mace turns torch's safe default off for the whole process), rebuilds the class from
the record and loads the state dict. Nothing else is ever unpickled, so a planted pickle runs no code.

A learner whose models are not torch modules (DeePMD) stores them itself: ``OWN_FORMAT``, the architecture
class, a newline, then what its ``Learner.model_to_bytes`` writes and its ``model_from_bytes`` reads (which
refuses anything else).
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from almat.learner.registry import architectures, learner_of

#: what ``model_to_bytes`` writes: torch's zip format holding only tensors, numbers, strings, lists, dicts
MODEL_FORMAT = "almat-state-dict/1"

#: the first bytes of a model that its learner stores itself (then the architecture class and a newline)
OWN_FORMAT = b"almat-model/1 "

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UnsafeModelError(ValueError):
    """A stored model that is not almat's safe format (state dict + architecture record)."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    train_ids: list[str]
    valid_ids: list[str]
    metrics: dict[str, float]
    epochs: int
    n_parameters: int
    wall_time: float
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, model: torch.nn.Module, ids, train_idx, valid_idx, metrics: dict[str, float], epochs: int,
           start: float, history: list[dict[str, float]]) -> "TrainResult":
        """The result of a training that started at ``time.perf_counter()`` = ``start``, on ``ids[train_idx]``
        and validated on ``ids[valid_idx]``."""
        return cls(model=model, train_ids=[ids[i] for i in train_idx], valid_ids=[ids[i] for i in valid_idx],
                   metrics=metrics, epochs=epochs, n_parameters=sum(p.numel() for p in model.parameters()),
                   wall_time=time.perf_counter() - start, history=history)


def split_indices(n: int, valid_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``n`` configurations, each sorted; at least one of each when
    ``valid_fraction`` > 0."""
    order = rng.permutation(n)
    n_valid = int(round(valid_fraction * n))
    n_valid = min(max(n_valid, 1 if valid_fraction > 0 else 0), n - 1)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def model_from_architecture(record: dict) -> torch.nn.Module:
    """A model with fresh weights from its architecture record (kept as ``model.almat_architecture``)."""
    known = architectures()
    if not isinstance(record, dict) or record.get("class") not in known:
        name = record.get("class") if isinstance(record, dict) else None
        raise UnsafeModelError(f"unknown model class {name!r} in the architecture record; known: {', '.join(known)}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(_DTYPES[record.get("dtype", "float32")])
    try:
        model = known[record["class"]](dict(record["kwargs"]))
    finally:
        torch.set_default_dtype(previous)
    model.almat_architecture = record
    return model


#: models rebuilt (or stored) in this process, by the sha256 of their bytes and the device, most recent last:
#: rebuilding a model's architecture takes seconds (mace), a copy a fraction of that; keyed by content, so
#: changed bytes are always read anew
_BUILT: OrderedDict[tuple[str, str], torch.nn.Module] = OrderedDict()
BUILT_CACHE_SIZE = 8


def _remember(key: tuple[str, str], model: torch.nn.Module) -> None:
    _BUILT[key] = model
    _BUILT.move_to_end(key)
    while len(_BUILT) > BUILT_CACHE_SIZE:
        _BUILT.popitem(last=False)


def _learner_of_class(name) -> Any:
    try:
        return learner_of(name)
    except ValueError as exc:
        raise UnsafeModelError(str(exc)) from None


def model_to_bytes(model: torch.nn.Module) -> bytes:
    """The model as its state dict and architecture record: no pickled code (a model that is not a torch
    module: ``OWN_FORMAT`` and what its learner writes)."""
    record = getattr(model, "almat_architecture", None)
    if record is not None and not isinstance(model, torch.nn.Module):
        blob = OWN_FORMAT + record["class"].encode() + b"\n" + _learner_of_class(record["class"]).model_to_bytes(model)
        _remember((hashlib.sha256(blob).hexdigest(), "cpu"), model)
        return blob
    if record is None:
        raise UnsafeModelError(f"{type(model).__name__} has no architecture record; build it with almat "
                               "(model_from_architecture) to store it")
    buffer = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "architecture": record, "state_dict": model.state_dict()}, buffer)
    blob = buffer.getvalue()
    if all(p.device.type == "cpu" for p in model.parameters()):  # read back soon (explore, decide, warm start)
        _remember((hashlib.sha256(blob).hexdigest(), "cpu"), copy.deepcopy(model).eval())
    return blob


def model_from_bytes(blob: bytes, device: str = "cpu") -> torch.nn.Module:
    """Rebuild a model from ``model_to_bytes``; anything else, such as a whole pickled module, is refused
    before any of its code can run. Bytes this process stored or read before come back as a copy of that
    model, without rebuilding it."""
    key = (hashlib.sha256(blob).hexdigest(), str(device))
    if key in _BUILT:
        _BUILT.move_to_end(key)
        return copy.deepcopy(_BUILT[key])
    if blob.startswith(OWN_FORMAT):
        name, _, data = blob[len(OWN_FORMAT):].partition(b"\n")
        try:
            model = _learner_of_class(name.decode(errors="replace")).model_from_bytes(data, device=device)
        except NotImplementedError as exc:  # a learner of torch modules: never stored this way
            raise UnsafeModelError(str(exc)) from None
        _remember(key, model)
        return model
    try:
        payload = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise UnsafeModelError(
            "not an almat state-dict model (a whole pickled module, as almat 0.1 stored them, is never "
            "loaded: it could run code); convert trusted old models with scripts/convert_models.py "
            f"[{type(exc).__name__}]") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UnsafeModelError(f"not an almat model: expected format {MODEL_FORMAT!r}")
    model = model_from_architecture(payload["architecture"])
    model.load_state_dict(payload["state_dict"], strict=True)
    model.to(device)
    model.eval()
    _remember(key, copy.deepcopy(model))
    return model
