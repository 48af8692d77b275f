"""The ``Learner`` interface: what a kind of MLIP gives the campaign loop (``docs/learners.md``).

A learner trains one committee member (``train``), predicts with a committee of its models (energies, forces,
stresses, one row per member), gives descriptors for FPS and diversity, says which elements it can train on,
declares the builders of its models for the safe model format (``almat.learner.models``) and, optionally, a
zero-shot calculator (``initial.method: foundation-md``). A learner holds no state: its settings are its
hyperparameters (a pydantic model of ``hyperparameters``), passed to every call. No torch is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
from ase.data import chemical_symbols
from monty.json import MSONable
from pydantic import BaseModel, ValidationError

from almat.uncertainty.deviation import atomic_force_deviation, energy_deviation, max_force_deviation

if TYPE_CHECKING:
    from ase import Atoms

    from almat.learner.models import TrainResult


@dataclass
class CommitteePrediction:
    """Committee predictions for a list of frames."""

    energies: np.ndarray  # [n_models, n_frames]
    forces: list[np.ndarray]  # per frame [n_models, n_atoms, 3]
    stresses: np.ndarray | None = None  # [n_models, n_frames, 6] (Voigt, eV/Å³, ASE's sign), when asked for
    with_deviation: bool = True  # False: one row, the members' mean only (``Committee.evaluate(deviation=False)``)

    @property
    def mean_energy(self) -> np.ndarray:
        return self.energies.mean(axis=0)

    def mean_forces(self, frame: int) -> np.ndarray:
        return self.forces[frame].mean(axis=0)

    def mean_stress(self, frame: int) -> np.ndarray:
        return self.stresses[:, frame].mean(axis=0)

    def results(self, frame: int, stress: bool = False) -> dict:
        """ASE calculator results of a frame: mean energy, forces [, stress]; deviations."""
        energy = float(self.mean_energy[frame])
        out = {"energy": energy, "free_energy": energy, "forces": self.mean_forces(frame)}
        if self.with_deviation:
            out.update(atomic_deviation=self.atomic_deviation(frame),
                       model_deviation=float(max_force_deviation(self.forces[frame])),
                       energy_deviation=energy_deviation(self.energies[:, frame], self.forces[frame].shape[1]))
        if stress and self.stresses is not None:
            out["stress"] = self.mean_stress(frame)
        return out

    def atomic_deviation(self, frame: int) -> np.ndarray:
        return atomic_force_deviation(self.forces[frame])

    @property
    def model_deviation(self) -> np.ndarray:
        """Max force deviation per frame (eV/Å)."""
        return np.array([atomic_force_deviation(f).max() for f in self.forces])

    @property
    def energy_deviation(self) -> np.ndarray:
        return np.array([energy_deviation(self.energies[:, i], f.shape[1]) for i, f in enumerate(self.forces)])


@dataclass
class Training:
    """One member's training, as ``Learner.train`` hands it to ``Learner.fit``."""

    atoms_list: Sequence[Atoms]  # labelled configurations: energy and forces (and stress) in ``atoms.calc``
    ids: Sequence[str]  # their label ids, so that the result says which went to training and which to validation
    hp: Any  # the learner's hyperparameters
    seed: int  # the member's seed: initialisation, split, batch order
    init_model: Any = None  # the previous member to continue from (warm start), or None
    progress: Callable[[int, int, float], None] | None = None  # progress(epoch, epochs, train loss)
    options: dict[str, Any] = field(default_factory=dict)  # learner-specific (shallow: n_heads, rotate)


