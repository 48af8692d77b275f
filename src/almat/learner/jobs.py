"""The learner's Maker: train a committee on the campaign's labels: MACE from scratch, or CHGNet
fine-tuned from its bundled weights (``learner`` / ``learner.kind`` in a campaign file)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jobflow import CURRENT_JOB, Maker
from pydantic import BaseModel, Field

from almat.learner.committee import load_model, save_model
from almat.learner.hyperparameters import HYPERPARAMETERS, SHALLOW_LEARNERS, UNCERTAINTY_KINDS
from almat.schemas import LabelDoc, ModelDoc
from almat.stores import CampaignDB, require_db, store_job

logger = logging.getLogger(__name__)


class CommitteeDoc(BaseModel):
    """Output of a training job: the committee's model ids and how it was trained."""

    campaign: str | None = None
    iteration: int | None = None
    model_ids: list[str]
    n_labels: int
    validation_metrics: list[dict[str, float]] = Field(default_factory=list)
    failed_members: list[str] = Field(default_factory=list, description="members whose training failed, and why")
    reused_previous: bool = Field(False, description="training failed: these are the previous committee's models")
    wall_time: float = 0.0


def _as_id(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, LabelDoc):
        return item.label_id
    if isinstance(item, dict) and "label_id" in item:
        return item["label_id"]
    raise TypeError(f"expected a label id or LabelDoc, got {type(item).__name__}")


def flatten_labels(items: Any) -> list[Any]:
    """Flatten nested lists of label ids / ``LabelDoc``s (outputs of several jobs) into one list."""
    out: list[Any] = []
    for item in items or []:
        if isinstance(item, (list, tuple)):
            out.extend(flatten_labels(item))
        elif item is not None:
            out.append(item)
    return out


def load_labels(db: CampaignDB, label_ids: list[Any], ok_only: bool = True) -> list[LabelDoc]:
    """Labels by id (or ``LabelDoc``, possibly in nested lists), in the order given; missing ids raise."""
    wanted = list(dict.fromkeys(_as_id(i) for i in flatten_labels(label_ids)))
    found = {d["label_id"]: d for d in db.labels.query({"label_id": {"$in": wanted}})}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise KeyError(f"{len(missing)} label(s) missing from the labels collection, e.g. {missing[0]}")
    labels = [LabelDoc.from_store(found[i]) for i in wanted]
    return [lab for lab in labels if lab.ok] if ok_only else labels


