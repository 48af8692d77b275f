"""SevenNet-0 committee members fine-tuned from the checkpoints that the sevenn package ships (offline).

- The bundled checkpoint is read with ``weights_only=True``, allowed only the numpy array globals it names
  (its config holds a few numpy arrays); the model is rebuilt from the config entries that
  ``sevenn.model_build.build_E3_equivariant_model`` reads. ``sevennet_architecture`` is the record that
  ``model_to_bytes`` stores beside the state dict, so a fine-tuned SevenNet is stored and reloaded like a
  MACE model (no pickled code).
- Training is SevenNet's own: ``sevenn.train.trainer.Trainer`` with its loss definitions (energy per atom,
  forces, stresses in kbar) and an Adam optimiser with a linear lr decay, driven one epoch at a time from
  here so that the best validation state is kept.
- Reference energies: 7net-0 predicts ``sum over atoms of (scale[Z] x + shift[Z])``. Before the first
  fine-tuning the shifts of the elements present are refitted by least squares to the training labels
  (the smallest change from the pretrained shifts that fits them, in float64) and stay frozen, so a new
  oracle's energy scale (EMT, another functional) lands in the shifts and the network learns only what differs.
- Members differ by seed (split, batch order) and by a bootstrap resample of the training labels.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import numpy as np
import sevenn  # noqa: F401 - a missing package is one line naming the extra (almat.learner.registry)
import torch
from ase import Atoms
from ase.data import chemical_symbols

from almat.learner.base import CommitteePrediction, Learner, Training
from almat.learner.hyperparameters import SevennetHyperParameters
from almat.learner.models import TrainResult, model_from_architecture, split_indices

PRETRAINED = "7net-0"
#: what the numpy arrays of a bundled checkpoint's config unpickle through, and nothing else
_NUMPY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype")
#: the config entries that build a SevenNet model (``build_E3_equivariant_model``); the rest is training settings
_MODEL_KEYS = (
    "cutoff", "channel", "lmax", "lmax_edge", "lmax_node", "is_parity", "radial_basis", "cutoff_function",
    "act_radial", "weight_nn_hidden_neurons", "num_convolution_layer", "act_scalar", "act_gate",
    "conv_denominator", "train_denominator", "train_shift_scale", "use_bias_in_linear", "readout_as_fcn",
    "readout_fcn_hidden_neurons", "readout_fcn_activation", "self_connection_type", "interaction_type",
    "_normalize_sph", "irreps_manual", "shift", "scale", "use_species_wise_shift_scale", "chemical_species",
    "_number_of_species", "_type_map", "_chemical_species_by_atomic_number", "version",
)
#: SevenNet's stress order (xx, yy, zz, xy, yz, zx; the negative of ASE's) -> ASE's Voigt (xx, yy, zz, yz, xz, xy)
_TO_ASE_VOIGT = [0, 1, 2, 4, 5, 3]
_LAST_FEATURES = "reduce_input_to_hidden"  # the readout's first layer: the node features before it are invariant


def _sevenn():
    """sevenn's keys and util, imported after mace (sevenn imports e3nn, whose own ``torch.load`` fails under
    torch's weights-only default unless mace has set it off for the process)."""
    import mace.modules  # noqa: F401 - before e3nn (the other order fails on torch's weights-only load)
    import sevenn._keys as keys
    import sevenn.util as util

    return keys, util


def _plain(value):
    """A config value as plain Python (numpy arrays and tensors to lists), for a weights-only record."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_checkpoints: dict[str, dict] = {}


def _checkpoint(name: str = PRETRAINED) -> dict:
    """The bundled checkpoint ``name`` (``7net-0``, ...), read with torch's weights-only unpickler."""
    if name not in _checkpoints:
        keys, util = _sevenn()
        path = util.pretrained_name_to_path(name)
        globals_ = [(np.core.multiarray._reconstruct, _NUMPY_GLOBALS[0]), np.ndarray, np.dtype,
                    type(np.dtype("float32")), type(np.dtype("float64"))]
        with torch.serialization.safe_globals(globals_):
            _checkpoints[name] = torch.load(path, map_location="cpu", weights_only=True)
    return _checkpoints[name]


def sevennet_architecture(config: dict) -> dict:
    """The architecture record of a SevenNet model: the model entries of its (patched) config."""
    return {"class": "SevenNet", "dtype": "float32",
            "kwargs": {"config": {k: _plain(config[k]) for k in _MODEL_KEYS if k in config}}}


