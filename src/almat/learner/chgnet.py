"""CHGNet committee members fine-tuned from the pretrained weights that the chgnet wheel ships (0.3.0).

- The pretrained checkpoint is read with ``weights_only=True`` (it holds tensors and plain values), and the
  model is rebuilt from its ``model_args``: ``chgnet_architecture`` is the record that ``model_to_bytes``
  stores beside the state dict, so a fine-tuned CHGNet is stored and reloaded like a MACE model.
- Reference energies: CHGNet predicts ``AtomRef(composition) + network``. Before the first fine-tuning the
  ``AtomRef`` is refitted by least squares to the training labels and then frozen, so a new oracle's energy
  scale (EMT, another DFT functional, other pseudopotentials) lands in the per-element references and the
  network only learns what differs.
- Members differ by seed: their train/validation split, batch order and dropout.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ase.data import chemical_symbols

from almat.learner.base import CommitteePrediction, Learner, Training
from almat.learner.hyperparameters import ChgnetHyperParameters
from almat.learner.models import TrainResult, model_from_architecture, split_indices

PRETRAINED = "0.3.0"


def _checkpoint(version: str = PRETRAINED) -> dict:
    import chgnet

    files = sorted((Path(chgnet.__file__).parent / "pretrained" / version).glob("*.pth.tar"))
    if not files:
        raise FileNotFoundError(f"chgnet has no pretrained weights {version} in its package")
    return torch.load(files[0], map_location="cpu", weights_only=True)["model"]


def chgnet_architecture(model_args: dict) -> dict:
    return {"class": "CHGNet", "dtype": "float32", "kwargs": dict(model_args)}


def build_chgnet(kwargs: dict) -> torch.nn.Module:
    import contextlib
    import io

    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet initialized with ... parameters"
        return CHGNet(**kwargs)


def pretrained_chgnet(version: str = PRETRAINED) -> torch.nn.Module:
    """The pretrained CHGNet, rebuilt from its ``model_args`` and state dict (no pickled code)."""
    ckpt = _checkpoint(version)
    model = model_from_architecture(chgnet_architecture(ckpt["model_args"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()


def crystal_graphs(model, atoms_list: Sequence[Atoms]):
    from pymatgen.io.ase import AseAtomsAdaptor

    return [model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in atoms_list]


def refit_atom_ref(atom_ref, graphs, energies_per_atom: np.ndarray) -> np.ndarray:
    """Set CHGNet's AtomRef (per-element reference energies, intensive) by least squares in float64 over the
    elements present in ``graphs``; the other elements keep theirs. Returns the weights.

    chgnet's own ``AtomRef.fit`` inverts XᵀX with ``pinv`` in float32: with one composition (every frame of
    a campaign on one cell) that matrix has rank 1, its round-off singular values pass pinv's cut-off, and
    the references come out tens of eV/atom off, which the fine-tuning then fights for every step.
    """
    n = atom_ref.fc.weight.shape[1]
    features = np.zeros((len(graphs), n))
    for row, graph in enumerate(graphs):
        z = graph.atomic_number.detach().cpu().numpy().astype(int)
        features[row] = np.bincount(z - 1, minlength=n) / len(z)
    present = features.sum(axis=0) > 0
    weights = atom_ref.fc.weight.detach().cpu().numpy().astype(float).reshape(-1)
    solution, *_ = np.linalg.lstsq(features[:, present], np.asarray(energies_per_atom, dtype=float), rcond=None)
    weights[present] = solution
    with torch.no_grad():
        atom_ref.fc.weight.copy_(torch.as_tensor(weights, dtype=atom_ref.fc.weight.dtype).view(1, n))
    atom_ref.fitted = True
    return weights


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def _finetune(run: Training) -> TrainResult:
    """Fine-tune CHGNet on labelled Atoms (energy and forces in ``atoms.calc``): from the pretrained
    weights, or from ``init_model`` (a previous member) for ``hp.warm_start_epochs``."""
    start, hp, seed, init_model, atoms_list = time.perf_counter(), run.hp, run.seed, run.init_model, run.atoms_list
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_idx, valid_idx = split_indices(len(atoms_list), hp.valid_fraction, rng)
    model = copy.deepcopy(init_model) if init_model is not None else pretrained_chgnet(hp.pretrained)
    graphs = crystal_graphs(model, atoms_list)
    e = torch.tensor([a.get_potential_energy() / len(a) for a in atoms_list], dtype=torch.float32)
    forces = [torch.tensor(np.asarray(a.get_forces()), dtype=torch.float32) for a in atoms_list]
    if init_model is None:  # the oracle's reference energies: least squares on what the network leaves, frozen
        train_graphs = [graphs[i] for i in train_idx]
        with torch.no_grad():
            network = model(train_graphs, task="e")["e"] - model.composition_model(train_graphs)
        refit_atom_ref(model.composition_model, train_graphs, (e[train_idx] - network).numpy())
    for p in model.composition_model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp.lr)
    epochs = hp.warm_start_epochs if init_model is not None else hp.epochs

    def loss_of(idx):
        out = model([graphs[i] for i in idx], task="ef")
        e_err = torch.mean(torch.square(out["e"] - e[idx]))
        f_err = torch.mean(torch.cat([torch.square(f - forces[i]).reshape(-1) for f, i in zip(out["f"], idx)]))
        return hp.energy_weight * e_err + hp.forces_weight * f_err, float(e_err), float(f_err)

    best, best_loss, history = copy.deepcopy(model.state_dict()), math.inf, []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in _batches(len(train_idx), hp.batch_size, rng):
            optimizer.zero_grad()
            loss, _, _ = loss_of(train_idx[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} (seed {seed}); lower lr")
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        model.eval()
        check = valid_idx if len(valid_idx) else train_idx
        v_loss, e_sq, f_sq = loss_of(check)
        if not math.isfinite(float(v_loss)):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch} (seed {seed}); lower lr")
        history.append({"epoch": epoch, "train_loss": total / len(train_idx), "valid_loss": float(v_loss)})
        if float(v_loss) < best_loss:
            best_loss, best = float(v_loss), copy.deepcopy(model.state_dict())
            metrics = {"energy_rmse_per_atom": math.sqrt(e_sq), "force_rmse": math.sqrt(f_sq)}
        if run.progress is not None:
            run.progress(epoch, epochs, total / len(train_idx))
    model.load_state_dict(best)
    model.eval()
    return TrainResult.of(model, run.ids, train_idx, valid_idx, metrics, epochs, start, history)


def predict_chgnet(models: Sequence[torch.nn.Module], atoms_list: Sequence[Atoms], batch_size: int = 16,
                   stress: bool = False):
    """Energies ``[n_models, n_frames]`` (eV), per-frame forces ``[n_models, n_atoms, 3]`` and, with
    ``stress``, stresses ``[n_models, n_frames, 6]`` (Voigt, eV/Å³, ASE's sign), else None."""
    from ase import units
    from ase.stress import full_3x3_to_voigt_6_stress

    energies = np.zeros((len(models), len(atoms_list)))
    forces = [np.zeros((len(models), len(a), 3)) for a in atoms_list]
    stresses = np.zeros((len(models), len(atoms_list), 6)) if stress else None
    graphs = crystal_graphs(models[0], atoms_list)  # the same graph converter for every member
    for m, model in enumerate(models):
        model.eval()
        for idx in _batches(len(graphs), batch_size, None):
            out = model([graphs[i] for i in idx], task="efs" if stress else "ef")
            for k, i in enumerate(idx):
                energies[m, i] = float(out["e"][k]) * len(atoms_list[i])
                forces[i][m] = out["f"][k].detach().numpy()
                if stress:  # CHGNet's stress is in GPa
                    stresses[m, i] = full_3x3_to_voigt_6_stress(out["s"][k].detach().numpy() * units.GPa)
    return energies, forces, stresses


class ChgnetLearner(Learner):
    """CHGNet fine-tuned from the weights bundled with chgnet; it knows every element of its table."""

    kind = "chgnet-finetune"
    hyperparameters = ChgnetHyperParameters
    architectures = {"CHGNet": build_chgnet}

    def fit(self, run: Training) -> TrainResult:
        return _finetune(run)

    def elements(self, models) -> list[str]:
        return list(chemical_symbols[1:95])

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        return CommitteePrediction(*predict_chgnet(committee.models, atoms_list, batch_size=batch_size, stress=stress))

    def descriptors(self, model, atoms_list, batch_size=16, num_layers=-1, device="cpu") -> list[np.ndarray]:
        """CHGNet's atom features (invariant too), before its last layer."""
        if not atoms_list:
            return []
        out = model(crystal_graphs(model, atoms_list), task="e", return_atom_feas=True)["atom_fea"]
        return [f.detach().cpu().numpy().astype(float) for f in out]

    def descriptor_size(self, model, num_layers=-1) -> int:
        return int(model.atom_fea_dim)

    def zero_shot_calculator(self, hp: ChgnetHyperParameters):
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=pretrained_chgnet(hp.pretrained), use_device="cpu")


#: ``ChgnetLearner().train``: one CHGNet member fine-tuned from the bundled weights (or from ``init_model``)
finetune_chgnet = ChgnetLearner().train
