"""A shallow ensemble of MACE: one interaction stack, ``n_heads`` readout heads, trained together.

Every head has its own readouts (the first layer's linear readout and the last layer's non-linear one: its
own hidden units, see ``almat.learner.batched.node_energies``), its own initialisation, and its own
bootstrap weights on the training configurations; the backbone (embeddings, interactions, products),
the E0s and the scale/shift are shared. To the rest of almat it is a committee of ``n_heads`` members:
``Committee`` gives per-head energies [n_heads, n_frames] and forces [n_heads, n_atoms, 3], from which the
model deviation, trust levels, selection and calibration work unchanged.

With ``learner.nll_epochs`` > 0 the heads are then fine-tuned for that many epochs with the Gaussian negative
log-likelihood of the forces (and energies) under the heads' mean and variance (``nll_loss``; "How to Train a
Shallow Ensemble", Schaefer, Kellner, Kaestner, Ceriotti 2026; Kellner and Ceriotti 2024): bootstrap heads on a
shared backbone cannot disagree about what the backbone gets wrong, and the NLL trains their spread to be the
size of the error. It starts from the bootstrap training's heads, so the variance in its denominator is never
zero at the start (and it is floored at ``NLL_EPS``).

Why bootstrap heads first and not a mean-variance NLL from the start: the heads then mean what a committee's
members mean (an ensemble whose spread almat's calibration rescales by its factor k, as it does for the
committee), the loss has no variance in a denominator to blow up on a small early training set, and it is the
committee's own loss, per head. Every step fits every head's energies on its bootstrap sample and, with ``all``
(``learner.head_forces``, the default), every head's forces: one forward and one force backward per head,
about 0.6x the committee's training time. ``rotate`` fits the forces of one head in turn, so a step costs
one model's forward and force backward, and the heads' mean is about as accurate as one model (the
committee's mean, and ``all``'s, are better). ``benchmarks/uncertainty_cost.py`` compares both with the
committee.

Prediction: one forward, then one backward per head on the CPU (measured faster there than one backward
batched over the heads) or one batched backward (``vmap`` of the pullback) on an accelerator, give every
head's forces; the heads' mean alone costs one model (``mean_outputs``), which the sampler uses on the MD
steps whose model deviation it does not record.

A model is stored like any other (``almat.learner.models``): its state dict and an architecture record,
class ``ShallowEnsembleMACE``: the ``ScaleShiftMACE`` keyword arguments plus ``n_heads``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from almat.learner.base import CommitteePrediction, Training
from almat.learner.batched import graph_energies, out_of_place_scatter, stress_from_virial
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.mace import (ATOM_FORCE_WEIGHT_KEY, MaceLearner, _loader, atoms_to_dataset, build_model, collate,
                                fit, model_inputs, on_device, training_context, voigt)
from almat.learner.models import TrainResult, model_from_architecture
from almat.learner.registry import SHALLOW_LEARNERS  # noqa: F401 - (re-exported)

logger = logging.getLogger(__name__)


_CLASS = None


def _shallow_class():
    """``ShallowEnsembleMACE``: a ``ScaleShiftMACE`` with ``n_heads`` readout heads whose ``forward`` gives the
    heads' mean (``energy``, ``forces``, ``stress``) and every head (``energies``, ``head_forces``,
    ``head_stress``), so code that calls a model directly sees the ensemble mean, never one head."""
    global _CLASS
    if _CLASS is None:
        from mace.modules import ScaleShiftMACE

        class ShallowEnsembleMACE(ScaleShiftMACE):
            def forward(self, data, training: bool = False, compute_force: bool = True,
                        compute_stress: bool = False, **_):
                out = head_outputs(self, data, compute_force=compute_force, compute_stress=compute_stress,
                                   create_graph=training)
                result = {"energies": out["energy"], "energy": out["energy"].mean(dim=0)}
                if not (compute_force or compute_stress):  # (descriptors: the backbone's node features)
                    result["node_feats"] = super().forward(data, compute_force=False)["node_feats"]
                if "forces" in out:
                    result.update(head_forces=out["forces"], forces=out["forces"].mean(dim=0))
                if "stress" in out:
                    result.update(head_stress=out["stress"], stress=out["stress"].mean(dim=0))
                return result

        _CLASS = ShallowEnsembleMACE
    return _CLASS


def build_shallow_ensemble_mace(kwargs: dict) -> torch.nn.Module:
    """A ``ShallowEnsembleMACE`` from its record's keyword arguments (a ``ScaleShiftMACE``'s plus ``n_heads``)."""
    from mace import modules  # before e3nn (the other order fails on torch's weights-only load)
    from e3nn import o3

    kw = dict(kwargs)
    heads = int(kw.pop("n_heads"))
    if heads < 2:
        raise ValueError(f"a shallow ensemble needs at least 2 heads, got n_heads={heads}")
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    kw.update(hidden_irreps=o3.Irreps(kw["hidden_irreps"]), MLP_irreps=o3.Irreps(kw["MLP_irreps"]),
              atomic_energies=np.asarray(kw["atomic_energies"], dtype=float))
    model = _shallow_class()(interaction_cls=block, interaction_cls_first=block, gate=torch.nn.functional.silu,
                             heads=[f"head{h}" for h in range(heads)], **kw)
    model.n_heads = heads
    return model


def shallow_architecture(mace_record: dict, n_heads: int) -> dict:
    """The record of a shallow ensemble from a ``ScaleShiftMACE`` record (``almat.learner.mace.mace_architecture``)."""
    return {**mace_record, "class": "ShallowEnsembleMACE", "kwargs": {**mace_record["kwargs"], "n_heads": int(n_heads)}}


def head_count(model: torch.nn.Module) -> int:
    """Readout heads of a model: ``n_heads`` of a shallow ensemble, 1 for any other model."""
    return int(getattr(model, "n_heads", 1))


def grad_inputs(data: dict, compute_stress: bool):
    """``(positions, displacement or None, inputs)``: what forces (and, with a zero strain ``displacement``
    per graph, stresses) are the gradients of."""
    positions = data["positions"]
    if not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    displacement = None
    if compute_stress:
        n_graphs = int(data["ptr"].numel() - 1)
        displacement = torch.zeros((n_graphs, 3, 3), dtype=positions.dtype, device=positions.device,
                                   requires_grad=True)
    return positions, displacement, [positions] + ([displacement] if compute_stress else [])


def head_outputs(model: torch.nn.Module, data: dict, compute_force: bool = True, compute_stress: bool = False,
                 create_graph: bool = False, force_heads: Sequence[int] | None = None,
                 batched: bool | None = None) -> dict[str, torch.Tensor]:
    """Per-head ``energy`` [n_heads, n_graphs], ``forces`` [n_heads, n_nodes, 3] and, with ``compute_stress``,
    ``stress`` [n_heads, n_graphs, 3, 3] of a collated batch: one forward, then one backward per head (on the CPU)
    or one backward batched over the heads (on an accelerator). ``create_graph`` keeps the graph of the forces
    (training: one backward per head, of ``force_heads`` only when given). ``batched`` forces the choice."""
    heads = head_count(model)
    positions, displacement, inputs = grad_inputs(data, compute_stress)
    with torch.enable_grad():
        energy = graph_energies(model, data, positions, displacement, heads).T  # [n_heads, n_graphs]
        out = {"energy": energy}
        if not (compute_force or compute_stress):
            return out
        if batched is None:
            batched = positions.device.type != "cpu"
        if create_graph or not batched:
            # one backward per head (training: only ``force_heads``). On the CPU this is faster than one backward
            # batched over the heads (benchmarks/uncertainty_cost.py), and torch cannot batch a backward that
            # builds its own graph through mace's scripted ops
            wanted = range(heads) if force_heads is None else force_heads
            per_head = [torch.autograd.grad([energy[h].sum()], inputs, create_graph=create_graph,
                                            retain_graph=create_graph or k < len(wanted) - 1)
                        for k, h in enumerate(wanted)]
            grads = [torch.stack([g[i] for g in per_head]) for i in range(len(inputs))]
        else:  # on an accelerator: one backward batched over the heads
            cotangents = torch.eye(heads, dtype=energy.dtype, device=energy.device)[:, :, None].expand(
                heads, heads, energy.shape[1])
            with out_of_place_scatter():
                grads = torch.autograd.grad([energy], inputs, grad_outputs=[cotangents], retain_graph=False,
                                            is_grads_batched=True)
    out["forces"] = -grads[0]
    if compute_stress:
        out["stress"] = stress_from_virial(grads[1], data)
    return out


def mean_outputs(model: torch.nn.Module, data: dict, compute_stress: bool = False) -> dict[str, torch.Tensor]:
    """The heads' mean ``energy`` [n_graphs], ``forces`` [n_nodes, 3] (and ``stress``) at the cost of one model:
    one forward and one backward of the mean energy (MD steps whose model deviation is not recorded)."""
    heads = head_count(model)
    positions, displacement, inputs = grad_inputs(data, compute_stress)
    with torch.enable_grad():
        energy = graph_energies(model, data, positions, displacement, heads).mean(dim=1)
        grads = torch.autograd.grad([energy.sum()], inputs)
    out = {"energy": energy.detach(), "forces": -grads[0]}
    if compute_stress:
        out["stress"] = stress_from_virial(grads[1], data)
    return out


def predict_heads(model: torch.nn.Module, batches, compute_stress: bool = False):
    """Energies [n_heads, n_frames], per-frame forces [n_heads, n_atoms, 3] (and stresses [n_heads, n_frames, 3,
    3]) of collated batches."""
    energies, forces, stresses = [], [], []
    for batch in batches:
        data = batch.to_dict()
        out = head_outputs(model, data, compute_stress=compute_stress)
        energies.append(out["energy"].detach().cpu().numpy())
        f = out["forces"].detach().cpu().numpy()
        ptr = batch.ptr.cpu().numpy()
        forces += [f[:, ptr[g]:ptr[g + 1]] for g in range(int(batch.num_graphs))]
        if compute_stress:
            stresses.append(out["stress"].detach().cpu().numpy())
    e = np.concatenate(energies, axis=1).astype(float)
    s = np.concatenate(stresses, axis=1).astype(float) if compute_stress else None
    return e, [f.astype(float) for f in forces], s


#: per-graph tensor [1, n_heads] of the bootstrap weights of a training configuration
HEAD_WEIGHT_KEY = "head_weights"


def bootstrap_weights(n_configs: int, heads: int, rng: np.random.Generator) -> np.ndarray:
    """[n_configs, n_heads]: how often each head draws each configuration in a bootstrap sample of
    ``n_configs`` (multinomial counts; a head sees about 63 % of the configurations, some twice)."""
    return np.stack([rng.multinomial(n_configs, np.full(n_configs, 1.0 / n_configs)) for _ in range(heads)],
                    axis=1).astype(float)


def _head_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per head (first axis): sum(w v) / sum(w) over the other axes; 0 (keeping the graph) for a head whose
    weights are all 0 in this batch."""
    dims = tuple(range(1, values.dim()))
    total = torch.sum(weights, dim=dims)
    return torch.sum(values * weights, dim=dims) / torch.clamp(total, min=1e-12)