@dataclass
class TrainCommitteeMaker(Maker):
    """Train ``n_models`` members of the ``learner`` kind, each with its own seed, on the given ok labels.

    Each model's weights go to the ``data`` store and a ``ModelDoc`` to the models collection.
    With ``warm_start`` and previous model ids, member k continues from the previous member k
    (fewer epochs: ``warm_start_epochs``). A member whose training diverges is left out, with its reason in
    ``CommitteeDoc.failed_members``; the job fails only when fewer than 2 members are left.

    ``uncertainty="shallow"``: one shallow ensemble of ``n_heads`` heads instead (``almat.learner.shallow``,
    learners of ``SHALLOW_LEARNERS``); its heads are the members. If its training diverges, the previous
    committee stays in use (``CommitteeDoc.reused_previous``, the reason in ``failed_members``); without a
    previous committee the job fails with the reason.
    """

    name: str = "train committee"
    n_models: int = 4
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    base_seed: int = 0
    warm_start: bool = True
    learner: str = "mace"
    uncertainty: str = "committee"
    n_heads: int = 4
    head_forces: str = "all"

    def __post_init__(self) -> None:
        if self.n_models < 2:
            raise ValueError(f"a committee needs at least 2 models, got n_models={self.n_models}")
        if self.learner not in HYPERPARAMETERS:
            raise ValueError(f"unknown learner {self.learner!r}; valid: {', '.join(HYPERPARAMETERS)}")
        check_uncertainty(self.uncertainty, self.learner, self.n_heads)
        if self.head_forces not in ("rotate", "all"):
            raise ValueError(f"unknown head_forces {self.head_forces!r}; valid: all, rotate")
        self.hp  # fail early on bad settings

    @property
    def hp(self):
        return HYPERPARAMETERS[self.learner](**self.hyperparameters)

    def train(self, *args, **kwargs):
        """The learner's training function (imported on use: each learner is a heavy dependency)."""
        if self.learner == "chgnet-finetune":
            from almat.learner.chgnet import finetune_chgnet as train
        elif self.learner == "mace-finetune":
            from almat.learner.mace_finetune import finetune_mace as train
        else:
            from almat.learner.mace import train_mace as train
        return train(*args, **kwargs)

    def check_elements(self, elements: list[str]) -> None:
        """Refuse a foundation file that is missing, not a MACE model, or without one of ``elements``
        (a ``ValueError`` naming the file and the element); other learners know every element they train on."""
        if self.learner != "mace-finetune":
            return
        from almat.learner.mace_finetune import foundation_elements

        path = self.hp.foundation.path
        missing = sorted(set(elements) - set(foundation_elements(path)), key=elements.index)
        if missing:
            raise ValueError(f"the foundation model {path} was not trained on {', '.join(missing)}")

    @store_job(output_schema=CommitteeDoc)
    def make(
        self,
        label_ids: list[Any],
        campaign: str | None = None,
        iteration: int | None = None,
        previous_model_ids: list[str] | None = None,
    ) -> CommitteeDoc:
        start = time.perf_counter()
        db = require_db()
        try:
            labels = load_labels(db, label_ids)
            if len(labels) < 2:
                raise ValueError(
                    f"only {len(labels)} ok label(s) to train on; check the oracle (failed labels carry a reason)"
                )
            atoms_list = [lab.to_atoms() for lab in labels]
            ids = [lab.label_id for lab in labels]
            hp = self.hp
            job_uuid = CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None
            if self.uncertainty == "shallow":
                return train_shallow_committee(self, db, labels, hp, campaign, iteration, previous_model_ids,
                                               job_uuid, start)
            previous = list(previous_model_ids or []) if self.warm_start else []
            model_ids, metrics, failed = [], [], []
            for k in range(self.n_models):
                seed = self.base_seed + 1000 * (iteration or 0) + k
                init_model, init_id = None, None
                if k < len(previous):
                    raw = db.models.query_one({"model_id": previous[k]})
                    if raw is not None:
                        init_id = previous[k]
                        init_model = load_model(db.data, ModelDoc.from_store(raw))

                def progress(epoch, epochs, loss, k=k):
                    if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
                        logger.info("iteration %s: training model %d/%d, epoch %d/%d, loss %.4g",
                                    iteration, k + 1, self.n_models, epoch, epochs, loss,
                                    extra={"almat_progress": True})

                try:
                    result = self.train(atoms_list, ids, hp, seed=seed, init_model=init_model, progress=progress)
                except FloatingPointError as exc:  # this member diverged: the others go on
                    failed.append(f"member {k} (seed {seed}): {exc}")
                    logger.warning("iteration %s: model %d/%d failed: %s", iteration, k + 1, self.n_models, exc)
                    continue
                blob_id = save_model(db.data, result.model, campaign=campaign, iteration=iteration,
                                     committee_index=k)
                doc = ModelDoc(
                    campaign=campaign,
                    iteration=iteration,
                    committee_index=k,
                    architecture=result.model.almat_architecture["class"],
                    hyperparameters=hp.model_dump(),
                    seed=seed,
                    elements=sorted({s for lab in labels for s in lab.elements}),
                    training_label_ids=result.train_ids,
                    validation_label_ids=result.valid_ids,
                    validation_metrics=result.metrics,
                    n_parameters=result.n_parameters,
                    epochs_trained=result.epochs,
                    warm_started_from=init_id,
                    weights_blob_id=blob_id,
                    device=hp.device,
                    wall_time=result.wall_time,
                    job_uuid=job_uuid,
                )
                db.upsert("models", [doc])
                model_ids.append(doc.model_id)
                metrics.append(result.metrics)
                logger.info(
                    "iteration %s: model %d/%d trained on %d labels in %.0f s, validation force RMSE %.3f eV/Å",
                    iteration, k + 1, self.n_models, len(result.train_ids), result.wall_time,
                    result.metrics["force_rmse"],
                )
            if len(model_ids) < 2:
                raise ValueError(f"only {len(model_ids)} of {self.n_models} committee members trained: "
                                 + "; ".join(failed))
            return CommitteeDoc(
                campaign=campaign,
                iteration=iteration,
                model_ids=model_ids,
                n_labels=len(labels),
                validation_metrics=metrics,
                failed_members=failed,
                wall_time=time.perf_counter() - start,
            )
        finally:
            db.close()


