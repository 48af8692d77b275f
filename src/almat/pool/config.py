"""Configuration of a pool-based campaign (``kind: pool``): one YAML file or Python object.

Every section forbids unknown keys. The pool is a list of sources, each giving one or more
structures:

- ``{file: PATH, index: ":"}``: any file ASE reads, e.g. an extxyz with many frames (``index`` is
  ASE's frame selection: ``":"`` all, ``"::10"`` every 10th, ``"-1"`` the last);
- ``{bulk: {kwargs of ase.build.bulk}}``, ``{structure: Structure.as_dict()}``,
  ``{structures: [Structure, Atoms or their dicts, ...]}`` (Python);
- ``{query: {collection: labels, filters: {chemsys: Cu, campaign: ...}}}``: the structures of an
  almat labels query (filters of ``almat.query.query_labels``) or of a structures-collection query;

each with ``supercell: [a, b, c]`` and optional ``perturb: {n, rattle_std, max_strain, seed}`` (``n``
strained and rattled copies of every structure of the source, the first being the structure itself).
A plain Python list of structures (Atoms/Structures) is accepted for ``pool`` too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymatgen.core import Structure

from almat.campaign.config import ConfigError, LearnerSettings, OracleSettings, validate_campaign_file

logger = logging.getLogger(__name__)

__all__ = [
    "AcquisitionSettings",
    "PerturbSettings",
    "PoolCampaignConfig",
    "PoolQuery",
    "PoolSource",
    "load_pool",
    "load_pool_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _structure_dict(obj: Any) -> dict[str, Any]:
    from almat.schemas import to_structure

    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (Atoms, Structure)):
        return to_structure(obj).as_dict()
    raise ValueError(f"expected a Structure, Atoms or a Structure dict, got {type(obj).__name__}")


class PerturbSettings(_Section):
    """``n`` configurations per structure: itself, then strained and rattled copies
    (``almat.campaign.initial.perturbed_structures``)."""

    n: int = Field(..., ge=1)
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.02, ge=0, lt=0.5)
    seed: int = 0
    keep_original: bool = Field(True, description="the unperturbed structure is the first of the n")


class PoolQuery(_Section):
    """Structures from the store: an almat labels query or a query on the structures collection."""

    collection: Literal["labels", "structures"] = "labels"
    filters: dict[str, Any] = Field(default_factory=dict, description="labels: filters of almat.query.query_labels; "
                                    "structures: a MongoDB filter")
    limit: int | None = Field(None, ge=1)


class PoolSource(_Section):
    """One source of pool structures (exactly one of file, bulk, structure, structures, query)."""

    file: Path | None = None
    index: str = Field(":", description="ASE's frame selection for multi-frame files")
    format: str | None = Field(None, description="ASE file format (default: from the extension)")
    bulk: dict[str, Any] | None = None
    structure: dict[str, Any] | None = None
    structures: list[dict[str, Any]] | None = None
    query: PoolQuery | None = None
    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=3, max_length=3)
    perturb: PerturbSettings | None = None

    @field_validator("structure", mode="before")
    @classmethod
    def _one(cls, value):
        return None if value is None else _structure_dict(value)

    @field_validator("structures", mode="before")
    @classmethod
    def _many(cls, value):
        return None if value is None else [_structure_dict(v) for v in value]

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("file", "bulk", "structure", "structures", "query") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'file', 'bulk', 'structure', 'structures' or 'query' "
                             f"for each pool source (got {', '.join(given) or 'none'})")
        if any(n < 1 for n in self.supercell):
            raise ValueError(f"supercell multiples must be >= 1, got {self.supercell}")
        return self

    def _raw(self, base_dir: Path | None, db) -> list[Atoms]:
        from almat.schemas import to_atoms

        if self.bulk is not None:
            from ase.build import bulk

            try:
                return [bulk(**self.bulk)]
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"cannot build bulk({self.bulk}): {exc}") from None
        if self.structure is not None:
            return [to_atoms(Structure.from_dict(self.structure))]
        if self.structures is not None:
            return [to_atoms(Structure.from_dict(s)) for s in self.structures]
        if self.query is not None:
            return _query_structures(self.query, db)
        from ase.io import read

        path = self.file if self.file.is_absolute() or base_dir is None else base_dir / self.file
        if not path.is_file():
            raise ConfigError(f"pool file not found: {path}")
        try:
            frames = read(path, index=self.index, format=self.format)
        except Exception as exc:  # noqa: BLE001 - any parser error
            raise ConfigError(f"cannot read pool file {path}: {type(exc).__name__}: {exc}") from None
        frames = frames if isinstance(frames, list) else [frames]
        out = []
        for k, atoms in enumerate(frames):
            a = Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions(), cell=atoms.get_cell(),
                      pbc=atoms.get_pbc(), info={**atoms.info, "pool_origin": f"{path.name}#{k}"})
            out.append(a)
        return out

    def load(self, base_dir: Path | None = None, db=None) -> list[Atoms]:
        """The source's structures as ASE Atoms (``info`` keeps e.g. an MD ``temperature``)."""
        frames = self._raw(base_dir, db)
        if self.supercell != [1, 1, 1]:
            frames = [_repeat(a, self.supercell) for a in frames]
        if self.perturb is not None:
            frames = _perturb(frames, self.perturb)
        return frames