def heads_loss(batch, out: dict, hp: MaceHyperParameters) -> torch.Tensor:
    """The committee's loss of every head on its bootstrap-weighted configurations, averaged over the heads.

    Label weights (nearsighted force training: per-atom ``force_weights``, per-configuration ``energy_weight``)
    multiply the bootstrap weights, as in ``almat.learner.mace``."""

    natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    graph_w = batch[HEAD_WEIGHT_KEY].T.to(out["energy"].dtype)  # [n_heads, n_graphs]
    energy_w, node_w = graph_w, graph_w[:, batch.batch]  # [n_heads, n_nodes]
    if batch[ATOM_FORCE_WEIGHT_KEY] is not None:
        energy_w = energy_w * batch.energy_weight[None]
        node_w = node_w * batch[ATOM_FORCE_WEIGHT_KEY][None]
    e_term = _head_mean(torch.square((batch.energy[None] - out["energy"]) / natoms[None]), energy_w)
    heads = out.get("force_heads")
    if heads is not None:
        node_w = node_w[heads]
    f_term = _head_mean(torch.mean(torch.square(batch.forces[None] - out["forces"]), dim=-1), node_w)
    return hp.energy_weight * torch.mean(e_term) + hp.forces_weight * torch.mean(f_term)


#: variance floor of the NLL: (eV/Å)² for forces, (eV/atom)² for energies
NLL_EPS = 1e-6
#: the NLL fine-tuning's learning rate, as a fraction of ``hp.lr``
NLL_LR_FRACTION = 0.2


