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
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from almat.learner.base import CommitteePrediction, Learner, Training
from almat.learner.batched import evaluate_stacked, stackable
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
    """What every MACE training starts with (after ``Learner.train``'s input checks): torch's threads, the default dtype of
    ``hp.dtype`` (restored afterwards), the seeds; yields ``(rng, train_idx, valid_idx, zs)``: the split of
    the configurations (``hp.valid_fraction``) and their sorted atomic numbers."""
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


def _fit_mace(run: Training) -> TrainResult:
    """One MACE model on labelled Atoms; with ``init_model`` (same elements) it continues from those weights
    for ``hp.warm_start_epochs`` (warm start)."""
    start, hp, init_model = time.perf_counter(), run.hp, run.init_model
    with training_context(run.atoms_list, run.ids, hp, run.seed) as (rng, train_idx, valid_idx, zs):
        warm = init_model is not None and sorted(int(z) for z in init_model.atomic_numbers.tolist()) == zs
        if init_model is not None and not warm:
            logger.info("elements changed; training from scratch instead of warm start")
        r_max = float(init_model.r_max) if warm else hp.r_max
        data = atoms_to_dataset(run.atoms_list, zs, r_max)
        train_set = [data[i] for i in train_idx]
        valid_set = [data[i] for i in valid_idx]

        if warm:
            model = copy.deepcopy(init_model).to(torch.get_default_dtype())
            epochs = hp.warm_start_epochs
        else:
            model = build_model(hp, zs, train_set)
            epochs = hp.epochs
        model, metrics, history = fit(model, train_set, valid_set, hp, epochs, run.seed, run.progress)
        return TrainResult.of(model, run.ids, train_idx, valid_idx, metrics, epochs, start, history)


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


# ------------------------------------------------------------------ the committee of MACE models

#: on the CPU, ``Committee(batched=None)`` evaluates the members in one pass only for batches this small
CPU_BATCH_MAX_ATOMS = 24


