"""Train and run MACE models (mace-torch) from almat labels, in process.

The training loop is small and explicit rather than a call to ``mace_run_train``: the data come
straight from ``LabelDoc``s (no files lying around), each committee member gets its own seed (weight
initialisation, train/validation split and batch order), and the loop reports progress and keeps the
best state by validation loss.

Per-atom force weights and per-configuration energy weights (nearsighted force training, see
``docs/nft.md``): a labelled ``Atoms`` may carry ``atoms.arrays["force_weights"]`` (one weight per atom)
and ``atoms.info["energy_weight"]`` (``LabelDoc.to_atoms`` puts them there). When any configuration of
a training set has them, every ``AtomicData`` of the set gets a per-node tensor ``ATOM_FORCE_WEIGHT_KEY``
(batched along the nodes) and its per-graph ``energy_weight``, and the loss, the validation metrics and
the model's E0s / scale / shift use only the weighted labels: the force term is the weighted mean of the
squared force errors over the weighted atoms, the energy term the weighted mean over the weighted
configurations. A label with weight 0 therefore has no influence at all on the trained model. Without
any weights the training is exactly what it was.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from ase.data import chemical_symbols

from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.models import TrainResult, model_from_architecture, split_indices

logger = logging.getLogger(__name__)


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _z_table(zs: Iterable[int]):
    from mace.tools.utils import AtomicNumberTable

    return AtomicNumberTable(sorted({int(z) for z in zs}))


#: per-node tensor of force weights on the ``AtomicData`` of a weighted training set
ATOM_FORCE_WEIGHT_KEY = "atom_force_weight"


def _has_weights(atoms: Atoms) -> bool:
    return "force_weights" in atoms.arrays or atoms.info.get("energy_weight") is not None


def _label_weights(atoms: Atoms, index: int) -> tuple[np.ndarray, float]:
    """(per-atom force weights, energy weight) of one labelled configuration; defaults 1."""
    fw = atoms.arrays.get("force_weights")
    fw = np.ones(len(atoms)) if fw is None else np.asarray(fw, dtype=float).reshape(-1)
    if fw.shape != (len(atoms),):
        raise ValueError(f"configuration {index}: force_weights has {fw.size} entries for {len(atoms)} atoms")
    if not np.all(np.isfinite(fw)) or np.any(fw < 0):
        raise ValueError(f"configuration {index}: force_weights must be finite and >= 0")
    ew = atoms.info.get("energy_weight")
    ew = 1.0 if ew is None else float(ew)
    if not math.isfinite(ew) or ew < 0:
        raise ValueError(f"configuration {index}: energy_weight must be finite and >= 0, got {ew}")
    return fw, ew


def _label_stress(atoms: Atoms) -> np.ndarray | None:
    """The labelled stress (ASE's convention, eV/Å³, 3x3) of a periodic configuration, or None."""
    stress = atoms.calc.results.get("stress") if atoms.calc is not None else None
    if stress is None or not all(atoms.get_pbc()):
        return None
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        stress = voigt_6_to_full_3x3_stress(stress)
    return stress if stress.shape == (3, 3) and np.all(np.isfinite(stress)) else None


def atoms_to_dataset(atoms_list: Sequence[Atoms], zs: Sequence[int], r_max: float, with_labels: bool = True):
    """MACE ``AtomicData`` for a list of Atoms; labels read from ``atoms.calc`` results.

    With labels, when any configuration carries ``force_weights`` / ``energy_weight`` (see the module
    doc), every item gets the per-node ``ATOM_FORCE_WEIGHT_KEY`` tensor (1 where a configuration has no
    weights) and its ``energy_weight``; otherwise the items are exactly as without weights.
    """
    from mace.data import AtomicData
    from mace.data.utils import Configuration

    z_table = _z_table(zs)
    weighted = with_labels and any(_has_weights(a) for a in atoms_list)
    dataset = []
    for index, atoms in enumerate(atoms_list):
        properties, weights = {}, {}
        force_weights = None
        if with_labels:
            properties["energy"] = float(atoms.get_potential_energy())
            properties["forces"] = np.asarray(atoms.get_forces(), dtype=float)
            stress = _label_stress(atoms)
            # a label without a stress gets weight 0 (mace's default weight is 1, on a zero stress)
            weights = {"energy": 1.0, "forces": 1.0, "stress": 0.0 if stress is None else 1.0}
            if stress is not None:
                properties["stress"] = stress
            if weighted:
                force_weights, weights["energy"] = _label_weights(atoms, index)
        config = Configuration(
            atomic_numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            properties=properties,
            property_weights=weights,
            cell=np.array(atoms.get_cell()),
            pbc=tuple(bool(p) for p in atoms.get_pbc()),
        )
        data = AtomicData.from_config(config, z_table=z_table, cutoff=r_max)
        if force_weights is not None:
            # a node-level tensor: mace's torch_geometric batching concatenates it along the nodes
            data[ATOM_FORCE_WEIGHT_KEY] = torch.tensor(force_weights, dtype=torch.get_default_dtype())
        dataset.append(data)
    return dataset


def _loader(dataset, batch_size: int, shuffle: bool, seed: int | None = None):
    from mace.tools.torch_geometric import DataLoader

    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, generator=generator)