def build_sevennet(kwargs: dict) -> torch.nn.Module:
    _sevenn()
    from sevenn.model_build import build_E3_equivariant_model

    config = copy.deepcopy(kwargs["config"])
    config["_type_map"] = {int(z): int(i) for z, i in config["_type_map"].items()}
    return build_E3_equivariant_model(config)


_pretrained: dict[str, torch.nn.Module] = {}


def pretrained_sevennet(name: str = PRETRAINED) -> torch.nn.Module:
    """A bundled SevenNet model, rebuilt from its config and state dict (no pickled code); a copy of the one
    this process built before, if any (building takes seconds)."""
    if name not in _pretrained:
        _pretrained[name] = _build_pretrained(name)
    return copy.deepcopy(_pretrained[name])


def _build_pretrained(name: str) -> torch.nn.Module:
    import warnings

    _, util = _sevenn()
    from sevenn._const import model_defaults

    ckpt = _checkpoint(name)
    config = util._patch_old_config(copy.deepcopy(ckpt["config"]))
    for key, value in model_defaults(config).items():
        config.setdefault(key, value)
    model = model_from_architecture(sevennet_architecture(config))
    state = ckpt["model_state_dict"]
    if set(state) != set(model.state_dict()):  # the 22May2024 checkpoint's old module names
        state = util._map_old_model(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(state, strict=True)
    return model.eval()


def graphs_of(atoms_list: Sequence[Atoms], cutoff: float, labelled: bool = False) -> list:
    """SevenNet's graphs (``AtomGraphData``) of the frames; ``labelled``: with energy, forces (and stress:
    NaN where a frame has none) from ``atoms.calc``."""
    _sevenn()
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import atoms_to_graph, unlabeled_atoms_to_graph

    if labelled:
        return [AtomGraphData.from_numpy_dict(atoms_to_graph(a, cutoff, transfer_info=False, y_from_calc=True))
                for a in atoms_list]
    return [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, cutoff)) for a in atoms_list]


def collate(graphs: list):
    from torch_geometric.loader.dataloader import Collater

    return Collater([], None, None)(graphs)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def _forward(model: torch.nn.Module, graphs: list) -> dict:
    """The model (in evaluation mode) on one batch of graphs: energies, forces, stresses in SevenNet's keys."""
    model.set_is_batch_data(True)
    model.eval()
    return model(collate(graphs).to(next(model.parameters()).device))


def refit_shifts(model: torch.nn.Module, graphs: list, energies: np.ndarray) -> np.ndarray:
    """Set the per-element shifts (reference energies) of the elements present in ``graphs`` so that the
    model fits ``energies`` (total, eV) by least squares in float64: the smallest change from the present
    shifts that does, so one composition (every frame of a campaign on one cell, a rank-1 system) keeps
    the pretrained differences between its elements. The shifts are left frozen. Returns them."""
    keys, _ = _sevenn()
    rescale = model._modules["rescale_atomic_energy"]
    shift = rescale.shift.detach().cpu().numpy().astype(float)
    index = model.z_to_onehot_tensor
    counts = np.zeros((len(graphs), len(shift)))
    for row, graph in enumerate(graphs):
        types = index[graph[keys.ATOMIC_NUMBERS]].numpy()
        counts[row] = np.bincount(types, minlength=len(shift))
    network = np.concatenate([_forward(model, graphs[i:i + 8])[keys.PRED_TOTAL_ENERGY].detach().cpu().numpy()
                              for i in range(0, len(graphs), 8)]).astype(float)
    present = counts.sum(axis=0) > 0
    residual = np.asarray(energies, dtype=float) - network
    delta, *_ = np.linalg.lstsq(counts[:, present], residual, rcond=None)
    shift[present] += delta
    with torch.no_grad():
        rescale.shift.copy_(torch.as_tensor(shift, dtype=rescale.shift.dtype))
    rescale.shift.requires_grad_(False)
    return shift


def _losses(hp: SevennetHyperParameters, with_stress: bool) -> list:
    """SevenNet's loss definitions with almat's weights (stress in kbar there: GPa² = 0.01 kbar²)."""
    _sevenn()
    from sevenn.train.loss import ForceLoss, PerAtomEnergyLoss, StressLoss

    mse = torch.nn.MSELoss()
    losses = [(PerAtomEnergyLoss(criterion=mse), hp.energy_weight), (ForceLoss(criterion=mse), hp.forces_weight)]
    if with_stress:
        losses.append((StressLoss(criterion=mse), 0.01 * hp.stress_weight))
    return losses


