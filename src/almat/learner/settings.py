"""The learner section of a campaign file: which learner, how many members, its hyperparameters.

Pure data, without torch: a campaign file validates with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from almat.learner.hyperparameters import (
    HYPERPARAMETERS,
    SHALLOW_LEARNERS,
    ChgnetHyperParameters,
    MaceFinetuneHyperParameters,
    MaceHyperParameters,
)
from almat.schemas.section import Section, format_validation_error

LEARNERS = HYPERPARAMETERS  # learner kind -> its hyperparameters


class LearnerSettings(Section):
    """The committee: which learner (``kind``), how many members, and the learner's hyperparameters.

    Kinds: ``mace`` (from scratch), ``mace-finetune`` (from a local MACE foundation ``.model``: ``foundation:
    PATH`` or ``foundation: {path, mode: naive | multihead, replay, replay_samples, replay_weight}``) and
    ``chgnet-finetune`` (from CHGNet's bundled weights).

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
    hyperparameters: MaceHyperParameters | MaceFinetuneHyperParameters | ChgnetHyperParameters = Field(
        default_factory=MaceHyperParameters)

    @model_validator(mode="before")
    @classmethod
    def _hyperparameters_of_the_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("kind", "mace")
            if kind not in LEARNERS:
                raise ValueError(f"unknown learner kind {kind!r}; valid: {', '.join(LEARNERS)}")
            if data.get("uncertainty") == "shallow" and kind not in SHALLOW_LEARNERS:
                raise ValueError(f"uncertainty: shallow needs a learner that can have heads "
                                 f"({', '.join(SHALLOW_LEARNERS)}); {kind} cannot")
            if "foundation" in data:  # learner.foundation: a path, or {path, mode, replay, ...}
                if kind != "mace-finetune":
                    raise ValueError(f"foundation: only learner kind mace-finetune takes a foundation file, not {kind}")
                data = dict(data)
                foundation = data.pop("foundation")
                foundation = {"path": foundation} if isinstance(foundation, str) else foundation
                data["hyperparameters"] = {**(data.get("hyperparameters") or {}), "foundation": foundation}
            elif kind == "mace-finetune" and "foundation" not in (data.get("hyperparameters") or {}):
                raise ValueError("learner kind mace-finetune needs foundation: the path of a MACE .model file")
            hp = data.get("hyperparameters")
            if isinstance(hp, dict) or hp is None:
                try:
                    data = {**data, "hyperparameters": LEARNERS[kind](**(hp or {}))}
                except ValidationError as exc:  # one line, naming the keys under hyperparameters
                    raise ValueError(format_validation_error(exc, f"{kind} hyperparameters").replace(
                        f"{kind} hyperparameters: ", "hyperparameters.")) from None
            if data.get("uncertainty") == "shallow" and getattr(data["hyperparameters"], "stress_weight", 0) > 0:
                raise ValueError("hyperparameters.stress_weight: the heads of a shallow ensemble train on energies "
                                 "and forces only; use uncertainty: committee to train on stresses")
        return data

    def maker(self, base_dir: Path | None = None):
        """The ``TrainCommitteeMaker`` of this committee (a relative foundation path starts at ``base_dir``)."""
        from almat.learner.jobs import TrainCommitteeMaker

        hp = self.hyperparameters.model_dump()
        if isinstance(hp.get("foundation"), dict) and base_dir is not None:
            path = Path(hp["foundation"]["path"]).expanduser()
            hp["foundation"]["path"] = str(path if path.is_absolute() else Path(base_dir) / path)
            replay = hp["foundation"].get("replay")
            if replay and not Path(replay).expanduser().is_absolute():
                hp["foundation"]["replay"] = str(Path(base_dir) / replay)
        return TrainCommitteeMaker(n_models=self.n_models, hyperparameters=hp, base_seed=self.seed,
                                   warm_start=self.warm_start, learner=self.kind, uncertainty=self.uncertainty,
                                   n_heads=self.n_heads, head_forces=self.head_forces)