def _repeat(atoms: Atoms, supercell: list[int]) -> Atoms:
    info = dict(atoms.info)
    out = atoms.repeat(supercell)
    out.info.update(info)
    return out


def _perturb(frames: list[Atoms], p: PerturbSettings) -> list[Atoms]:
    from almat.campaign.initial import perturbed_structures
    from almat.schemas import to_atoms, to_structure

    rng = np.random.default_rng(p.seed)
    out = []
    for atoms in frames:
        n = p.n if p.keep_original else p.n + 1
        for k, s in enumerate(perturbed_structures(to_structure(atoms), n, p.rattle_std, p.max_strain, rng)):
            if k == 0 and not p.keep_original:
                continue
            a = to_atoms(s)
            a.info.update(atoms.info)
            a.info["perturbation"] = k
            out.append(a)
    return out


def _query_structures(q: PoolQuery, db) -> list[Atoms]:
    from almat.schemas import StructureDoc, to_atoms

    if db is None:
        raise ConfigError("a pool 'query' source needs the store: load the pool inside a job or pass db=")
    if q.collection == "labels":
        from almat.query import query_labels

        out = []
        for label in query_labels(db, as_="docs", **q.filters):
            a = to_atoms(label.structure)
            a.info["pool_origin"] = f"label:{label.label_id}"
            out.append(a)
            if q.limit and len(out) >= q.limit:
                break
        return out
    out = []
    for raw in db.structures.query(q.filters, limit=q.limit or 0):
        doc = StructureDoc.from_store(raw)
        a = to_atoms(doc.structure)
        a.info["pool_origin"] = f"structure:{doc.structure_hash}"
        if "temperature" in doc.metadata:
            a.info["temperature"] = doc.metadata["temperature"]
        out.append(a)
    return out


class AcquisitionSettings(_Section):
    """The acquisition function: ``committee`` (highest committee max force deviation), ``fps``
    (farthest point sampling in descriptor space), ``weighted`` (deviation and diversity, see
    ``almat.select.WeightedAcquisition``), ``random``, or any registered selection policy;
    ``options`` are its keyword arguments."""

    name: str = "committee"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(None, description="rng seed of random picks (default: the campaign seed)")

    @model_validator(mode="after")
    def _known(self):
        from almat.pool.core import get_acquisition

        get_acquisition(self.name, self.options)  # unknown names and bad options fail at load time
        return self


class PoolCampaignConfig(_Section):
    """A pool-based campaign (see ``docs/pool.md``).

    ``total_budget`` counts the training labels, ``n_init`` included (the held-out labels are not
    counted). ``test_fraction`` (or ``n_test``) of the pool is held out: labelled once, never acquired.
    """

    kind: Literal["pool"] = "pool"
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    pool: list[PoolSource] = Field(..., min_length=1)
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    acquisition: AcquisitionSettings = Field(default_factory=AcquisitionSettings)
    n_init: int = Field(8, ge=2, description="random initial labels")
    budget: int = Field(8, ge=1, description="labels acquired per iteration (batch size)")
    total_budget: int | None = Field(None, ge=2, description="max training labels in all, n_init included")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held-out part of the pool")
    n_test: int | None = Field(None, ge=0, description="held-out structures (overrides test_fraction)")
    max_iterations: int = Field(10, ge=1)
    target_force_rmse: float | None = Field(None, gt=0, description="stop at this test force RMSE (eV/Å)")
    seed: int = 0
    base_dir: Path | None = Field(None, description="Folder that relative pool paths start from")

    @field_validator("pool", mode="before")
    @classmethod
    def _python_list(cls, value):
        """A plain list of Atoms/Structures is one ``structures`` source."""
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (Atoms, Structure)) for v in value):
            return [{"structures": [_structure_dict(v) for v in value]}]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("the pool is empty: give at least one source")
        return value

    @field_validator("acquisition", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sizes(self):
        if self.total_budget is not None and self.total_budget < self.n_init:
            raise ValueError(f"total_budget ({self.total_budget}) is smaller than n_init ({self.n_init})")
        return self

    def load_pool(self, db=None) -> list[Atoms]:
        return load_pool(self.pool, self.base_dir, db)

    def fingerprint(self) -> str:
        """Hash of what defines the campaign's data (not of its stopping settings)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={
            "description", "base_dir", "max_iterations", "target_force_rmse", "total_budget"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_pool(sources: list[PoolSource], base_dir: Path | None = None, db=None) -> list[Atoms]:
    """All sources' structures, duplicates (same ``structure_hash``) dropped with a warning.

    Raises ``ValueError`` on an empty pool.
    """
    import warnings

    from almat.schemas import structure_hash

    frames, seen, duplicates = [], set(), 0
    for source in sources:
        for atoms in source.load(base_dir, db):
            h = structure_hash(atoms)
            if h in seen:
                duplicates += 1
                continue
            seen.add(h)
            atoms.info["structure_hash"] = h
            frames.append(atoms)
    if duplicates:
        msg = f"{duplicates} duplicate structure(s) dropped from the pool"
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    if not frames:
        raise ValueError("the pool is empty: its sources gave no structure")
    return frames


def load_pool_config(source: str | Path | dict[str, Any]) -> PoolCampaignConfig:
    """A validated ``PoolCampaignConfig`` from a YAML file or a dict; errors are one line naming the key."""
    return validate_campaign_file(source, PoolCampaignConfig, "pool campaign config")
