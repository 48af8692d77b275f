"""Per-iteration records of pool-based (``pool_iterations``) and NFT (``nft_iterations``) campaigns."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from almat.schemas.documents import AlmatDocument, TestErrors, utcnow


class PoolIterationDoc(AlmatDocument):
    """What one iteration of a pool-based campaign did.

    Iteration ``k`` labels ``new_indices`` (the ``n_init`` random ones at 0, then the batch that
    iteration ``k - 1`` acquired), trains a committee (``model_ids``) on every ok label so far
    (``labelled_indices`` minus ``failed_indices``), scores it on the held-out part of the pool
    (``test_indices``, labelled once and never acquired) and, unless it stops (``stop_reason``),
    acquires ``acquired_indices`` for iteration ``k + 1``. Indices are pool indices (``pool_index`` in
    the metadata of the campaign's ``pool`` structures).
    """

    campaign: str
    iteration: int
    acquisition: str
    pool_size: int
    test_indices: list[int] = Field(default_factory=list)
    new_indices: list[int] = Field(default_factory=list, description="labelled in this iteration")
    labelled_indices: list[int] = Field(default_factory=list, description="cumulative, in order of acquisition")
    failed_indices: list[int] = Field(default_factory=list, description="labelled, but the oracle failed")
    acquired_indices: list[int] = Field(default_factory=list, description="picked for the next iteration")
    acquired_deviation: list[float | None] = Field(
        default_factory=list, description="committee max force deviation (eV/Å) of each pick; None if not computed")
    n_labels: int = Field(0, description="oracle calls for training so far (n_init + the batches)")
    n_train_labels: int = Field(0, description="ok labels the committee was trained on")
    n_unlabelled: int = 0
    label_ids: list[str] = Field(default_factory=list, description="the training label ids (jobflow runs)")
    test_label_ids: list[str] = Field(default_factory=list)
    model_ids: list[str] = Field(default_factory=list)
    test_errors: TestErrors = Field(default_factory=TestErrors)
    test_force_rmse: float | None = Field(None, description="= test_errors.force_rmse (eV/Å), for tables")
    n_new_labels: int = Field(0, description="= len(new_indices)")
    stop_reason: str | None = None
    wall_time: float | None = None
    created_at: datetime = Field(default_factory=utcnow)

    def model_post_init(self, __context) -> None:
        if self.test_force_rmse is None:
            self.test_force_rmse = self.test_errors.force_rmse
        self.n_new_labels = self.n_new_labels or len(self.new_indices)


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
