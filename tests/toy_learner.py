"""A learner from outside almat: a small torch pair potential, registered with one call.

Each atom's energy is a small MLP of Gaussian features of its neighbours' distances (smoothly cut off), plus a
reference energy per element; forces (and stresses) are derivatives by autograd. Members differ by their seed:
initial weights, train/validation split and the order of the frames. It is what ``docs/learners.md`` shows
under "How to add a learner", and ``tests/campaign/test_toy_learner.py`` runs a whole campaign with it.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from ase.neighborlist import neighbor_list
from pydantic import Field

from almat.learner.base import CommitteePrediction, Learner, Training
from almat.learner.models import TrainResult, model_from_architecture, split_indices
from almat.learner.registry import register_learner
from almat.schemas.section import Section


class ToyHyperParameters(Section):
    """The toy's settings (a ``Section``: unknown keys are refused; it has the ``device`` every learner has)."""

    cutoff: float = Field(4.0, gt=0, description="Å")
    n_basis: int = Field(8, ge=1, description="Gaussians on [1.5 Å, cutoff]")
    hidden: int = Field(16, ge=1)
    epochs: int = Field(30, ge=1)
    warm_start_epochs: int = Field(10, ge=0)
    lr: float = Field(0.01, gt=0)
    forces_weight: float = Field(10.0, ge=0)
    valid_fraction: float = Field(0.2, ge=0, lt=1)
    device: str = "cpu"


class PairMLP(torch.nn.Module):
    """E = sum over atoms of (e0[element] + MLP(sum over neighbours j of g(r_ij)))."""

    def __init__(self, cutoff: float, n_basis: int, hidden: int, atomic_numbers: list[int], e0: list[float]):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("atomic_numbers", torch.tensor(atomic_numbers))  # the elements it knows
        self.register_buffer("centres", torch.linspace(1.5, cutoff, n_basis))
        self.e0 = torch.nn.Parameter(torch.tensor(e0))
        self.net = torch.nn.Sequential(torch.nn.Linear(n_basis, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))

    def features(self, atoms, strain: torch.Tensor | None = None):
        """Per-atom features [n_atoms, n_basis] (and the positions they derive from)."""
        i, j, shifts = neighbor_list("ijS", atoms, self.cutoff)
        unknown = set(atoms.numbers.tolist()) - set(self.atomic_numbers.tolist())
        if unknown:
            raise ValueError(f"the toy model was not trained on atomic numbers {sorted(unknown)}")
        dtype = self.centres.dtype
        positions = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
        offsets = torch.tensor(shifts @ atoms.cell.array, dtype=dtype)
        pos, off = (positions, offsets) if strain is None else (positions @ (torch.eye(3, dtype=dtype) + strain),
                                                              offsets @ (torch.eye(3, dtype=dtype) + strain))
        r = torch.linalg.vector_norm(pos[j] - pos[i] + off, dim=1)
        width = (self.cutoff - 1.5) / len(self.centres)
        g = torch.exp(-(((r[:, None] - self.centres) / width) ** 2)) * (0.5 * (torch.cos(math.pi * r / self.cutoff)
                                                                            + 1))[:, None]
        return torch.zeros(len(atoms), len(self.centres), dtype=dtype).index_add(0, torch.as_tensor(i), g), positions

    def forward(self, atoms, stress: bool = False, create_graph: bool = False) -> dict:
        strain = torch.zeros(3, 3, dtype=self.centres.dtype, requires_grad=True) if stress else None
        g, positions = self.features(atoms, strain)
        index = torch.as_tensor(np.searchsorted(self.atomic_numbers.numpy(), atoms.numbers))
        energy = self.net(g).sum() + self.e0[index].sum()
        grads = torch.autograd.grad(energy, [positions] + ([strain] if stress else []), create_graph=create_graph)
        out = {"energy": energy, "forces": -grads[0]}
        if stress:  # ASE's sign: dE/d(strain) / volume
            out["stress"] = grads[1] / atoms.get_volume()
        return out