def _errors(model: torch.nn.Module, graphs: list, hp, with_stress: bool) -> tuple[float, dict]:
    """(the loss, metrics) of the model on ``graphs`` (evaluation mode)."""
    keys, _ = _sevenn()
    e_sq, f_sq, s_sq, n_atoms = [], [], [], 0
    for idx in _batches(len(graphs), max(hp.batch_size, 8), None):
        out = _forward(model, [graphs[i] for i in idx])
        n = out[keys.NUM_ATOMS]
        e_sq += ((out[keys.PRED_TOTAL_ENERGY] - out[keys.ENERGY]) / n).detach().square().tolist()
        f_sq.append(float((out[keys.PRED_FORCE] - out[keys.FORCE]).detach().square().sum()))
        n_atoms += int(n.sum())
        if with_stress:
            s_sq += ((out[keys.PRED_STRESS] - out[keys.STRESS]) * 1602.1766208).detach().square().mean(1).tolist()
    e_mse, f_mse = float(np.mean(e_sq)), sum(f_sq) / (3 * n_atoms)
    loss = hp.energy_weight * e_mse + hp.forces_weight * f_mse
    metrics = {"energy_rmse_per_atom": math.sqrt(e_mse), "force_rmse": math.sqrt(f_mse)}
    if with_stress:
        loss += 0.01 * hp.stress_weight * float(np.mean(s_sq))
        metrics["stress_rmse_gpa"] = 0.1 * math.sqrt(float(np.mean(s_sq)))
    return loss, metrics


def _start(run: Training, train_idx) -> tuple[torch.nn.Module, list, int]:
    """The model to fine-tune (the pretrained one with refitted shifts, or a copy of the previous member),
    the labelled graphs and the epochs."""
    if run.init_model is not None:
        model = copy.deepcopy(run.init_model)
        return model, graphs_of(run.atoms_list, float(model.cutoff), labelled=True), run.hp.warm_start_epochs
    model = pretrained_sevennet(run.hp.pretrained)
    graphs = graphs_of(run.atoms_list, float(model.cutoff), labelled=True)
    refit_shifts(model, [graphs[i] for i in train_idx],
                 np.array([run.atoms_list[i].get_potential_energy() for i in train_idx]))
    return model, graphs, run.hp.epochs


def _finetune(run: Training) -> TrainResult:
    """Fine-tune SevenNet on labelled Atoms with SevenNet's ``Trainer``: from the bundled weights, or from
    ``init_model`` (a previous member) for ``hp.warm_start_epochs``; the best validation state is kept."""
    _sevenn()
    from sevenn.train.trainer import Trainer

    start, hp, seed = time.perf_counter(), run.hp, run.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_idx, valid_idx = split_indices(len(run.atoms_list), hp.valid_fraction, rng)
    fit_idx = np.sort(rng.choice(train_idx, size=len(train_idx))) if hp.bootstrap else train_idx
    model, graphs, epochs = _start(run, train_idx)
    keys, _ = _sevenn()
    with_stress = hp.stress_weight > 0 and all(bool(torch.isfinite(graphs[i][keys.STRESS]).all()) for i in fit_idx)
    trainer = Trainer(model, _losses(hp, with_stress), torch.optim.Adam, {"lr": hp.lr},
                      torch.optim.lr_scheduler.LinearLR,
                      {"start_factor": 1.0, "end_factor": hp.lr_final_fraction, "total_iters": max(epochs, 1)},
                      device=hp.device)
    check = [graphs[i] for i in (valid_idx if len(valid_idx) else train_idx)]
    best_loss, metrics = _errors(model, check, hp, with_stress)
    best, history = copy.deepcopy(model.state_dict()), []
    for epoch in range(1, epochs + 1):
        batches = [collate([graphs[i] for i in fit_idx[idx]]) for idx in _batches(len(fit_idx), hp.batch_size, rng)]
        trainer.run_one_epoch(batches, is_train=True)
        trainer.scheduler_step()
        v_loss, v_metrics = _errors(model, check, hp, with_stress)
        if not math.isfinite(v_loss):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch} (seed {seed}); lower lr")
        history.append({"epoch": epoch, "valid_loss": v_loss, **v_metrics})
        if v_loss < best_loss:
            best_loss, best, metrics = v_loss, copy.deepcopy(model.state_dict()), v_metrics
        if run.progress is not None:
            run.progress(epoch, epochs, v_loss)
    model.load_state_dict(best)
    model.to("cpu").eval()
    return TrainResult.of(model, run.ids, train_idx, valid_idx, metrics, epochs, start, history)


