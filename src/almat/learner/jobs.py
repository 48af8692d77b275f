"""The learner's Maker: train a committee of any registered learner on the campaign's labels (``learner.kind``
in a campaign file; ``almat.learner.registry``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import CURRENT_JOB, Maker
from pydantic import BaseModel, Field

from almat.learner.base import Learner
from almat.learner.committee import load_model, save_model
from almat.learner.registry import check_uncertainty_kind, load_learner
from almat.schemas import LabelDoc, ModelDoc
from almat.schemas.section import ConfigError
from almat.stores import CampaignDB, require_db, store_job
from almat.threads import torch_threads

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

    ``learner``: a registered kind (``almat.learner.registry``) or a ``Learner``; the Maker holds the learner, as
    atomate2's Makers hold an input-set generator, and its validated ``hyperparameters`` (a dict is validated
    once, when the Maker is built). Each model's weights go to the ``data`` store and a ``ModelDoc`` to the
    models collection. With ``warm_start`` and previous model ids, member k continues from the previous member
    k (fewer epochs: ``warm_start_epochs``). A member whose training diverges is left out, with its reason in
    ``CommitteeDoc.failed_members``; the job fails only when fewer than 2 members are left.

    ``uncertainty="shallow"``: one shallow ensemble of ``n_heads`` heads instead (the kind's learner of
    ``SHALLOW_LEARNERS``); its heads are the members. If its training diverges, the previous committee stays in
    use (``CommitteeDoc.reused_previous``, the reason in ``failed_members``); without a previous committee the
    job fails with the reason.
    """

    name: str = "train committee"
    n_models: int = 4
    hyperparameters: Any = field(default_factory=dict)
    base_seed: int = 0
    warm_start: bool = True
    learner: Learner | str = "mace"
    uncertainty: str = "committee"
    n_heads: int = 4
    head_forces: str = "all"
    nll_epochs: int = 0
    llpr_rank: int | None = 4

    def __post_init__(self) -> None:
        if self.n_models < 2:
            raise ValueError(f"a committee needs at least 2 models, got n_models={self.n_models}")
        kind = self.learner if isinstance(self.learner, str) else self.learner.kind
        check_uncertainty(self.uncertainty, kind, self.n_heads)
        if self.head_forces not in ("rotate", "all"):
            raise ValueError(f"unknown head_forces {self.head_forces!r}; valid: all, rotate")
        if isinstance(self.learner, str) or type(self.learner) is not type(load_learner(kind, self.uncertainty)):
            self.learner = load_learner(kind, self.uncertainty)
        self.hyperparameters = self.learner.validate(self.hyperparameters)

    @classmethod
    def from_settings(cls, settings, base_dir: Path | None = None) -> "TrainCommitteeMaker":
        """The Maker of a campaign file's ``learner`` section (``LearnerSettings``; relative paths in the
        hyperparameters start at ``base_dir``). A learner whose package is missing is refused here, in one line."""
        try:
            learner = load_learner(settings.kind, settings.uncertainty)
        except ValueError as exc:
            raise ConfigError(f"learner: {exc}") from None
        hp = settings.hyperparameters if base_dir is None else learner.with_base_dir(settings.hyperparameters, base_dir)
        return cls(n_models=settings.n_models, hyperparameters=hp, base_seed=settings.seed,
                   warm_start=settings.warm_start, learner=learner, uncertainty=settings.uncertainty,
                   n_heads=settings.n_heads, head_forces=settings.head_forces, nll_epochs=settings.nll_epochs,
                   llpr_rank=settings.llpr_rank)

    @property
    def hp(self):
        """The validated hyperparameters."""
        return self.hyperparameters

    def check_elements(self, elements: list[str]) -> None:
        """Refuse elements the learner cannot train on (``mace-finetune``: a foundation file that is missing,
        not a MACE model, or without one of ``elements``): a ``ValueError`` naming the file and the element."""
        self.learner.check_elements(self.hyperparameters, elements)

    @store_job(output_schema=CommitteeDoc)
    def make(
        self,
        label_ids: list[Any],
        campaign: str | None = None,
        iteration: int | None = None,
        previous_model_ids: list[str] | None = None,
    ) -> CommitteeDoc:
        start = time.perf_counter()
        # torch's threads: the free cores at the job's start, or the hyperparameters' num_threads (almat.threads)
        with torch_threads(getattr(self.hyperparameters, "num_threads", None)) as threads:
            logger.debug("iteration %s: training with %d torch threads", iteration, threads)
            return self._train(label_ids, campaign, iteration, previous_model_ids, start)

    def _train(self, label_ids: list[Any], campaign: str | None, iteration: int | None,
               previous_model_ids: list[str] | None, start: float) -> CommitteeDoc:
        db = require_db()
        try:
            labels = load_labels(db, label_ids)
            if len(labels) < 2:
                raise ValueError(
                    f"only {len(labels)} ok label(s) to train on; check the oracle (failed labels carry a reason)"
                )
            job_uuid = CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None
            round_ = _Round(self, db, labels, campaign, iteration, list(previous_model_ids or []), job_uuid, start)
            return _train_committee(round_) if self.uncertainty == "committee" else _train_shallow(round_)
        finally:
            db.close()