def _gaussian_nll(target: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (weighted: per first-axis entry) of 0.5 (log var + (target - mean)² / var), var floored at NLL_EPS."""
    var = torch.clamp(var, min=NLL_EPS)
    nll = 0.5 * (torch.log(var) + torch.square(target - mean) / var)
    if weights is None:
        return torch.mean(nll)
    nll = nll.reshape(nll.shape[0], -1).mean(dim=1)
    return torch.sum(nll * weights) / torch.clamp(torch.sum(weights), min=1e-12)


def nll_loss(batch, out: dict, hp: MaceHyperParameters) -> torch.Tensor:
    """The Gaussian negative log-likelihood of the labels under the heads' mean and variance: of every force
    component (the heads' per-component variance) and, weighted by ``energy_weight / forces_weight``, of the
    energy per atom. Every head sees every configuration (no bootstrap weights); label weights (nearsighted force
    training) weight the atoms and configurations as in ``heads_loss``."""
    natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    e, f = out["energy"] / natoms[None], out["forces"]  # [n_heads, n_graphs], [n_heads, n_nodes, 3]
    node_w = batch[ATOM_FORCE_WEIGHT_KEY]
    energy_w = None if node_w is None else batch.energy_weight
    nll_f = _gaussian_nll(batch.forces, f.mean(dim=0), f.var(dim=0), node_w)
    nll_e = _gaussian_nll(batch.energy / natoms, e.mean(dim=0), e.var(dim=0), energy_w)
    ratio = hp.energy_weight / hp.forces_weight if hp.forces_weight > 0 else 1.0
    return nll_f + ratio * nll_e


def fit_heads(model: torch.nn.Module, train_set, valid_set, hp: MaceHyperParameters, epochs: int, seed: int,
              progress: Callable[[int, int, float], None] | None = None, rotate: bool = False,
              nll_epochs: int = 0):
    """Train every head (and the shared backbone) on its bootstrap-weighted ``train_set``, keeping the best
    state by the validation loss of the heads' mean; then, with ``nll_epochs``, fine-tune with the force NLL
    (``nll_loss``, at ``NLL_LR_FRACTION`` of the learning rate). ``(model on the cpu, metrics, history)``. A
    non-finite loss or head spread raises ``FloatingPointError``."""

    heads = head_count(model)

    def step_loss(model, batch, step):
        force_heads = [step % heads] if rotate else None
        out = head_outputs(model, batch.to_dict(), create_graph=True, force_heads=force_heads)
        if rotate:
            out["force_heads"] = force_heads
        return heads_loss(batch, out, hp)

    model, metrics, history = fit(model, train_set, valid_set, hp, epochs, seed, progress, step_loss)
    if nll_epochs > 0:
        def nll_step(model, batch, step):
            return nll_loss(batch, head_outputs(model, batch.to_dict(), create_graph=True), hp)

        tuned = hp.model_copy(update={"lr": hp.lr * NLL_LR_FRACTION})
        model, metrics, more = fit(model, train_set, valid_set, tuned, nll_epochs, seed + 1, None, nll_step)
        history += [{**h, "epoch": h["epoch"] + epochs, "nll": 1.0} for h in more]
    device = torch.device(hp.device)
    model = model.to(device)
    valid_loader = _loader(valid_set or train_set, hp.batch_size, shuffle=False)
    spread = _head_spread(model, valid_loader, device)
    if not math.isfinite(spread):
        raise FloatingPointError(f"the heads' force spread is {spread} after training")
    metrics["head_force_spread"] = spread
    return model.to("cpu"), metrics, history


def _head_spread(model, loader, device) -> float:
    """Mean over atoms of the heads' force standard deviation (norm over x y z), on ``loader``."""
    sums, count = 0.0, 0
    for batch in loader:
        out = head_outputs(model, batch.to(device).to_dict())
        std = torch.linalg.vector_norm(out["forces"].detach().std(dim=0), dim=-1)
        sums, count = sums + float(std.sum()), count + int(std.numel())
    return sums / max(count, 1)


def _fit_shallow(run: Training) -> TrainResult:
    """One shallow ensemble of ``n_heads`` heads (``run.options``, default 4; ``rotate``: one head's forces a
    step). ``seed`` sets the initialisation (each head's readouts are drawn on their own), the split, the batch
    order and the heads' bootstrap weights. With ``init_model`` (a shallow ensemble with as many heads, on the
    same elements) it continues from those weights for ``hp.warm_start_epochs``."""
    n_heads, rotate = int(run.options.get("n_heads", 4)), bool(run.options.get("rotate", False))
    nll_epochs = int(run.options.get("nll_epochs", 0))
    if n_heads < 2:
        raise ValueError(f"a shallow ensemble needs at least 2 heads, got n_heads={n_heads}")
    start, hp, init_model = time.perf_counter(), run.hp, run.init_model
    with training_context(run.atoms_list, run.ids, hp, run.seed) as (rng, train_idx, valid_idx, zs):
        dtype = torch.get_default_dtype()
        warm = (init_model is not None and head_count(init_model) == n_heads
                and sorted(int(z) for z in init_model.atomic_numbers.tolist()) == zs)
        if init_model is not None and not warm:
            logger.info("elements or heads changed; training the shallow ensemble from scratch")
        data = atoms_to_dataset(run.atoms_list, zs, float(init_model.r_max) if warm else hp.r_max)
        train_set = [data[i] for i in train_idx]
        valid_set = [data[i] for i in valid_idx]
        if warm:
            model, epochs = copy.deepcopy(init_model).to(dtype), hp.warm_start_epochs
        else:
            record = build_model(hp, zs, train_set).almat_architecture  # E0s, scale, shift of the data
            model, epochs = model_from_architecture(shallow_architecture(record, n_heads)), hp.epochs
        weights = bootstrap_weights(len(train_set), n_heads, rng)
        for item, w in zip(train_set, weights):
            item[HEAD_WEIGHT_KEY] = torch.tensor(w, dtype=dtype)[None]
        model, metrics, history = fit_heads(model, train_set, valid_set, hp, epochs, run.seed, run.progress, rotate,
                                            nll_epochs)
        return TrainResult.of(model, run.ids, train_idx, valid_idx, metrics, epochs, start, history)


def _heads(models, batches, n_frames: int, compute_stress: bool = False) -> CommitteePrediction:
    """The heads of the shallow ensembles as members: energies [n_heads, n_frames], per-frame forces [n_heads,
    n_atoms, 3] (and stresses)."""
    parts = [predict_heads(model, batches, compute_stress) for model in models]
    energies = np.concatenate([p[0] for p in parts])
    forces = [np.concatenate([p[1][i] for p in parts]) for i in range(n_frames)]
    stresses = voigt(np.concatenate([p[2] for p in parts])) if compute_stress else None
    return CommitteePrediction(energies, forces, stresses)


def _mean(model, batch, n_frames: int, compute_stress: bool) -> CommitteePrediction:
    """The heads' mean only (one row, no deviation), at one model's cost."""
    out = mean_outputs(model, batch.to_dict(), compute_stress)
    ptr = batch.ptr.cpu().numpy()
    f = out["forces"].detach().cpu().numpy().astype(float)[None]
    s = voigt(out["stress"].detach().cpu().numpy().astype(float))[None] if compute_stress else None
    return CommitteePrediction(out["energy"].cpu().numpy().astype(float)[None],
                               [f[:, ptr[i]:ptr[i + 1]] for i in range(n_frames)], s, with_deviation=False)


class ShallowMaceLearner(MaceLearner):
    """A shallow ensemble of MACE (``learner.uncertainty: shallow``): one model, its heads the members."""

    architectures = {"ShallowEnsembleMACE": build_shallow_ensemble_mace}
    shallow = True

    def fit(self, run: Training) -> TrainResult:
        return _fit_shallow(run)

    def heads(self, model) -> int:
        return head_count(model)

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        if stress:
            return self.evaluate(committee, atoms_list, compute_stress=True)
        from mace.tools.torch_geometric import DataLoader

        batches = list(DataLoader(model_inputs(committee.models, atoms_list), batch_size=batch_size, shuffle=False))
        return _heads(committee.models, [on_device(b, committee.device) for b in batches], len(atoms_list))

    def evaluate(self, committee, atoms_list, compute_stress=False, deviation=True) -> CommitteePrediction:
        """``deviation=False``: the heads' mean only, at one model's cost (MD steps whose deviation is not
        recorded)."""
        batch = collate(committee, atoms_list)
        if not deviation and len(committee.models) == 1:
            return _mean(committee.models[0], batch, len(atoms_list), compute_stress)
        return _heads(committee.models, [batch], len(atoms_list), compute_stress)


#: ``ShallowMaceLearner().train``: one shallow ensemble (options ``n_heads``, default 4, and ``rotate``)
train_shallow_mace = ShallowMaceLearner().train