def predict_sevennet(models: Sequence[torch.nn.Module], atoms_list: Sequence[Atoms], batch_size: int = 16,
                     stress: bool = False):
    """Energies ``[n_models, n_frames]`` (eV), per-frame forces ``[n_models, n_atoms, 3]`` and, with
    ``stress``, stresses ``[n_models, n_frames, 6]`` (Voigt, eV/Å³, ASE's sign), else None. The graphs are
    built once for every member."""
    keys, _ = _sevenn()
    energies = np.zeros((len(models), len(atoms_list)))
    forces = [np.zeros((len(models), len(a), 3)) for a in atoms_list]
    stresses = np.zeros((len(models), len(atoms_list), 6)) if stress else None
    graphs = graphs_of(atoms_list, float(models[0].cutoff)) if atoms_list else []
    for m, model in enumerate(models):
        for idx in _batches(len(graphs), batch_size, None):
            out = _forward(model, [graphs[i] for i in idx])
            f = torch.split(out[keys.PRED_FORCE].detach().cpu(), [len(atoms_list[i]) for i in idx])
            e = out[keys.PRED_TOTAL_ENERGY].detach().cpu()
            for k, i in enumerate(idx):
                energies[m, i] = float(e[k])
                forces[i][m] = f[k].numpy()
                if stress:
                    stresses[m, i] = -out[keys.PRED_STRESS][k].detach().cpu().numpy()[_TO_ASE_VOIGT]
    return energies, forces, stresses


def node_features(model: torch.nn.Module, atoms_list: Sequence[Atoms], batch_size: int = 16) -> list[np.ndarray]:
    """The node features that SevenNet's readout reads (its last interaction's scalars, invariant)."""
    keys, _ = _sevenn()
    out = []
    graphs = graphs_of(atoms_list, float(model.cutoff))
    for idx in _batches(len(graphs), batch_size, None):
        model.set_is_batch_data(True)
        model.eval()
        data = collate([graphs[i] for i in idx]).to(next(model.parameters()).device)
        data[keys.NODE_FEATURE] = model._atomic_numbers_to_onehot(data[keys.ATOMIC_NUMBERS])
        data[keys.EDGE_VEC].requires_grad_(True)
        for name, module in model._modules.items():
            if name == _LAST_FEATURES:
                break
            data = module(data)
        split = torch.split(data[keys.NODE_FEATURE].detach(), [len(atoms_list[i]) for i in idx])
        out += [s.cpu().numpy().astype(float) for s in split]
    return out


class SevennetLearner(Learner):
    """SevenNet-0 fine-tuned from the checkpoint bundled with sevenn; it knows the 89 elements of 7net-0."""

    kind = "sevennet-finetune"
    hyperparameters = SevennetHyperParameters
    architectures = {"SevenNet": build_sevennet}

    def fit(self, run: Training) -> TrainResult:
        return _finetune(run)

    def elements(self, models) -> list[str]:
        return [chemical_symbols[int(z)] for z in sorted(models[0].type_map)]

    def check_elements(self, hp: SevennetHyperParameters, elements: list[str]) -> None:
        known = set(_checkpoint(hp.pretrained)["config"]["chemical_species"])
        unknown = sorted(set(elements) - known)
        if unknown:
            raise ValueError(f"learner sevennet-finetune: SevenNet {hp.pretrained} does not know "
                             f"{', '.join(unknown)}; it knows {len(known)} elements")

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        return CommitteePrediction(*predict_sevennet(committee.models, atoms_list, batch_size=batch_size,
                                                     stress=stress))

    def descriptors(self, model, atoms_list, batch_size=16, num_layers=-1, device="cpu") -> list[np.ndarray]:
        return node_features(model, atoms_list, batch_size) if atoms_list else []

    def descriptor_size(self, model, num_layers=-1) -> int:
        _sevenn()
        from e3nn.o3 import Irreps

        return Irreps(model.get_irreps_in(_LAST_FEATURES)).dim

    def zero_shot_calculator(self, hp: SevennetHyperParameters):
        _sevenn()
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model=pretrained_sevennet(hp.pretrained), file_type="model_instance",
                                  device="cpu")


#: ``SevennetLearner().train``: one SevenNet member fine-tuned from the bundled weights (or from ``init_model``)
finetune_sevennet = SevennetLearner().train
