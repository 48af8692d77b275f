"""A committee of MLIPs: load from the store, predict with deviations, drive ASE as a calculator.

What the members predict, and how, is their learner's (``almat.learner.base.Learner``), found from the class of
their architecture record: the committee only holds them.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from almat.learner.base import CommitteePrediction  # noqa: F401 - (re-exported)
from almat.learner.models import MODEL_FORMAT, UnsafeModelError, model_from_bytes, model_to_bytes
from almat.learner.registry import learner_of
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob, put_blob


def save_model(data_store, model: torch.nn.Module, **metadata) -> str:
    """Store the model's weights as a blob in the data store; returns the blob id."""
    payload = base64.b64encode(model_to_bytes(model)).decode("ascii")
    return put_blob(data_store, payload, kind="mlip-weights", encoding=f"{MODEL_FORMAT}+base64", **metadata)


def load_model(data_store, doc: ModelDoc, device: str = "cpu") -> torch.nn.Module:
    """Load the model a ``ModelDoc`` refers to from the data store (only almat's safe format: see
    ``model_from_bytes``); an ``UnsafeModelError`` names the model otherwise."""
    payload = get_blob(data_store, doc.weights_blob_id)
    try:
        if not isinstance(payload, str):
            raise UnsafeModelError("its weights blob is not base64 text")
        return model_from_bytes(base64.b64decode(payload), device=device)
    except (UnsafeModelError, ValueError) as exc:
        raise UnsafeModelError(f"model {doc.model_id} (campaign {doc.campaign}, iteration {doc.iteration}) "
                               f"refused: {exc}") from None


def _architecture(model: torch.nn.Module) -> str:
    return getattr(model, "almat_architecture", {}).get("class", type(model).__name__)


class Committee:
    """N models that predict together; their disagreement is the model deviation.

    The members' learner (``learner``) predicts for them. A member may be a shallow ensemble
    (``almat.learner.shallow``): each of its readout heads is then a member, so one shallow ensemble of N heads
    is a committee of N. ``batched`` (MACE members): True evaluates the members in one vmapped pass
    (``almat.learner.batched``), False one after the other; None (default) batches on an accelerator, and on the
    CPU only batches of at most ``almat.learner.mace.CPU_BATCH_MAX_ATOMS`` atoms, where
    ``benchmarks/uncertainty_cost.py`` measured a gain (13 atoms: 1.7x faster; 32: even; 256: 5 % slower). A
    batched pass that fails falls back to the loop from then on (logged once)."""

    def __init__(self, models: Sequence[torch.nn.Module], model_ids: Sequence[str] | None = None,
                 device: str = "cpu", batched: bool | None = None):
        self.models = list(models)
        kinds = {_architecture(m) for m in self.models}
        if len(kinds) > 1:
            raise ValueError(f"committee members of different architectures: {', '.join(sorted(kinds))}")
        self.architecture = kinds.pop() if kinds else None
        self.learner = learner_of(self.architecture) if self.models else None
        self.n_members = sum(self.learner.heads(m) for m in self.models) if self.models else 0
        if self.n_members < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(models)}")
        self.batched = batched
        self.model_ids = list(model_ids) if model_ids is not None else [str(i) for i in range(len(models))]
        self.device = device
        self.cache: dict[str, Any] = {}  # what the learner keeps about these members (they do not change)
        zs = {tuple(sorted(int(z) for z in m.atomic_numbers.tolist())) for m in self.models
              if hasattr(m, "atomic_numbers")}
        if len(zs) > 1:
            raise ValueError("committee members were trained on different elements")

    @classmethod
    def from_store(cls, db: CampaignDB, model_ids: Sequence[str], device: str = "cpu") -> "Committee":
        docs = []
        for model_id in model_ids:
            raw = db.models.query_one({"model_id": model_id})
            if raw is None:
                raise KeyError(f"model {model_id} is not in the models collection")
            docs.append(ModelDoc.from_store(raw))
        return cls([load_model(db.data, d, device=device) for d in docs], [d.model_id for d in docs], device)

    @property
    def elements(self) -> list[str]:
        """The elements the members know (MACE: those it was trained on; CHGNet: all 94 of its table)."""
        return self.learner.elements(self.models)

    @property
    def shallow(self) -> bool:
        """Whether the members are the heads of shallow ensembles (their mean alone costs one model)."""
        return self.learner.shallow

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 16) -> CommitteePrediction:
        """Every member's energies and forces, ``batch_size`` frames a pass."""
        return self.learner.predict(self, atoms_list, batch_size=batch_size)

    def evaluate(self, atoms_list: Sequence[Atoms], compute_stress: bool = False,
                 deviation: bool = True) -> CommitteePrediction:
        """All frames in one batch: neighbour lists and collation are built once and shared by the
        models, each model runs one forward (the batched step of ``almat.sampler.md.run_walkers``).
        ``deviation=False`` lets a shallow ensemble give only its heads' mean, at one model's cost (MD steps
        whose deviation is not recorded); other committees ignore it."""
        return self.learner.evaluate(self, atoms_list, compute_stress=compute_stress, deviation=deviation)

    def calculator(self, stress: bool = False) -> "CommitteeCalculator":
        return CommitteeCalculator(self, stress=stress)


class CommitteeCalculator(Calculator):
    """ASE calculator giving the committee mean energy and forces (and stress).

    ``results`` also holds ``model_deviation`` (max force deviation, eV/Å), ``energy_deviation``
    (eV/atom) and ``atomic_deviation`` (per-atom force deviation).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, committee: Committee, stress: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee
        self.stress = stress  # always compute the stress (NPT); otherwise only when asked for
        self.cheap_steps = committee.shallow  # the sampler may ask for the mean only between recorded frames
        self.deviation = True  # compute the deviations (False: the mean only, see ``Committee.evaluate``)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        stress = self.stress or "stress" in properties
        self.results = self.committee.evaluate([self.atoms], compute_stress=stress,
                                               deviation=self.deviation).results(0, stress)
