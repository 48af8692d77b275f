"""The settings of a pool campaign (``docs/pool.md``): the pool's sources and the acquisition. Pure data:
reading the pool is ``almat.campaign.sources.load_pool``'s."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ase import Atoms
from pydantic import Field, field_validator, model_validator
from pymatgen.core import Structure

from almat.campaign.settings.common import _Campaign, _Source, structure_dict
from almat.schemas.section import Section
from almat.select.lookup import acquisition_policy


class PerturbSettings(Section):
    """``n`` configurations per structure: itself, then strained and rattled copies."""

    n: int = Field(..., ge=1)
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.02, ge=0, lt=0.5)
    seed: int = 0
    keep_original: bool = Field(True, description="the unperturbed structure is the first of the n")


class PoolQuery(Section):
    """Structures from the store: a MongoDB filter on the labels or the structures collection."""

    collection: Literal["labels", "structures"] = "labels"
    filters: dict[str, Any] = Field(default_factory=dict, description="a MongoDB filter, e.g. {chemsys: Cu}")
    limit: int | None = Field(None, ge=1)


class PoolSource(_Source):
    """One source of pool structures (exactly one of file, bulk, structure, structures, query), each with
    ``supercell`` and an optional ``perturb``."""

    sources: ClassVar[tuple[str, ...]] = ("file", "bulk", "structure", "structures", "query")
    index: str = Field(":", description="ASE's frame selection for multi-frame files")
    format: str | None = Field(None, description="ASE file format (default: from the extension)")
    structures: list[dict[str, Any]] | None = None
    query: PoolQuery | None = None
    perturb: PerturbSettings | None = None

    @field_validator("structures", mode="before")
    @classmethod
    def _as_dicts(cls, value):
        return None if value is None else [structure_dict(v) for v in value]


class AcquisitionSettings(Section):
    """The acquisition function: ``committee`` (highest committee max force deviation), ``fps``,
    ``weighted``, ``random``, or any registered selection policy; ``options`` are its keyword arguments."""

    name: str = "committee"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(None, description="rng seed of random picks (default: the campaign seed)")

    @model_validator(mode="after")
    def _known(self):
        acquisition_policy(self.name, self.options)
        return self


class PoolCampaignConfig(_Campaign):
    """A pool-based campaign (``docs/pool.md``). ``total_budget`` counts the training labels, ``n_init``
    included; ``test_fraction`` (or ``n_test``) of the pool is held out: labelled once, never acquired."""

    kind: Literal["pool"] = "pool"
    pool: list[PoolSource] = Field(..., min_length=1)
    acquisition: AcquisitionSettings = Field(default_factory=AcquisitionSettings)
    n_init: int = Field(8, ge=2, description="random initial labels")
    budget: int = Field(8, ge=1, description="labels acquired per iteration (batch size)")
    total_budget: int | None = Field(None, ge=2, description="max training labels in all, n_init included")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held-out part of the pool")
    n_test: int | None = Field(None, ge=0, description="held-out structures (overrides test_fraction)")
    max_iterations: int = Field(10, ge=1)
    target_force_rmse: float | None = Field(None, gt=0, description="stop at this test force RMSE (eV/Å)")
    seed: int = 0

    unfingerprinted: ClassVar[tuple[str, ...]] = ("description", "base_dir", "max_iterations",
                                                  "target_force_rmse", "total_budget", "finish")

    @field_validator("pool", mode="before")
    @classmethod
    def _python_list(cls, value):
        """A plain list of Atoms/Structures is one ``structures`` source."""
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("the pool is empty: give at least one source")
        if isinstance(value, (list, tuple)) and all(isinstance(v, (Atoms, Structure)) for v in value):
            return [{"structures": [structure_dict(v) for v in value]}]
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

    def iteration_limit(self) -> int:
        return self.max_iterations