def build_model(hp: MaceHyperParameters, zs: Sequence[int], train_set) -> torch.nn.Module:
    """A ``ScaleShiftMACE`` with E0s, scale and shift fitted to the training set."""
    from mace import modules
    from mace.data.utils import compute_average_E0s

    z_table = _z_table(zs)
    # E0s by least squares on the training energies
    class _C:  # minimal Configuration stand-in for compute_average_E0s
        def __init__(self, data):
            self.properties = {"energy": float(data.energy)}
            self.atomic_numbers = np.array([z_table.zs[i] for i in data.node_attrs.argmax(dim=1).tolist()])

    loader = _loader(train_set, batch_size=max(1, len(train_set)), shuffle=False)
    avg_num_neighbors = modules.compute_avg_num_neighbors(loader)
    if train_set and train_set[0][ATOM_FORCE_WEIGHT_KEY] is not None:
        # weighted labels: E0s, shift and scale from the weighted energies and forces only
        atomic_energies, shift, scale = _weighted_statistics(train_set, z_table, _C)
    else:
        e0s = compute_average_E0s([_C(d) for d in train_set], z_table)
        atomic_energies = np.array([e0s[z] for z in z_table.zs])
        mean, rms = modules.compute_mean_rms_energy_forces(loader, atomic_energies)
        scale = float(np.atleast_1d(rms)[0]) or 1.0
        shift = float(np.atleast_1d(mean)[0])
    if not math.isfinite(scale) or scale < 1e-3:
        scale = 1.0
    return model_from_architecture(mace_architecture(hp, z_table.zs, atomic_energies, avg_num_neighbors, scale, shift))


def mace_architecture(hp: MaceHyperParameters, zs: Sequence[int], atomic_energies, avg_num_neighbors: float,
                      scale: float, shift: float) -> dict:
    """The architecture record of a ``ScaleShiftMACE``: its class, dtype and constructor arguments."""
    return {
        "class": "ScaleShiftMACE", "dtype": hp.dtype,
        "kwargs": {
            "r_max": hp.r_max, "num_bessel": hp.num_radial_basis, "num_polynomial_cutoff": hp.num_cutoff_basis,
            "max_ell": hp.max_ell, "num_interactions": hp.num_interactions, "num_elements": len(zs),
            "hidden_irreps": hp.hidden_irreps(), "MLP_irreps": hp.mlp_irreps,
            "atomic_energies": [float(e) for e in np.atleast_1d(atomic_energies)],
            "avg_num_neighbors": float(avg_num_neighbors), "atomic_numbers": [int(z) for z in zs],
            "correlation": hp.correlation, "radial_MLP": [int(n) for n in hp.radial_mlp],
            "atomic_inter_scale": float(scale), "atomic_inter_shift": float(shift),
            "pair_repulsion": bool(hp.pair_repulsion),
        },
    }


def build_scale_shift_mace(kwargs: dict) -> torch.nn.Module:
    from mace import modules  # before e3nn (the other order fails on torch's weights-only load)
    from e3nn import o3

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    kw = {**kwargs, "hidden_irreps": o3.Irreps(kwargs["hidden_irreps"]), "MLP_irreps": o3.Irreps(kwargs["MLP_irreps"]),
          "atomic_energies": np.asarray(kwargs["atomic_energies"], dtype=float)}
    return modules.ScaleShiftMACE(interaction_cls=block, interaction_cls_first=block, gate=torch.nn.functional.silu,
                                  **kw)


