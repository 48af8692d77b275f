"""The settings of a nearsighted-force-training (NFT) campaign: the large target, how chunks are cut, when
it stops. Pure data: reading the target is ``almat.campaign.sources.load_target``'s."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from almat.campaign.settings.common import InitialDataSettings, StructureSource, _Campaign
from almat.schemas.section import Section


class NftTargetSettings(StructureSource):
    """The large target structure, optionally rattled and with vacancies."""

    rattle_std: float = Field(0.0, ge=0, description="Gaussian displacement per Cartesian component (Å)")
    vacancies: int = Field(0, ge=0, description="remove this many random atoms")
    seed: int = 0
    evaluate_with_oracle: bool = Field(
        False, description="Label the target once with the oracle (never trained on) and record the committee's "
        "force errors on it each iteration; cheap with EMT, not with DFT")


class NftChunkSettings(Section):
    """How uncertain atoms are picked and how chunks are cut around them (``almat.sampler.chunks``)."""

    mode: Literal["cluster", "periodic"] = Field(
        "cluster", description="cluster: atoms within cutoff in a vacuum box (exact environment, but a surface); "
        "periodic: a small periodic cell around the atom (no surface, but a seam at the faces)")
    cutoff: float = Field(5.0, gt=0, description="Å: radius of the exact environment kept around a central atom")
    percentile: float = Field(90.0, ge=0, le=100, description="atoms at or above this percentile of the target's "
                              "per-atom uncertainty are the candidates for central atoms")
    coefficient: float = Field(1.0, gt=0, description="uncertainty = coefficient x committee force std (norm)")
    max_chunks: int = Field(4, ge=1, description="chunks cut (and labelled) per iteration")
    merge_distance: float | None = Field(
        None, ge=0, description="Å: an uncertain atom this close to a chunk's first central atom joins that chunk "
        "(default: cutoff / 2)")
    vacuum: float = Field(6.0, gt=0, description="cluster: Å between the cluster and its periodic images")
    cell: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="periodic: the orthorhombic chunk cell's edges (Å), each > 2 x cutoff (default 2 cutoff + 1)")
    min_distance_factor: float = Field(
        0.7, gt=0, lt=1, description="periodic: drop seam atoms closer than this x the target's shortest distance")

    @model_validator(mode="after")
    def _cell(self):
        if self.cell is not None and any(edge <= 2 * self.cutoff for edge in self.cell):
            raise ValueError(f"chunk cell edges {self.cell} Å must each be > 2 x cutoff = {2 * self.cutoff:g} Å, or "
                             "images of the chunk fall within the cutoff of its central atom")
        return self

    def periodic_cell(self) -> list[float]:
        return list(self.cell) if self.cell is not None else [2 * self.cutoff + 1.0] * 3


class NftConvergenceSettings(Section):
    """When an NFT campaign stops (the first that holds)."""

    stop_delta: float = Field(0.05, gt=0, description="eV/Å: the target's max atomic uncertainty is below it")
    max_iterations: int = Field(5, ge=1, description="committees trained (iterations)")
    steps_not_improved: int = Field(
        2, ge=1, description="iterations in a row without a new lowest max atomic uncertainty of the target")


class NftCampaignConfig(_Campaign):
    """Nearsighted force training: initial data on small periodic cells, then rounds of train -> target
    uncertainty -> chunks -> label -> decide."""

    kind: Literal["nft"] = "nft"
    target: NftTargetSettings
    structures: list[StructureSource] = Field(
        ..., min_length=1, description="small periodic cells for the initial data (strained, rattled copies)")
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    chunks: NftChunkSettings = Field(default_factory=NftChunkSettings)
    convergence: NftConvergenceSettings = Field(default_factory=NftConvergenceSettings)

    @model_validator(mode="after")
    def _consistent(self):
        if self.oracle.kind != "ase":
            raise ValueError("NFT campaigns label chunks with an ASE oracle (oracle.kind: ase) for now")
        r_max = self.learner.hyperparameters.r_max
        if self.chunks.mode == "cluster" and self.chunks.vacuum <= r_max:
            raise ValueError(f"chunks.vacuum ({self.chunks.vacuum:g} Å) must exceed the model cutoff "
                             f"learner.hyperparameters.r_max ({r_max:g} Å), or a cluster would see its own images")
        return self
