"""The learner section of a campaign file: which learner, how many members, its hyperparameters.

Pure data, without torch: a campaign file validates with it. The hyperparameters are those of the learner
kind, looked up in ``almat.learner.registry`` (so a learner registered at run time validates too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, model_validator

from almat.learner.base import hyperparameter_errors
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.registry import HYPERPARAMETERS, SHALLOW_LEARNERS, check_kind, hyperparameters_class
from almat.schemas.section import Section



class LearnerSettings(Section):
    """The committee: which learner (``kind``), how many members, and the learner's hyperparameters.

    Kinds: those of ``almat.learner.registry.LEARNERS``: ``mace`` (from scratch), ``mace-finetune`` (from a local
    MACE foundation ``.model``: ``foundation: PATH`` or ``foundation: {path, mode: naive | multihead, replay,
    replay_samples, replay_weight}``) and ``chgnet-finetune`` (from CHGNet's bundled weights).

    ``uncertainty``: ``committee`` (``n_models`` models, each on its own seed) or ``shallow`` (one model with
    ``n_heads`` readout heads, its heads the members: ``docs/uncertainty.md``; learners of ``SHALLOW_LEARNERS``).
    """

    kind: str = "mace"
    n_models: int = Field(4, ge=2)
    warm_start: bool = True
    seed: int = 0
    uncertainty: Literal["committee", "shallow"] = "committee"
    n_heads: int = Field(4, ge=2, description="readout heads of the shallow ensemble (uncertainty: shallow)")
    head_forces: Literal["all", "rotate"] = Field(
        "all", description="shallow ensemble: each training step fits the forces of every head (all) or of one "
        "head in turn (rotate: one model's training cost, one model's accuracy); every head fits its energies")
    hyperparameters: SerializeAsAny[BaseModel] = Field(default_factory=MaceHyperParameters)

    @model_validator(mode="before")
    @classmethod
    def _hyperparameters_of_the_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "mace")
        check_kind(kind)
        if data.get("uncertainty") == "shallow" and kind not in SHALLOW_LEARNERS:
            raise ValueError(f"uncertainty: shallow needs a learner that can have heads "
                             f"({', '.join(SHALLOW_LEARNERS)}); {kind} cannot")
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