def check_uncertainty(uncertainty: str, learner: str, n_heads: int) -> None:
    """Refuse an unknown uncertainty kind, a shallow ensemble of a learner that cannot have heads, or fewer
    than 2 heads (one-line ``ValueError``s)."""
    if uncertainty not in UNCERTAINTY_KINDS:
        raise ValueError(f"unknown uncertainty {uncertainty!r}; valid: {', '.join(UNCERTAINTY_KINDS)}")
    if uncertainty == "shallow":
        if learner not in SHALLOW_LEARNERS:
            raise ValueError(f"uncertainty: shallow needs a learner that can have heads "
                             f"({', '.join(SHALLOW_LEARNERS)}); {learner} cannot")
        if n_heads < 2:
            raise ValueError(f"a shallow ensemble needs at least 2 heads, got n_heads={n_heads}")


def train_shallow_committee(maker: TrainCommitteeMaker, db: CampaignDB, labels: list[LabelDoc], hp, campaign,
                            iteration, previous_model_ids, job_uuid, start: float) -> CommitteeDoc:
    """The shallow-ensemble branch of ``TrainCommitteeMaker.make``: one model, its heads the members."""
    from almat.learner.shallow import train_shallow_mace

    atoms_list, ids = [lab.to_atoms() for lab in labels], [lab.label_id for lab in labels]
    seed = maker.base_seed + 1000 * (iteration or 0)
    previous = list(previous_model_ids or [])
    init_model, init_id = None, None
    if maker.warm_start and previous:
        raw = db.models.query_one({"model_id": previous[0]})
        if raw is not None and raw.get("architecture") == "ShallowEnsembleMACE":
            init_id, init_model = previous[0], load_model(db.data, ModelDoc.from_store(raw))

    def progress(epoch, epochs, loss):
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            logger.info("iteration %s: training the shallow ensemble (%d heads), epoch %d/%d, loss %.4g", iteration,
                        maker.n_heads, epoch, epochs, loss, extra={"almat_progress": True})

    try:
        result = train_shallow_mace(atoms_list, ids, hp, seed=seed, init_model=init_model, progress=progress,
                                    n_heads=maker.n_heads, rotate=maker.head_forces == "rotate")
    except FloatingPointError as exc:
        reason = f"shallow ensemble (seed {seed}): {exc}"
        if not previous:
            raise ValueError(f"the shallow ensemble's training failed and there is no previous committee: {exc}"
                             ) from None
        logger.warning("iteration %s: %s; the previous committee stays in use", iteration, reason)
        return CommitteeDoc(campaign=campaign, iteration=iteration, model_ids=previous, n_labels=len(labels),
                            failed_members=[reason], reused_previous=True, wall_time=time.perf_counter() - start)
    blob_id = save_model(db.data, result.model, campaign=campaign, iteration=iteration, committee_index=0)
    doc = ModelDoc(
        campaign=campaign, iteration=iteration, committee_index=0,
        architecture=result.model.almat_architecture["class"],
        hyperparameters={**hp.model_dump(), "n_heads": maker.n_heads, "head_forces": maker.head_forces}, seed=seed,
        elements=sorted({s for lab in labels for s in lab.elements}), training_label_ids=result.train_ids,
        validation_label_ids=result.valid_ids, validation_metrics=result.metrics, n_parameters=result.n_parameters,
        epochs_trained=result.epochs, warm_started_from=init_id, weights_blob_id=blob_id, device=hp.device,
        wall_time=result.wall_time, job_uuid=job_uuid)
    db.upsert("models", [doc])
    logger.info("iteration %s: shallow ensemble of %d heads trained on %d labels in %.0f s, validation force RMSE "
                "%.3f eV/Å", iteration, maker.n_heads, len(result.train_ids), result.wall_time,
                result.metrics["force_rmse"])
    return CommitteeDoc(campaign=campaign, iteration=iteration, model_ids=[doc.model_id], n_labels=len(labels),
                        validation_metrics=[result.metrics], wall_time=time.perf_counter() - start)
