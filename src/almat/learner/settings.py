"""The learner section of a campaign file: which learner, how many members, its hyperparameters.

Pure data, without torch: a campaign file validates with it. The hyperparameters are those of the learner
kind, looked up in ``almat.learner.registry`` (so a learner registered at run time validates too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, model_validator

from almat.learner.base import hyperparameter_errors
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.registry import HYPERPARAMETERS, check_kind, check_uncertainty_kind, hyperparameters_class
from almat.schemas.section import Section



class LearnerSettings(Section):
    """The committee: which learner (``kind``), how many members, and the learner's hyperparameters.

    Kinds: those of ``almat.learner.registry.LEARNERS``: ``mace`` (from scratch), ``mace-finetune`` (from a local
    MACE foundation ``.model``: ``foundation: PATH`` or ``foundation: {path, mode: naive | multihead, replay,
    replay_samples, replay_weight}``) and ``chgnet-finetune`` (from CHGNet's bundled weights).

    ``uncertainty``: ``committee`` (``n_models`` models, each on its own seed), ``shallow`` (one model with
    ``n_heads`` readout heads, its heads the members: ``docs/uncertainty.md``; learners of ``SHALLOW_LEARNERS``;
    ``nll_epochs`` > 0 fine-tunes them with a force NLL) or ``llpr`` (one model and the covariance of its last
    layer, ``almat.learner.llpr``; learners of ``LLPR_LEARNERS``).
    """

    kind: str = "mace"
    n_models: int = Field(4, ge=2)
    warm_start: bool = True
    seed: int = 0
    uncertainty: Literal["committee", "shallow", "llpr"] = "committee"
    n_heads: int = Field(4, ge=2, description="readout heads of the shallow ensemble (uncertainty: shallow)")
    head_forces: Literal["all", "rotate"] = Field(
        "all", description="shallow ensemble: each training step fits the forces of every head (all) or of one "
        "head in turn (rotate: one model's training cost, one model's accuracy); every head fits its energies")
    nll_epochs: int = Field(
        0, ge=0, description="shallow ensemble: after the usual training, epochs of fine-tuning with the Gaussian "
        "negative log-likelihood of energies and forces (mean and variance over the heads); 0: off")
    llpr_rank: int | None = Field(
        4, ge=1, description="llpr: covariance directions (largest first) of the force uncertainty, one backward "
        "each on recorded frames; None: all (exact, one backward per last-layer feature)")
    hyperparameters: SerializeAsAny[BaseModel] = Field(default_factory=MaceHyperParameters)

    @model_validator(mode="before")
    @classmethod
    def _hyperparameters_of_the_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "mace")
        check_kind(kind)
        check_uncertainty_kind(data.get("uncertainty", "committee"), kind)
        if data.get("nll_epochs") and data.get("uncertainty") != "shallow":
            raise ValueError("nll_epochs: only a shallow ensemble (uncertainty: shallow) trains with the NLL")
        hp_class = hyperparameters_class(kind)
        data = _shorthands(data, kind, hp_class)
        hp = data.get("hyperparameters")
        if isinstance(hp, BaseModel) and not isinstance(hp, hp_class):
            hp = hp.model_dump()
        if not isinstance(hp, BaseModel):
            try:
                hp = hp_class(**(hp or {}))
            except ValidationError as exc:  # one line, naming the keys under hyperparameters
                raise ValueError(hyperparameter_errors(exc, hp_class)) from None
        if data.get("uncertainty") == "shallow" and getattr(hp, "stress_weight", 0) > 0:
            raise ValueError("hyperparameters.stress_weight: the heads of a shallow ensemble train on energies "
                             "and forces only; use uncertainty: committee to train on stresses")
        return {**data, "hyperparameters": hp}


def _shorthands(data: dict, kind: str, hp_class: type[BaseModel]) -> dict:
    """Move the keys a learner's hyperparameters allow in the learner section itself (``learner.foundation``)
    into ``hyperparameters``; refuse them for a learner that does not take them."""
    fields = set(LearnerSettings.model_fields)
    extra = [key for key in data if key not in fields]
    if not extra:
        return data
    own = getattr(hp_class, "shorthands", {})
    for key in extra:
        if key not in own:
            takers = [k for k, c in HYPERPARAMETERS.items()
                      if not isinstance(c, str) and key in getattr(c, "shorthands", {})]
            if takers:
                what = getattr(HYPERPARAMETERS[takers[0]], "shorthands")[key]
                raise ValueError(f"{key}: only learner kind {', '.join(takers)} takes {what}, not {kind}")
    moved = {key: data[key] for key in extra if key in own}
    if not moved:
        return data
    hp = data.get("hyperparameters")
    hp = hp.model_dump() if isinstance(hp, BaseModel) else hp or {}
    return {**{k: v for k, v in data.items() if k not in moved}, "hyperparameters": {**hp, **moved}}


def uncertainty_label(config: dict | None) -> str:
    """What gives a campaign's uncertainty, in words, from its stored config (``almat status``, ``almat serve``):
    ``committee of 4``, ``shallow, 4 heads``, ``shallow, 4 heads, NLL 10 epochs``, ``llpr`` (``llpr, rank 4``);
    ``-`` for a campaign without a learner section."""
    learner = (config or {}).get("learner")
    if not isinstance(learner, dict):
        return "-"
    kind = learner.get("uncertainty") or "committee"
    if kind == "shallow":
        nll = learner.get("nll_epochs") or 0
        return f"shallow, {learner.get('n_heads', 4)} heads" + (f", NLL {nll} epochs" if nll else "")
    if kind == "llpr":
        rank = learner.get("llpr_rank")
        return "llpr" + (f", rank {rank}" if rank else "")
    return f"committee of {learner.get('n_models', 4)}"
