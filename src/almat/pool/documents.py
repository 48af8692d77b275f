"""The per-iteration record of a pool-based campaign (collection ``pool_iterations``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from almat.schemas import AlmatDocument, TestErrors, utcnow

__all__ = ["PoolIterationDoc"]


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
