"""A committee of MLIPs: load from the store, predict with deviations, drive ASE as a calculator."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from almat.learner.mace import model_inputs, predict
from almat.learner.batched import evaluate_stacked, stackable
from almat.learner.shallow import head_count, mean_outputs, predict_heads
from almat.learner.models import MODEL_FORMAT, UnsafeModelError, model_from_bytes, model_to_bytes
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob, put_blob
from almat.uncertainty.deviation import atomic_force_deviation, energy_deviation, max_force_deviation

logger = logging.getLogger(__name__)


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


#: on the CPU, ``Committee(batched=None)`` evaluates the members in one pass only for batches this small
CPU_BATCH_MAX_ATOMS = 24


def _voigt(stress: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> [..., 6] (xx yy zz yz xz xy)."""
    return stress[..., [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def _architecture(model: torch.nn.Module) -> str:
    return getattr(model, "almat_architecture", {}).get("class", type(model).__name__)


class Committee:
    """N models that predict together; their disagreement is the model deviation.

    A member may be a shallow ensemble (``almat.learner.shallow``): each of its readout heads is then a member,
    so one shallow ensemble of N heads is a committee of N. ``batched`` (MACE members): True evaluates the
    members in one vmapped pass (``almat.learner.batched``), False one after the other; None (default) batches on
    an accelerator, and on the CPU only batches of at most ``CPU_BATCH_MAX_ATOMS`` atoms, where
    ``benchmarks/uncertainty_cost.py`` measured a gain (13 atoms: 1.7x faster; 32: even; 256: 5 % slower). A
    batched pass that fails falls back to the loop from then on (logged once)."""

    def __init__(self, models: Sequence[torch.nn.Module], model_ids: Sequence[str] | None = None,
                 device: str = "cpu", batched: bool | None = None):

        self.n_members = sum(head_count(m) for m in models)
        if self.n_members < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(models)}")
        self.models = list(models)
        self.batched = batched
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

    @property
    def shallow(self) -> bool:
        """Whether the members are the heads of shallow ensembles."""
        return self.architecture == "ShallowEnsembleMACE"

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 16) -> CommitteePrediction:
        if self.shallow:
            from mace.tools.torch_geometric import DataLoader

            batches = list(DataLoader(model_inputs(self.models, atoms_list), batch_size=batch_size, shuffle=False))
            return self._heads([self._to_device(b) for b in batches], len(atoms_list))
        if self.architecture == "CHGNet":
            from almat.learner.chgnet import predict_chgnet

            return CommitteePrediction(*predict_chgnet(self.models, atoms_list, batch_size=batch_size))
        energies, forces = predict(self.models, atoms_list, batch_size=batch_size, device=self.device)
        return CommitteePrediction(energies, forces)

    def evaluate(self, atoms_list: Sequence[Atoms], compute_stress: bool = False,
                 deviation: bool = True) -> CommitteePrediction:
        """All frames in one batch: neighbour lists and collation are built once and shared by the
        models, each model runs one forward (the batched step of ``almat.sampler.md.run_walkers``).
        ``deviation=False`` lets a shallow ensemble give only its heads' mean, at one model's cost (MD steps
        whose deviation is not recorded); other committees ignore it."""
        if self.architecture == "CHGNet":
            from almat.learner.chgnet import predict_chgnet

            return CommitteePrediction(*predict_chgnet(self.models, atoms_list, stress=compute_stress))
        from mace.tools.torch_geometric import Batch

        batch = self._to_device(Batch.from_data_list(model_inputs(self.models, atoms_list)))
        if self.shallow and not deviation and len(self.models) == 1:
            return self._mean(batch, len(atoms_list), compute_stress)
        if self.shallow:
            return self._heads([batch], len(atoms_list), compute_stress)
        data, ptr = batch.to_dict(), batch.ptr.cpu().numpy()
        auto = torch.device(self.device).type != "cpu" or int(batch.num_nodes) <= CPU_BATCH_MAX_ATOMS
        stacked = self._stacked(data, compute_stress) if (auto if self.batched is None else self.batched) else None
        if stacked is not None:
            e, f, s = stacked
        else:
            outs = [model(dict(data), training=False, compute_force=True, compute_stress=compute_stress)
                    for model in self.models]
            e, f = torch.stack([o["energy"] for o in outs]), torch.stack([o["forces"] for o in outs])
            s = torch.stack([o["stress"] for o in outs]) if compute_stress else None
        f = f.detach().cpu().numpy().astype(float)
        return CommitteePrediction(e.detach().cpu().numpy().astype(float),
                                   [f[:, ptr[i]:ptr[i + 1]] for i in range(len(atoms_list))],
                                   None if s is None else _voigt(s.detach().cpu().numpy().astype(float)))

    def _to_device(self, batch):
        return batch.to(self.device) if torch.device(self.device).type != "cpu" else batch

    def _stacked(self, data: dict, compute_stress: bool):
        """(energies, forces, stresses) of every member in one vmapped pass, or None where they do not stack or
        the pass fails (then the loop is used from here on)."""

        if getattr(self, "_stackable", None) is None:
            self._stackable = stackable(self.models)  # (once: the members do not change)
        if not self._stackable:
            self.batched = False
            return None
        try:
            return evaluate_stacked(self.models, data, compute_stress)
        except RuntimeError as exc:  # a transform mace does not support: the loop gives the same numbers
            logger.warning("batched committee evaluation failed (%s); evaluating the members one by one",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.batched = False
            return None

    def _mean(self, batch, n_frames: int, compute_stress: bool) -> CommitteePrediction:

        out = mean_outputs(self.models[0], batch.to_dict(), compute_stress)
        ptr = batch.ptr.cpu().numpy()
        f = out["forces"].detach().cpu().numpy().astype(float)[None]
        s = _voigt(out["stress"].detach().cpu().numpy().astype(float))[None] if compute_stress else None
        return CommitteePrediction(out["energy"].cpu().numpy().astype(float)[None],
                                   [f[:, ptr[i]:ptr[i + 1]] for i in range(n_frames)], s, with_deviation=False)

    def _heads(self, batches, n_frames: int, compute_stress: bool = False) -> CommitteePrediction:
        """The heads of the shallow ensembles as members: energies [n_heads, n_frames], ... (see ``predict``)."""

        parts = [predict_heads(model, batches, compute_stress) for model in self.models]
        energies = np.concatenate([p[0] for p in parts])
        forces = [np.concatenate([p[1][i] for p in parts]) for i in range(n_frames)]
        stresses = _voigt(np.concatenate([p[2] for p in parts])) if compute_stress else None
        return CommitteePrediction(energies, forces, stresses)

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