def _weighted_statistics(train_set, z_table, config_cls) -> tuple[np.ndarray, float, float]:
    """E0s (least squares on the energy-weighted configurations), the weighted mean interaction
    energy per atom (shift) and the weighted force RMS (scale) of a weighted training set."""
    from mace.data.utils import compute_average_E0s

    e_set = [d for d in train_set if float(d.energy_weight) > 0]
    if e_set:
        e0s = compute_average_E0s([config_cls(d) for d in e_set], z_table)
        atomic_energies = np.array([e0s[z] for z in z_table.zs])
        e_w = np.array([float(d.energy_weight) for d in e_set])
        per_atom = np.array([
            (float(d.energy) - float(d.node_attrs.detach().cpu().numpy().sum(axis=0) @ atomic_energies))
            / int(d.num_nodes) for d in e_set
        ])
        shift = float(np.sum(e_w * per_atom) / np.sum(e_w))
    else:
        atomic_energies, shift = np.zeros(len(z_table)), 0.0
    f_sq = sum(float(torch.sum(d[ATOM_FORCE_WEIGHT_KEY][:, None] * torch.square(d.forces))) for d in train_set)
    f_w = sum(3.0 * float(torch.sum(d[ATOM_FORCE_WEIGHT_KEY])) for d in train_set)
    scale = math.sqrt(f_sq / f_w) if f_w > 0 else 1.0
    return atomic_energies, shift, scale or 1.0


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w v) / sum(w); 0 (keeping the graph) when every weight is 0."""
    total = torch.sum(weights)
    if float(total) <= 0:
        return torch.sum(values * weights)  # == 0, and still differentiable
    return torch.sum(values * weights) / total


#: eV/Å³ -> GPa
EV_PER_A3_IN_GPA = 160.21766208


def _stress_errors(batch, out) -> tuple[torch.Tensor, torch.Tensor]:
    """Per configuration: the mean squared stress error (GPa²) and its weight (0 where there is no stress)."""
    weight = batch.stress_weight.to(out["stress"].dtype)
    diff = (batch.stress - out["stress"]) * EV_PER_A3_IN_GPA
    # configurations without a stress label may have a non-finite prediction (no cell): they count for nothing
    sq = torch.where(weight[:, None, None] > 0, torch.square(diff), torch.zeros_like(diff))
    return torch.mean(sq, dim=(1, 2)), weight


def _loss(batch, out, hp: MaceHyperParameters) -> torch.Tensor:
    """Energy per atom and forces (weighted, see the module doc), and the stress in GPa where
    ``hp.stress_weight`` > 0 (``out`` then holds the model's stress)."""
    loss = _energy_forces_loss(batch, out, hp)
    if hp.stress_weight > 0:
        loss = loss + hp.stress_weight * _weighted_mean(*_stress_errors(batch, out))
    return loss


def _energy_forces_loss(batch, out, hp) -> torch.Tensor:
    natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    node_w = batch[ATOM_FORCE_WEIGHT_KEY]
    if node_w is None:
        e_term = torch.mean(torch.square((batch.energy - out["energy"]) / natoms))
        f_term = torch.mean(torch.square(batch.forces - out["forces"]))
    else:
        # weighted means over the weighted configurations / atoms (masked ones count for nothing)
        e_term = _weighted_mean(torch.square((batch.energy - out["energy"]) / natoms), batch.energy_weight)
        f_sq = torch.mean(torch.square(batch.forces - out["forces"]), dim=1)  # per atom, over x y z
        f_term = _weighted_mean(f_sq, node_w)
    return hp.energy_weight * e_term + hp.forces_weight * f_term


def _evaluate(model, loader, device, stress: bool = False) -> dict[str, float]:
    """Energy RMSE per atom, force RMSE and max force error; with weights (see the module doc),
    weighted over the weighted configurations and atoms only (masked atoms never count). With ``stress``
    also the stress RMSE in GPa over the configurations that carry a stress (``stress_rmse_gpa``)."""
    e_sq, f_sq, n_graphs, n_force = 0.0, 0.0, 0.0, 0.0
    s_sq, n_stress = 0.0, 0.0
    f_max = 0.0
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=stress)
        if stress:
            sq, weight = _stress_errors(batch, out)
            s_sq += float(torch.sum(weight * sq.detach()))
            n_stress += float(torch.sum(weight))
        natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
        de = torch.square((batch.energy - out["energy"].detach()) / natoms)
        df = batch.forces - out["forces"].detach()
        node_w = batch[ATOM_FORCE_WEIGHT_KEY]
        if node_w is None:
            e_sq += float(torch.sum(de))
            f_sq += float(torch.sum(torch.square(df)))
            f_max = max(f_max, float(torch.linalg.vector_norm(df, dim=1).max()))
            n_graphs += int(batch.num_graphs)
            n_force += int(df.numel())
        else:
            e_w = batch.energy_weight
            e_sq += float(torch.sum(e_w * de))
            n_graphs += float(torch.sum(e_w))
            f_sq += float(torch.sum(node_w[:, None] * torch.square(df)))
            n_force += 3.0 * float(torch.sum(node_w))
            norms = torch.linalg.vector_norm(df, dim=1)[node_w > 0]
            if norms.numel():
                f_max = max(f_max, float(norms.max()))
    metrics = {
        "energy_rmse_per_atom": math.sqrt(e_sq / n_graphs) if n_graphs > 0 else 0.0,
        "force_rmse": math.sqrt(f_sq / n_force) if n_force > 0 else 0.0,
        "max_force_error": f_max,
    }
    if stress and n_stress > 0:
        metrics["stress_rmse_gpa"] = math.sqrt(s_sq / n_stress)
    return metrics