class Learner(MSONable):
    """A kind of MLIP. Subclasses set ``kind``, ``hyperparameters`` and ``architectures`` and implement
    ``fit`` and ``predict``; the rest has defaults. Register one with
    ``almat.learner.registry.register_learner``."""

    #: the learner kind of campaign files (``learner.kind``)
    kind: ClassVar[str] = ""
    #: its hyperparameters class (pydantic, without torch)
    hyperparameters: ClassVar[type[BaseModel]]
    #: model class of an architecture record -> the function that builds a model from the record's ``kwargs``
    architectures: ClassVar[dict[str, Callable[[dict], Any]]] = {}
    #: whether a model's readout heads are the committee's members (a shallow ensemble)
    shallow: ClassVar[bool] = False

    def __eq__(self, other: object) -> bool:  # stateless: two learners of one class are the same learner
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ training

    def train(self, atoms_list: Sequence[Atoms], ids: Sequence[str], hp, seed: int, init_model: Any = None,
              progress: Callable[[int, int, float], None] | None = None, **options: Any) -> TrainResult:
        """Train one committee member on labelled Atoms. With ``init_model`` (a previous member) it may continue
        from those weights (warm start); ``progress(epoch, epochs, loss)`` is called once per epoch. A member
        whose loss is not finite raises ``FloatingPointError``."""
        if len(atoms_list) != len(ids):
            raise ValueError("atoms_list and ids must have the same length")
        if len(atoms_list) < 2:
            raise ValueError(f"need at least 2 labelled configurations to train, got {len(atoms_list)}")
        return self.fit(Training(atoms_list, ids, self.validate(hp), seed, init_model, progress, options))

    def fit(self, run: Training) -> TrainResult:
        """Train one member (see ``train``); the ``TrainResult`` holds a model built by ``model_from_architecture``
        (``almat.learner.models``), so that it can be stored."""
        raise NotImplementedError

    def validate(self, hp: Any) -> BaseModel:
        """The hyperparameters as this learner's class (a dict is validated; unknown keys are refused)."""
        if isinstance(hp, self.hyperparameters):
            return hp
        data = hp.model_dump() if isinstance(hp, BaseModel) else dict(hp or {})
        try:
            return self.hyperparameters(**data)
        except ValidationError as exc:
            raise ValueError(hyperparameter_errors(exc, self.hyperparameters)) from None

    def with_base_dir(self, hp: BaseModel, base_dir: str | Path) -> BaseModel:
        """The hyperparameters with their relative file paths starting at ``base_dir`` (the campaign file's)."""
        return hp

    def check_elements(self, hp: BaseModel, elements: list[str]) -> None:
        """Refuse (``ValueError``) elements this learner cannot train on; by default it can train on any."""

    def zero_shot_calculator(self, hp: BaseModel):
        """An ASE calculator of the learner's pretrained model (``initial.method: foundation-md``)."""
        raise ValueError(f"learner kind {self.kind} has no pretrained model for initial.method: foundation-md")

    # ------------------------------------------------------------------ a committee of its models

    def heads(self, model: Any) -> int:
        """The committee members one model counts for (its readout heads for a shallow ensemble)."""
        return 1

    def elements(self, models: Sequence[Any]) -> list[str]:
        """The elements the models know (by default those of ``atomic_numbers``, as MACE keeps them)."""
        return [chemical_symbols[int(z)] for z in models[0].atomic_numbers.tolist()]

    def predict(self, committee, atoms_list: Sequence[Atoms], batch_size: int = 16,
                stress: bool = False) -> CommitteePrediction:
        """Every member's energies, forces (and, with ``stress``, stresses) of ``atoms_list``, ``batch_size``
        frames a pass (``committee``: a ``Committee`` of this learner's models)."""
        raise NotImplementedError

    def evaluate(self, committee, atoms_list: Sequence[Atoms], compute_stress: bool = False,
                 deviation: bool = True) -> CommitteePrediction:
        """``predict`` of the frames of one MD step (``deviation=False``: the members' mean is enough)."""
        return self.predict(committee, atoms_list, stress=compute_stress)

    def descriptors(self, model: Any, atoms_list: Sequence[Atoms], batch_size: int = 16, num_layers: int = -1,
                    device: str = "cpu") -> list[np.ndarray]:
        """Invariant per-atom descriptors ``[n_atoms, descriptor_size]`` of each frame, from one model."""
        raise NotImplementedError(f"learner kind {self.kind} gives no descriptors")

    def descriptor_size(self, model: Any, num_layers: int = -1) -> int:
        """The width of ``descriptors``."""
        raise NotImplementedError(f"learner kind {self.kind} gives no descriptors")

    # ------------------------------------------------------------------ a learner that stores its models itself

    def model_to_bytes(self, model: Any) -> bytes:
        """The bytes of a model that is not a torch module (``almat.learner.models.OWN_FORMAT``): data only."""
        raise NotImplementedError(f"learner kind {self.kind} stores its models as torch state dicts")

    def model_from_bytes(self, blob: bytes, device: str = "cpu") -> Any:
        """``model_to_bytes`` read back; anything else raises ``almat.learner.models.UnsafeModelError``."""
        raise NotImplementedError(f"learner kind {self.kind} stores its models as torch state dicts")

    def export(self, model: Any) -> tuple[bytes, str]:
        """The model as a file for use outside almat, and what that file is (``almat export-model``): by default
        the whole torch module, as ``mace_run_train``'s ``.model`` files are (it unpickles: for trusted use)."""
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(model, buffer)
        return buffer.getvalue(), "a whole torch module (.model, as mace_run_train writes: a pickle, open only trusted files)"


def hyperparameter_errors(exc: ValidationError, cls: type[BaseModel]) -> str:
    """One line naming every bad key of a learner's hyperparameters (``hyperparameters.KEY: message``); an unknown
    key lists the valid ones."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; valid: {', '.join(cls.model_fields)}" if len(err["loc"]) == 1 else "unknown key"
        parts.append(f"hyperparameters.{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
