"""Configuration of a nearsighted-force-training (NFT) campaign: one YAML file or Python object.

Every section forbids unknown keys. See ``docs/nft.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymatgen.core import Structure

from almat.campaign.config import (
    ConfigError,
    InitialDataSettings,
    LearnerSettings,
    OracleSettings,
    StructureSource,
    validate_campaign_file,
)

__all__ = [
    "NftCampaignConfig",
    "NftChunkSettings",
    "NftConvergenceSettings",
    "NftTargetSettings",
    "load_nft_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NftTargetSettings(StructureSource):
    """The large target structure (a ``StructureSource``: file, bulk or structure, with ``supercell``),
    optionally rattled and with vacancies so that the uncertainty varies over its atoms."""

    rattle_std: float = Field(0.0, ge=0, description="Gaussian displacement per Cartesian component (Å)")
    vacancies: int = Field(0, ge=0, description="remove this many random atoms")
    seed: int = 0
    evaluate_with_oracle: bool = Field(
        False, description="Label the target once with the oracle (never trained on) and record the "
        "committee's force errors on it each iteration; cheap with EMT, not with DFT"
    )

    def load_target(self, base_dir: Path | None = None) -> Structure:
        structure = self.load(base_dir)
        rng = np.random.default_rng(self.seed)
        if self.vacancies:
            if self.vacancies >= len(structure):
                raise ConfigError(
                    f"target.vacancies ({self.vacancies}) must be fewer than the target's {len(structure)} atoms")
            structure = structure.copy()
            structure.remove_sites(sorted(rng.choice(len(structure), self.vacancies, replace=False).tolist()))
        if self.rattle_std > 0:
            cart = structure.cart_coords + rng.normal(0.0, self.rattle_std, size=(len(structure), 3))
            structure = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
        return structure


class NftChunkSettings(_Section):
    """How uncertain atoms are picked and how chunks are cut around them (``almat.nft.chunks``)."""

    mode: Literal["cluster", "periodic"] = Field(
        "cluster", description="cluster: atoms within cutoff in a vacuum box (exact environment, but a "
        "surface); periodic: a small periodic cell around the atom (no surface, but a seam at the faces)"
    )
    cutoff: float = Field(5.0, gt=0, description="Å: radius of the exact environment kept around a central atom")
    percentile: float = Field(90.0, ge=0, le=100, description="atoms at or above this percentile of the "
                              "target's per-atom uncertainty are the candidates for central atoms")
    coefficient: float = Field(1.0, gt=0, description="uncertainty = coefficient x committee force std (norm)")
    max_chunks: int = Field(4, ge=1, description="chunks cut (and labelled) per iteration")
    merge_distance: float | None = Field(
        None, ge=0, description="Å: an uncertain atom this close to a chunk's first central atom joins that "
        "chunk (default: cutoff / 2)"
    )
    vacuum: float = Field(6.0, gt=0, description="cluster: Å between the cluster and its periodic images")
    cell: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="periodic: the orthorhombic chunk cell's edges (Å), each > 2 x cutoff (default 2 cutoff + 1)"
    )
    min_distance_factor: float = Field(
        0.7, gt=0, lt=1, description="periodic: drop seam atoms closer than this x the target's shortest distance")

    @model_validator(mode="after")
    def _cell(self):
        if self.cell is not None and any(edge <= 2 * self.cutoff for edge in self.cell):
            raise ValueError(
                f"chunk cell edges {self.cell} Å must each be > 2 x cutoff = {2 * self.cutoff:g} Å, or images of "
                "the chunk fall within the cutoff of its central atom"
            )
        return self

    def periodic_cell(self) -> list[float]:
        return list(self.cell) if self.cell is not None else [2 * self.cutoff + 1.0] * 3


class NftConvergenceSettings(_Section):
    """When the NFT campaign stops (the first that holds)."""

    stop_delta: float = Field(0.05, gt=0, description="eV/Å: the target's max atomic uncertainty is below it")
    max_iterations: int = Field(5, ge=1, description="committees trained (iterations)")
    steps_not_improved: int = Field(
        2, ge=1, description="iterations in a row without a new lowest max atomic uncertainty of the target")


class NftCampaignConfig(_Section):
    """A nearsighted-force-training campaign: initial data on small periodic cells, then rounds of
    train -> target uncertainty -> chunks -> label -> decide."""

    kind: Literal["nft"] = "nft"
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    target: NftTargetSettings
    structures: list[StructureSource] = Field(
        ..., min_length=1, description="small periodic cells for the initial data (strained, rattled copies)")
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    chunks: NftChunkSettings = Field(default_factory=NftChunkSettings)
    convergence: NftConvergenceSettings = Field(default_factory=NftConvergenceSettings)
    base_dir: Path | None = Field(None, description="Folder that relative structure paths start from")

    @model_validator(mode="after")
    def _consistent(self):
        if self.oracle.kind != "ase":
            raise ValueError("NFT campaigns label chunks with an ASE oracle (oracle.kind: ase) for now")
        r_max = self.learner.hyperparameters.r_max
        if self.chunks.mode == "cluster" and self.chunks.vacuum <= r_max:
            raise ValueError(
                f"chunks.vacuum ({self.chunks.vacuum:g} Å) must exceed the model cutoff "
                f"learner.hyperparameters.r_max ({r_max:g} Å), or a cluster would see its own images"
            )
        return self

    def load_structures(self) -> list[Structure]:
        return [s.load(self.base_dir) for s in self.structures]

    def load_target(self) -> Structure:
        """The target (rattled / with vacancies as configured); deterministic for a given config."""
        return self.target.load_target(self.base_dir)

    def check_target(self) -> Structure:
        """The target, checked against the chunk settings (a ``ValueError`` names the sizes)."""
        from almat.nft.chunks import check_target_size, perpendicular_widths
        from almat.schemas import to_atoms

        target = self.load_target()
        atoms = to_atoms(target)
        check_target_size(atoms, self.chunks.cutoff)
        if self.chunks.mode == "periodic":
            width = float(perpendicular_widths(atoms.cell).min())
            cell = self.chunks.periodic_cell()
            if max(cell) > width:
                raise ValueError(
                    f"the periodic chunk cell {cell} Å is not smaller than the target (shortest perpendicular "
                    f"width {width:.2f} Å); use cluster chunks or a larger target"
                )
        return target

    def fingerprint(self) -> str:
        """Hash of what defines the campaign's data (not of its stopping settings)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"convergence", "description", "base_dir"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_nft_config(source: str | Path | dict[str, Any] | NftCampaignConfig) -> NftCampaignConfig:
    """A validated ``NftCampaignConfig`` from a YAML file or a dict; errors are one line naming the key."""
    return validate_campaign_file(source, NftCampaignConfig, "NFT campaign config")