def voigt(stress: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> [..., 6] (xx yy zz yz xz xy)."""
    return stress[..., [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def on_device(batch, device: str):
    """A collated batch on ``device`` (left as it is on the CPU)."""
    return batch.to(device) if torch.device(device).type != "cpu" else batch


def collate(committee, atoms_list: Sequence[Atoms]):
    """All frames in one batch on the committee's device: neighbour lists and collation built once, shared by
    the members."""
    from mace.tools.torch_geometric import Batch

    return on_device(Batch.from_data_list(model_inputs(committee.models, atoms_list)), committee.device)


def _stacked(committee, data: dict, compute_stress: bool):
    """(energies, forces, stresses) of every member in one vmapped pass, or None where they do not stack or
    the pass fails (then the loop is used from here on: ``committee.batched`` becomes False)."""
    if "stackable" not in committee.cache:
        committee.cache["stackable"] = stackable(committee.models)  # (once: the members do not change)
    if not committee.cache["stackable"]:
        committee.batched = False
        return None
    try:
        return evaluate_stacked(committee.models, data, compute_stress)
    except RuntimeError as exc:  # a transform mace does not support: the loop gives the same numbers
        logger.warning("batched committee evaluation failed (%s); evaluating the members one by one",
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        committee.batched = False
        return None


def evaluate_committee(committee, atoms_list: Sequence[Atoms], compute_stress: bool = False) -> CommitteePrediction:
    """Every member on all frames in one batch: one vmapped pass (``committee.batched``; None: on an
    accelerator, and on the CPU up to ``CPU_BATCH_MAX_ATOMS`` atoms) or one forward per member."""
    batch = collate(committee, atoms_list)
    data, ptr = batch.to_dict(), batch.ptr.cpu().numpy()
    auto = torch.device(committee.device).type != "cpu" or int(batch.num_nodes) <= CPU_BATCH_MAX_ATOMS
    batched = auto if committee.batched is None else committee.batched
    stacked = _stacked(committee, data, compute_stress) if batched else None
    if stacked is not None:
        e, f, s = stacked
    else:
        outs = [model(dict(data), training=False, compute_force=True, compute_stress=compute_stress)
                for model in committee.models]
        e, f = torch.stack([o["energy"] for o in outs]), torch.stack([o["forces"] for o in outs])
        s = torch.stack([o["stress"] for o in outs]) if compute_stress else None
    f = f.detach().cpu().numpy().astype(float)
    return CommitteePrediction(e.detach().cpu().numpy().astype(float),
                               [f[:, ptr[i]:ptr[i + 1]] for i in range(len(atoms_list))],
                               None if s is None else voigt(s.detach().cpu().numpy().astype(float)))


# ------------------------------------------------------------------ descriptors: the invariant node features


def invariant_indices(model: torch.nn.Module, num_layers: int = -1) -> np.ndarray:
    """Column indices of the scalar (``0e``) channels of ``out["node_feats"]``, layer by layer.

    ``num_layers=-1`` keeps every interaction layer; ``num_layers=k`` the first ``k``.
    """
    from e3nn import o3

    products = list(model.products)
    if num_layers == -1:
        num_layers = len(products)
    if not 1 <= num_layers <= len(products):
        raise ValueError(f"num_layers must be -1 or in [1, {len(products)}], got {num_layers}")
    columns: list[np.ndarray] = []
    offset = 0
    for layer, product in enumerate(products):
        irreps = o3.Irreps(str(product.linear.irreps_out))
        for mul, ir in irreps:
            width = mul * ir.dim
            if layer < num_layers and ir.l == 0 and ir.p == 1:
                columns.append(np.arange(offset, offset + width))
            offset += width
    return np.concatenate(columns) if columns else np.zeros(0, dtype=int)


def node_descriptors(model: torch.nn.Module, atoms_list: Sequence[Atoms], batch_size: int = 16,
                     num_layers: int = -1, device: str = "cpu") -> list[np.ndarray]:
    """The scalar channels of every layer's node features (``invariant_indices``), per frame ``[n_atoms, n]``."""
    columns = torch.as_tensor(invariant_indices(model, num_layers))
    data = model_inputs([model], atoms_list)
    if next(model.parameters()).device != torch.device(device):
        model.to(device)
    out: list[np.ndarray] = []
    for batch in _loader(data, batch_size, shuffle=False):
        batch = batch.to(device)
        # node features need no gradients; MACE's forward still asks for them on the positions
        result = model(batch.to_dict(), training=False, compute_force=False)
        feats = result["node_feats"].detach()[:, columns].cpu().numpy().astype(float)
        ptr = batch.ptr.cpu().numpy()
        out.extend(feats[ptr[g]:ptr[g + 1]] for g in range(int(batch.num_graphs)))
    return out


class SingleModelCalculator(Calculator):
    """ASE calculator of one MACE model (energy, forces)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = predict([self.model], [self.atoms])
        energy = float(energies[0, 0])
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[0][0]}


class MaceLearner(Learner):
    """MACE trained from scratch (``ScaleShiftMACE``; E0s, scale and shift fitted to the labels)."""

    kind = "mace"
    hyperparameters = MaceHyperParameters
    architectures = {"ScaleShiftMACE": build_scale_shift_mace}

    def fit(self, run: Training) -> TrainResult:
        return _fit_mace(run)

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        if stress:
            return self.evaluate(committee, atoms_list, compute_stress=True)
        energies, forces = predict(committee.models, atoms_list, batch_size=batch_size, device=committee.device)
        return CommitteePrediction(energies, forces)

    def evaluate(self, committee, atoms_list, compute_stress=False, deviation=True) -> CommitteePrediction:
        return evaluate_committee(committee, atoms_list, compute_stress)

    def descriptors(self, model, atoms_list, batch_size=16, num_layers=-1, device="cpu") -> list[np.ndarray]:
        return node_descriptors(model, atoms_list, batch_size, num_layers, device)

    def descriptor_size(self, model, num_layers=-1) -> int:
        return len(invariant_indices(model, num_layers))


#: ``MaceLearner().train``: one MACE model from scratch (or warm-started from ``init_model``)
train_mace = MaceLearner().train