@contextmanager
def training_context(atoms_list: Sequence[Atoms], ids: Sequence[str], hp, seed: int) -> Iterator[tuple]:
    """What every MACE training starts with: the input checks, torch's threads, the default dtype of
    ``hp.dtype`` (restored afterwards), the seeds; yields ``(rng, train_idx, valid_idx, zs)``: the split of
    the configurations (``hp.valid_fraction``) and their sorted atomic numbers."""
    if len(atoms_list) != len(ids):
        raise ValueError("atoms_list and ids must have the same length")
    if len(atoms_list) < 2:
        raise ValueError(f"need at least 2 labelled configurations to train, got {len(atoms_list)}")
    if hp.num_threads:
        torch.set_num_threads(hp.num_threads)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(_torch_dtype(hp.dtype))
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        train_idx, valid_idx = (i.tolist() for i in split_indices(len(atoms_list), hp.valid_fraction, rng))
        zs = sorted({int(z) for a in atoms_list for z in a.get_atomic_numbers()})
        yield rng, train_idx, valid_idx, zs
    finally:
        torch.set_default_dtype(previous_dtype)


def train_mace(
    atoms_list: Sequence[Atoms],
    ids: Sequence[str],
    hp: MaceHyperParameters,
    seed: int,
    init_model: torch.nn.Module | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train one MACE model on labelled Atoms (``atoms.calc`` holds energy and forces).

    ``ids`` name the configurations (label ids) so that the result says which went to training and
    which to validation. With ``init_model`` the model continues from those weights (warm start) for
    ``hp.warm_start_epochs`` epochs, provided it covers the same elements.
    """
    start = time.perf_counter()
    with training_context(atoms_list, ids, hp, seed) as (rng, train_idx, valid_idx, zs):
        warm = init_model is not None and sorted(int(z) for z in init_model.atomic_numbers.tolist()) == zs
        if init_model is not None and not warm:
            logger.info("elements changed; training from scratch instead of warm start")
        r_max = float(init_model.r_max) if warm else hp.r_max
        data = atoms_to_dataset(atoms_list, zs, r_max)
        train_set = [data[i] for i in train_idx]
        valid_set = [data[i] for i in valid_idx]

        if warm:
            model = copy.deepcopy(init_model).to(torch.get_default_dtype())
            epochs = hp.warm_start_epochs
        else:
            model = build_model(hp, zs, train_set)
            epochs = hp.epochs
        model, metrics, history = fit(model, train_set, valid_set, hp, epochs, seed, progress)
        return TrainResult.of(model, ids, train_idx, valid_idx, metrics, epochs, start, history)


def fit(model: torch.nn.Module, train_set, valid_set, hp, epochs: int, seed: int,
        progress: Callable[[int, int, float], None] | None = None,
        step_loss: Callable[[torch.nn.Module, object, int], torch.Tensor] | None = None):
    """Train ``model`` on ``train_set`` (AtomicData) for ``epochs``, keeping the best state by validation loss.

    ``step_loss(model, batch, step)`` is the training loss of a batch (default: energies and forces, ``_loss``);
    the validation is always that of the model's own output. Returns ``(model on the cpu, validation and
    train metrics, history)``; a non-finite training or validation loss raises ``FloatingPointError``.
    """
    device = torch.device(hp.device)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs, 1), eta_min=hp.lr * hp.lr_final_fraction
    )
    train_loader = _loader(train_set, hp.batch_size, shuffle=True, seed=seed)
    valid_loader = _loader(valid_set or train_set, hp.batch_size, shuffle=False)
    stress = hp.stress_weight > 0
    if step_loss is None:
        def step_loss(model, batch, step):
            return _loss(batch, model(batch.to_dict(), training=True, compute_force=True, compute_stress=stress), hp)
    best_state, best_loss = None, math.inf
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for batch in train_loader:
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(model, batch, step)
            step += 1
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            total += float(loss.detach()) * int(batch.num_graphs)
        scheduler.step()
        train_loss = total / len(train_set)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss})")
        if epoch % hp.eval_every == 0 or epoch == epochs:
            model.eval()
            metrics = _evaluate(model, valid_loader, device, stress)
            vloss = (hp.energy_weight * metrics["energy_rmse_per_atom"] ** 2 + hp.forces_weight * metrics["force_rmse"] ** 2
                     + hp.stress_weight * metrics.get("stress_rmse_gpa", 0.0) ** 2)
            if not math.isfinite(vloss):
                raise FloatingPointError(f"validation loss is {vloss} at epoch {epoch}")
            history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
            if vloss < best_loss:
                best_loss = vloss
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(epoch, epochs, train_loss)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    metrics = _evaluate(model, valid_loader, device, stress)
    metrics.update({f"train_{k}": v for k, v in _evaluate(model, _loader(train_set, hp.batch_size, False), device,
                                                           stress).items()})
    return model.to("cpu"), metrics, history


def model_inputs(models: Sequence[torch.nn.Module], atoms_list: Sequence[Atoms]):
    """Unlabelled ``AtomicData`` for ``models`` (their elements, largest cutoff and dtype).

    Elements the models were not trained on raise a ``ValueError`` naming them.
    """
    zs = [int(z) for z in models[0].atomic_numbers.tolist()]
    unknown = sorted({int(z) for a in atoms_list for z in a.get_atomic_numbers()} - set(zs))
    if unknown:
        raise ValueError(f"the models were not trained on {', '.join(chemical_symbols[z] for z in unknown)}")
    r_max = max(float(m.r_max) for m in models)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(next(models[0].parameters()).dtype)
    try:
        return atoms_to_dataset(atoms_list, zs, r_max, with_labels=False)
    finally:
        torch.set_default_dtype(previous)


def predict(models: Sequence[torch.nn.Module], atoms_list: Sequence[Atoms], batch_size: int = 16,
            device: str = "cpu") -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies ``[n_models, n_frames]`` and per-frame forces ``[n_models, n_atoms, 3]``."""
    if not models:
        raise ValueError("no models to predict with")
    data = model_inputs(models, atoms_list)
    batches = list(_loader(data, batch_size, shuffle=False))  # collate once, reuse for every model
    energies = np.zeros((len(models), len(atoms_list)))
    forces = [np.zeros((len(models), len(a), 3)) for a in atoms_list]
    on_cpu = torch.device(device).type == "cpu"
    for m_index, model in enumerate(models):
        if next(model.parameters()).device != torch.device(device):
            model.to(device)
        frame = 0
        for batch in batches:
            if not on_cpu:
                batch = batch.to(device)
            out = model(batch.to_dict(), training=False, compute_force=True)
            e = out["energy"].detach().cpu().numpy()
            f = out["forces"].detach().cpu().numpy()
            ptr = batch.ptr.cpu().numpy()
            for g in range(int(batch.num_graphs)):
                energies[m_index, frame] = e[g]
                forces[frame][m_index] = f[ptr[g]:ptr[g + 1]]
                frame += 1
    return energies, forces
