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

from almat.learner.mace import model_inputs, predict
from almat.learner.models import MODEL_FORMAT, UnsafeModelError, model_from_bytes, model_to_bytes
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob, put_blob
from almat.uncertainty.deviation import atomic_force_deviation, energy_deviation, max_force_deviation


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


@dataclass
class CommitteePrediction:
    """Committee predictions for a list of frames."""

    energies: np.ndarray  # [n_models, n_frames]
    forces: list[np.ndarray]  # per frame [n_models, n_atoms, 3]
    stresses: np.ndarray | None = None  # [n_models, n_frames, 6] (Voigt, eV/Å³, ASE's sign), when asked for

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
        out = {"energy": energy, "free_energy": energy, "forces": self.mean_forces(frame),
               "atomic_deviation": self.atomic_deviation(frame),
               "model_deviation": float(max_force_deviation(self.forces[frame])),
               "energy_deviation": energy_deviation(self.energies[:, frame], self.forces[frame].shape[1])}
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


def _architecture(model: torch.nn.Module) -> str:
    return getattr(model, "almat_architecture", {}).get("class", type(model).__name__)


class Committee:
    """N models that predict together; their disagreement is the model deviation."""

    def __init__(self, models: Sequence[torch.nn.Module], model_ids: Sequence[str] | None = None,
                 device: str = "cpu"):
        if len(models) < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(models)}")
        self.models = list(models)
        self.model_ids = list(model_ids) if model_ids is not None else [str(i) for i in range(len(models))]
        self.device = device
        kinds = {_architecture(m) for m in self.models}
        if len(kinds) != 1:
            raise ValueError(f"committee members of different architectures: {', '.join(sorted(kinds))}")
        self.architecture = kinds.pop()
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
        if self.architecture == "CHGNet":
            return list(chemical_symbols[1:95])
        return [chemical_symbols[int(z)] for z in self.models[0].atomic_numbers.tolist()]

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 16) -> CommitteePrediction:
        if self.architecture == "CHGNet":
            from almat.learner.chgnet import predict_chgnet

            return CommitteePrediction(*predict_chgnet(self.models, atoms_list, batch_size=batch_size))
        energies, forces = predict(self.models, atoms_list, batch_size=batch_size, device=self.device)
        return CommitteePrediction(energies, forces)

    def evaluate(self, atoms_list: Sequence[Atoms], compute_stress: bool = False) -> CommitteePrediction:
        """All frames in one batch: neighbour lists and collation are built once and shared by the
        models, each model runs one forward (the batched step of ``almat.sampler.md.run_walkers``)."""
        if self.architecture == "CHGNet":
            from almat.learner.chgnet import predict_chgnet

            return CommitteePrediction(*predict_chgnet(self.models, atoms_list, stress=compute_stress))
        from mace.tools.torch_geometric import Batch

        batch = Batch.from_data_list(model_inputs(self.models, atoms_list))
        if torch.device(self.device).type != "cpu":
            batch = batch.to(self.device)
        data, ptr = batch.to_dict(), batch.ptr.cpu().numpy()
        energies, forces, stresses = [], [], []
        for model in self.models:
            out = model(data, training=False, compute_force=True, compute_stress=compute_stress)
            energies.append(out["energy"].detach().cpu().numpy())
            forces.append(out["forces"].detach().cpu().numpy())
            if compute_stress:
                stresses.append(out["stress"].detach().cpu().numpy())
        f = np.stack(forces).astype(float)
        voigt = None
        if compute_stress:
            s = np.stack(stresses).astype(float)  # [n_models, n_frames, 3, 3]
            voigt = s[..., [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return CommitteePrediction(np.stack(energies).astype(float), [f[:, ptr[i]:ptr[i + 1]] for i in
                                                                      range(len(atoms_list))], voigt)

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

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        stress = self.stress or "stress" in properties
        self.results = self.committee.evaluate([self.atoms], compute_stress=stress).results(0, stress)