def build_pair_mlp(kwargs: dict) -> PairMLP:
    return PairMLP(**kwargs)


def _fit(run: Training) -> TrainResult:
    """One member: Adam on (energy per atom)² + forces_weight x (forces)², one frame a step."""
    start, hp, atoms_list = time.perf_counter(), run.hp, run.atoms_list
    torch.manual_seed(run.seed)
    rng = np.random.default_rng(run.seed)
    train_idx, valid_idx = split_indices(len(atoms_list), hp.valid_fraction, rng)
    zs = sorted({int(z) for a in atoms_list for z in a.numbers})
    if run.init_model is not None and run.init_model.atomic_numbers.tolist() == zs:
        model, epochs = copy.deepcopy(run.init_model), hp.warm_start_epochs
    else:  # reference energies per element by least squares, then a fresh network
        counts = np.array([[np.sum(atoms_list[k].numbers == z) for z in zs] for k in train_idx])
        e0 = np.linalg.lstsq(counts, [atoms_list[k].get_potential_energy() for k in train_idx], rcond=None)[0]
        record = {"class": "ToyPairMLP", "dtype": "float64", "kwargs": {
            "cutoff": hp.cutoff, "n_basis": hp.n_basis, "hidden": hp.hidden, "atomic_numbers": zs,
            "e0": [float(e) for e in e0]}}
        model, epochs = model_from_architecture(record), hp.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)

    def loss_of(k: int, create_graph: bool):
        atoms = atoms_list[k]
        out = model(atoms, create_graph=create_graph)
        e_err = ((out["energy"] - atoms.get_potential_energy()) / len(atoms)) ** 2
        f_err = torch.mean((out["forces"] - torch.as_tensor(atoms.get_forces())) ** 2)
        return e_err + hp.forces_weight * f_err, e_err.item(), f_err.item()

    history = []
    for epoch in range(1, epochs + 1):
        total = 0.0
        for k in rng.permutation(train_idx):
            optimizer.zero_grad()
            loss, _, _ = loss_of(int(k), create_graph=True)
            loss.backward()
            optimizer.step()
            total += loss.item() / len(train_idx)
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {total})")
        history.append({"epoch": epoch, "train_loss": total})
        if run.progress is not None:
            run.progress(epoch, epochs, total)
    errors = np.array([loss_of(int(k), create_graph=False)[1:] for k in (valid_idx if len(valid_idx) else train_idx)])
    metrics = {"energy_rmse_per_atom": math.sqrt(errors[:, 0].mean()), "force_rmse": math.sqrt(errors[:, 1].mean())}
    return TrainResult.of(model.eval(), run.ids, train_idx, valid_idx, metrics, epochs, start, history)


class ToyLearner(Learner):
    """The toy pair potential: it trains, predicts (energies, forces, stresses) and gives descriptors."""

    kind = "toy"
    hyperparameters = ToyHyperParameters
    architectures = {"ToyPairMLP": build_pair_mlp}

    def fit(self, run: Training) -> TrainResult:
        return _fit(run)

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        outs = [[model(atoms, stress=stress) for atoms in atoms_list] for model in committee.models]
        energies = np.array([[o["energy"].item() for o in row] for row in outs])
        forces = [np.stack([row[f]["forces"].detach().numpy() for row in outs]) for f in range(len(atoms_list))]
        stresses = None
        if stress:
            full = np.array([[o["stress"].detach().numpy() for o in row] for row in outs])  # [n_models, n_frames, 3, 3]
            stresses = full[..., [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return CommitteePrediction(energies, forces, stresses)

    def descriptors(self, model, atoms_list, batch_size=16, num_layers=-1, device="cpu") -> list[np.ndarray]:
        return [model.features(atoms)[0].detach().numpy() for atoms in atoms_list]

    def descriptor_size(self, model, num_layers=-1) -> int:
        return len(model.centres)


register_learner("toy", "toy_learner:ToyLearner", hyperparameters=ToyHyperParameters)
