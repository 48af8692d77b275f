"""Documents of an NFT campaign: one ``NftIterationDoc`` per iteration in ``nft_iterations``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from almat.schemas import AlmatDocument, StructureDoc, utcnow

__all__ = ["NftChunkRecord", "NftIterationDoc", "NftSelection", "StopKind"]

#: why an NFT campaign stopped
StopKind = Literal["stop_delta", "max_iterations", "steps_not_improved"]


class NftChunkRecord(AlmatDocument):
    """One chunk: which target atoms are its central atoms, and its label."""

    structure_hash: str
    natoms: int
    central_atoms: list[int] = Field(..., description="indices in the target of the chunk's central atoms")
    central_atoms_chunk: list[int] = Field(..., description="their indices in the chunk")
    target_indices: list[int] = Field(..., description="for each chunk atom, the target atom it is (an image of)")
    label_id: str | None = None
    label_ok: bool | None = None


class NftSelection(BaseModel):
    """Output of the uncertainty / chunk job of one iteration (input of its label and decide jobs)."""

    campaign: str
    iteration: int
    model_ids: list[str]
    target_hash: str
    n_target_atoms: int
    atomic_uncertainties: list[float]
    max_uncertainty: float
    mean_uncertainty: float
    threshold: float
    uncertain_atoms: list[int] = Field(default_factory=list)
    central_atoms: list[int] = Field(default_factory=list)
    skipped_atoms: list[int] = Field(default_factory=list)
    chunks: list[NftChunkRecord] = Field(default_factory=list)
    structures: list[StructureDoc] = Field(default_factory=list)
    force_weights: list[list[float]] = Field(default_factory=list)
    target_force_rmse: float | None = None
    target_max_force_error: float | None = None
    stop: StopKind | None = None
    stop_reason: str | None = None


class NftIterationDoc(AlmatDocument):
    """What one NFT round (train -> target uncertainty -> chunks -> label) did, in ``nft_iterations``."""

    campaign: str
    iteration: int
    model_ids: list[str] = Field(default_factory=list)
    n_train_labels: int = 0
    target_hash: str
    n_target_atoms: int
    atomic_uncertainties: list[float] = Field(..., description="per target atom (eV/Å), coefficient x force std")
    max_uncertainty: float
    mean_uncertainty: float
    coefficient: float
    percentile: float
    threshold: float = Field(..., description="the percentile-th percentile of atomic_uncertainties (eV/Å)")
    cutoff: float
    mode: str
    uncertain_atoms: list[int] = Field(default_factory=list, description="atoms at or above the threshold")
    central_atoms: list[int] = Field(default_factory=list, description="uncertain atoms that got a chunk")
    skipped_atoms: list[int] = Field(default_factory=list, description="uncertain atoms without a chunk this time "
                                       "(max_chunks reached, or their chunk was labelled before)")
    chunks: list[NftChunkRecord] = Field(default_factory=list)
    chunk_label_ids: list[str] = Field(default_factory=list)
    n_chunks: int = 0
    n_labelled: int = 0
    n_failed_labels: int = 0
    target_force_rmse: float | None = Field(None, description="committee mean vs oracle on the target (eV/Å)")
    target_max_force_error: float | None = None
    stop: StopKind | None = None
    stop_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
