"""A committee of MLIPs: load from the store, predict with deviations, drive ASE as a calculator."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from almat.learner.mace import model_from_bytes, model_to_bytes, predict
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob, put_blob
from almat.uncertainty.deviation import atomic_force_deviation, energy_deviation


def save_model(data_store, model: torch.nn.Module, **metadata) -> str:
    """Store the model's weights as a blob in the data store; returns the blob id."""
    payload = base64.b64encode(model_to_bytes(model)).decode("ascii")
    return put_blob(data_store, payload, kind="mlip-weights", encoding="torch-pickle+base64", **metadata)


def load_model(data_store, doc: ModelDoc, device: str = "cpu") -> torch.nn.Module:
    """Load the model a ``ModelDoc`` refers to from the data store."""
    payload = get_blob(data_store, doc.weights_blob_id)
    return model_from_bytes(base64.b64decode(payload), device=device)


@dataclass
class CommitteePrediction:
    """Committee predictions for a list of frames."""

    energies: np.ndarray  # [n_models, n_frames]
    forces: list[np.ndarray]  # per frame [n_models, n_atoms, 3]

    @property
    def mean_energy(self) -> np.ndarray:
        return self.energies.mean(axis=0)

    def mean_forces(self, frame: int) -> np.ndarray:
        return self.forces[frame].mean(axis=0)

    def atomic_deviation(self, frame: int) -> np.ndarray:
        return atomic_force_deviation(self.forces[frame])

    @property
    def model_deviation(self) -> np.ndarray:
        """Max force deviation per frame (eV/Å)."""
        return np.array([atomic_force_deviation(f).max() for f in self.forces])

    @property
    def energy_deviation(self) -> np.ndarray:
        return np.array([energy_deviation(self.energies[:, i], f.shape[1]) for i, f in enumerate(self.forces)])


class Committee:
    """N models that predict together; their disagreement is the model deviation."""

    def __init__(self, models: Sequence[torch.nn.Module], model_ids: Sequence[str] | None = None,
                 device: str = "cpu"):
        if len(models) < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(models)}")
        self.models = list(models)
        self.model_ids = list(model_ids) if model_ids is not None else [str(i) for i in range(len(models))]
        self.device = device
        zs = {tuple(sorted(int(z) for z in m.atomic_numbers.tolist())) for m in self.models}
        if len(zs) != 1:
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
        return [chemical_symbols[int(z)] for z in self.models[0].atomic_numbers.tolist()]

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 16) -> CommitteePrediction:
        energies, forces = predict(self.models, atoms_list, batch_size=batch_size, device=self.device)
        return CommitteePrediction(energies, forces)

    def calculator(self) -> "CommitteeCalculator":
        return CommitteeCalculator(self)


class CommitteeCalculator(Calculator):
    """ASE calculator giving the committee mean energy and forces.

    ``results`` also holds ``model_deviation`` (max force deviation, eV/Å), ``energy_deviation``
    (eV/atom) and ``atomic_deviation`` (per-atom force deviation).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pred = self.committee.predict([self.atoms])
        energy = float(pred.mean_energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": pred.mean_forces(0),
            "atomic_deviation": pred.atomic_deviation(0),
            "model_deviation": float(pred.model_deviation[0]),
            "energy_deviation": float(pred.energy_deviation[0]),
        }