@dataclass
class _Round:
    """One training job: its labels, where its models go, and the previous committee."""

    maker: TrainCommitteeMaker
    db: CampaignDB
    labels: list[LabelDoc]
    campaign: str | None
    iteration: int | None
    previous: list[str]
    job_uuid: str | None
    start: float

    def __post_init__(self) -> None:
        self.atoms_list = [lab.to_atoms() for lab in self.labels]
        self.ids = [lab.label_id for lab in self.labels]

    def seed(self, k: int) -> int:
        return self.maker.base_seed + 1000 * (self.iteration or 0) + k

    def previous_model(self, k: int) -> tuple[str | None, Any]:
        """(id, model) of the previous member ``k`` to continue from, when warm-starting and it is the
        learner's own kind of model; (None, None) otherwise."""
        if not self.maker.warm_start or k >= len(self.previous):
            return None, None
        raw = self.db.models.query_one({"model_id": self.previous[k]})
        if raw is None or raw.get("architecture") not in self.maker.learner.architectures:
            return None, None
        return self.previous[k], load_model(self.db.data, ModelDoc.from_store(raw))

    def train(self, k: int, what: str, **options):
        """Train member ``k`` (logging ``what`` is training); (init id, result)."""
        iteration = self.iteration

        def progress(epoch, epochs, loss):
            if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
                logger.info("iteration %s: training %s, epoch %d/%d, loss %.4g", iteration, what, epoch, epochs,
                            loss, extra={"almat_progress": True})

        init_id, init_model = self.previous_model(k)
        result = self.maker.learner.train(self.atoms_list, self.ids, self.maker.hyperparameters, seed=self.seed(k),
                                          init_model=init_model, progress=progress, **options)
        return init_id, result

    def store(self, k: int, init_id: str | None, result, what: str, **extra_hp) -> str:
        """Store a trained member's weights and ``ModelDoc``; its model id."""
        hp = self.maker.hyperparameters
        blob_id = save_model(self.db.data, result.model, campaign=self.campaign, iteration=self.iteration,
                             committee_index=k)
        doc = ModelDoc(
            campaign=self.campaign, iteration=self.iteration, committee_index=k,
            architecture=result.model.almat_architecture["class"], hyperparameters={**hp.model_dump(), **extra_hp},
            seed=self.seed(k), elements=sorted({s for lab in self.labels for s in lab.elements}),
            training_label_ids=result.train_ids, validation_label_ids=result.valid_ids,
            validation_metrics=result.metrics, n_parameters=result.n_parameters, epochs_trained=result.epochs,
            warm_started_from=init_id, weights_blob_id=blob_id, device=getattr(hp, "device", "cpu"),
            wall_time=result.wall_time, job_uuid=self.job_uuid)
        self.db.upsert("models", [doc])
        logger.info("iteration %s: %s trained on %d labels in %.0f s, validation force RMSE %.3f eV/Å",
                    self.iteration, what, len(result.train_ids), result.wall_time, result.metrics["force_rmse"])
        return doc.model_id

    def output(self, model_ids: list[str], metrics: list[dict], failed: list[str] | None = None,
               reused: bool = False) -> CommitteeDoc:
        return CommitteeDoc(campaign=self.campaign, iteration=self.iteration, model_ids=model_ids,
                            n_labels=len(self.labels), validation_metrics=metrics, failed_members=failed or [],
                            reused_previous=reused, wall_time=time.perf_counter() - self.start)


def _train_committee(round_: _Round) -> CommitteeDoc:
    """``n_models`` members, each on its own seed; a member that diverges is left out."""
    n_models = round_.maker.n_models
    model_ids, metrics, failed = [], [], []
    for k in range(n_models):
        try:
            init_id, result = round_.train(k, f"model {k + 1}/{n_models}")
        except FloatingPointError as exc:  # this member diverged: the others go on
            failed.append(f"member {k} (seed {round_.seed(k)}): {exc}")
            logger.warning("iteration %s: model %d/%d failed: %s", round_.iteration, k + 1, n_models, exc)
            continue
        model_ids.append(round_.store(k, init_id, result, f"model {k + 1}/{n_models}"))
        metrics.append(result.metrics)
    if len(model_ids) < 2:
        raise ValueError(f"only {len(model_ids)} of {n_models} committee members trained: " + "; ".join(failed))
    return round_.output(model_ids, metrics, failed)


def _train_shallow(round_: _Round) -> CommitteeDoc:
    """One shallow ensemble, its heads the members (or one LLPR model, two synthetic members); if it diverges, the
    previous committee stays in use."""
    maker = round_.maker
    llpr = maker.uncertainty == "llpr"
    what = "the LLPR model" if llpr else f"the shallow ensemble ({maker.n_heads} heads)"
    options = ({"rank": maker.llpr_rank} if llpr else
               {"n_heads": maker.n_heads, "rotate": maker.head_forces == "rotate", "nll_epochs": maker.nll_epochs})
    try:
        init_id, result = round_.train(0, what, **options)
    except FloatingPointError as exc:
        reason = f"shallow ensemble (seed {round_.seed(0)}): {exc}"
        if not round_.previous:
            raise ValueError(f"the shallow ensemble's training failed and there is no previous committee: {exc}"
                             ) from None
        logger.warning("iteration %s: %s; the previous committee stays in use", round_.iteration, reason)
        return round_.output(round_.previous, [], [reason], reused=True)
    extra = ({"uncertainty": "llpr", "llpr_rank": maker.llpr_rank} if llpr else
             {"n_heads": maker.n_heads, "head_forces": maker.head_forces, "nll_epochs": maker.nll_epochs})
    model_id = round_.store(0, init_id, result, what.removeprefix("the "), **extra)
    return round_.output([model_id], [result.metrics])


def check_uncertainty(uncertainty: str, learner: str, n_heads: int) -> None:
    """Refuse an unknown uncertainty kind, one the learner cannot give (a shallow ensemble of a learner that cannot
    have heads, LLPR of one without a last layer to read), or fewer than 2 heads (one-line ``ValueError``s)."""
    check_uncertainty_kind(uncertainty, learner)
    if uncertainty == "shallow":
        if n_heads < 2:
            raise ValueError(f"a shallow ensemble needs at least 2 heads, got n_heads={n_heads}")
