"""LLPR: a force uncertainty from one MACE model (last-layer prediction rigidity, Bigi et al. 2024).

A MACE energy is linear in its **last-layer features**: per atom, the scalar channels that the linear readouts
read and the hidden units of the non-linear readout (the inputs of its last linear map), times the model's
scale. Summed over a frame's atoms they are ``phi`` [n_features]; the gradient of ``phi`` with respect to an
atom's position component is ``g`` [n_features]: the last-layer feature of that force component.

After the usual training (``mace`` from scratch, ``mace-finetune`` from a foundation), one pass over the
training set accumulates ``A = sum g g^T + (energy_weight / forces_weight) sum (phi / n_atoms)(phi / n_atoms)^T``
(the Gauss-Newton Hessian of the loss with respect to the last layer), and the stored covariance is
``C = alpha^2 (A + s^2 I)^-1``. ``s^2`` (the regulariser) and ``alpha^2`` (the scale) are chosen on the
validation frames by the Gaussian negative log-likelihood of their force errors (``alpha^2`` is its optimum,
``mean(err^2 / g^T (A + s^2 I)^-1 g)``, for each of a grid of ``s^2``). A force component's variance is
``g^T C g``; an atom's force uncertainty ``sigma_i`` is the norm over x y z of the components' standard
deviations, as the committee's per-atom force deviation is.

Prediction: ``C = U diag(lambda) U^T``; with ``psi_r = sqrt(lambda_r) u_r . phi``, ``g^T C g = sum_r (d psi_r /
d x)^2``. One forward, the energy's backward (the forces) and one backward per direction ``r``: the
``rank`` directions of largest ``lambda`` (least constrained by the training data; ``learner.llpr_rank``, 4 in
a campaign file, all when None) give every atom's ``sigma_i`` exactly (or, with a lower rank, the dominant part
of it: on the argyrodite rank 4 ranked errors as well as all 32 directions, at a quarter of the cost).
MD steps whose deviation is not recorded cost one model (``deviation=False``: no extra backward).

To the campaign an LLPR model is a committee of two synthetic members, ``mean +- d`` with ``|d_i| = sigma_i``
along (1, 1, 1) and energies ``E +- sigma_E``: ``atomic_force_deviation``, ``max_force_deviation`` and
``energy_deviation`` give exactly ``sigma_i``, ``max_i sigma_i`` and ``sigma_E / n_atoms``, and the mean is the
model's prediction. Nothing downstream (trust levels, selection, calibration, reports, serve) changes, which is
why this was chosen over a ``force_std`` field that every reader of ``CommitteePrediction.forces`` would need to
know.

Storage: the safe model format (``almat.learner.models``), class ``LLPRMACE``: ``kwargs`` hold the base
model's record (``ScaleShiftMACE`` or ``MACE``) and ``n_features``; the model is the base MACE with one more
buffer, ``llpr_covariance`` [n_features, n_features], in its state dict (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from almat.learner.base import CommitteePrediction, Training
from almat.learner.batched import edge_vectors, stress_from_virial
from almat.learner.mace import MaceLearner, _loader, atoms_to_dataset, collate, model_inputs, on_device, voigt
from almat.learner.mace_finetune import MaceFinetuneLearner
from almat.learner.models import TrainResult, model_from_architecture
from almat.learner.shallow import grad_inputs

#: the buffer that holds the calibrated covariance of the last layer
COVARIANCE_KEY = "llpr_covariance"
#: the regulariser s^2 is searched on this grid, times the mean diagonal of A
REGULARISER_GRID = tuple(10.0 ** -k for k in range(1, 11))
#: variance floor (eV/Å)^2 of the validation NLL
_EPS = 1e-12


def build_llpr(kwargs: dict) -> torch.nn.Module:
    """A MACE model of the record ``kwargs["base"]`` with the ``llpr_covariance`` buffer [n_features, n_features]
    and ``llpr_rank`` (the covariance directions a prediction uses; None: all)."""
    model = model_from_architecture(kwargs["base"])
    n = int(kwargs["n_features"])
    model.register_buffer(COVARIANCE_KEY, torch.zeros((n, n), dtype=torch.get_default_dtype()))
    model.llpr_rank = kwargs.get("rank")
    return model


def llpr_architecture(base_record: dict, n_features: int, rank: int | None = None) -> dict:
    """The record of an LLPR model: the base model's record, the width of its last layer, the rank."""
    return {"class": "LLPRMACE", "dtype": base_record.get("dtype", "float32"),
            "kwargs": {"base": base_record, "n_features": int(n_features), "rank": rank}}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain MACE model of an LLPR model (its record's base, without the covariance); other models as given."""
    record = getattr(model, "almat_architecture", {})
    if record.get("class") != "LLPRMACE":
        return model
    base = model_from_architecture(record["kwargs"]["base"])
    base.load_state_dict({k: v for k, v in model.state_dict().items() if k != COVARIANCE_KEY}, strict=True)
    return base.to(next(model.parameters()).dtype)


def _scalar_columns(model: torch.nn.Module, layer: int) -> torch.Tensor:
    """Columns of the scalar (0e) channels of one interaction layer's node features."""
    from e3nn import o3

    columns, offset = [], 0
    for mul, ir in o3.Irreps(str(model.products[layer].linear.irreps_out)):
        if ir.l == 0 and ir.p == 1:
            columns.extend(range(offset, offset + mul))
        offset += mul * ir.dim
    return torch.as_tensor(columns, dtype=torch.long)


def node_outputs(model: torch.nn.Module, data: dict, positions: torch.Tensor,
                 displacement: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-atom energies [n_nodes] and last-layer features [n_nodes, n_features] (times the model's scale) of a
    single-head MACE (``ScaleShiftMACE.forward``'s energy, written out to keep the readouts' inputs)."""
    vectors, lengths = edge_vectors(positions, data, displacement)
    node_attrs, edge_index = data["node_attrs"], data["edge_index"]
    e0 = model.atomic_energies_fn(node_attrs)[:, 0]
    node_feats = model.node_embedding(node_attrs)
    edge_attrs = model.spherical_harmonics(vectors)
    edge_feats, cutoff = model.radial_embedding(lengths, node_attrs, edge_index, model.atomic_numbers)
    total = (model.pair_repulsion_fn(lengths, node_attrs, edge_index, model.atomic_numbers)
             if hasattr(model, "pair_repulsion") else torch.zeros_like(e0))
    layers = []
    for i, (interaction, product) in enumerate(zip(model.interactions, model.products)):
        node_feats, sc = interaction(node_attrs=node_attrs, node_feats=node_feats, edge_attrs=edge_attrs,
                                     edge_feats=edge_feats, edge_index=edge_index, cutoff=cutoff,
                                     first_layer=(i == 0))
        node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
        layers.append(node_feats)
    features = []
    for i, readout in enumerate(model.readouts):
        layer = len(layers) - 1 if len(model.readouts) == 1 else i
        x = layers[layer]
        if hasattr(readout, "linear_1"):
            hidden = readout.non_linearity(readout.linear_1(x))
            features.append(hidden)
            total = total + readout.linear_2(hidden)[:, 0]
        else:
            features.append(x[:, _scalar_columns(model, layer).to(x.device)])
            total = total + readout(x)[:, 0]
    scale, shift = model.scale_shift.scale, model.scale_shift.shift
    scale0 = torch.atleast_1d(torch.as_tensor(scale))[0]
    return e0 + scale * total + shift, scale0 * torch.cat(features, dim=1)


def frame_outputs(model, data: dict, positions, displacement=None):
    """Energies [n_graphs] and summed last-layer features ``phi`` [n_graphs, n_features] of a collated batch."""
    energy, feats = node_outputs(model, data, positions, displacement)
    n_graphs = int(data["ptr"].numel() - 1)
    e = torch.zeros(n_graphs, dtype=energy.dtype, device=energy.device).index_add(0, data["batch"], energy)
    phi = torch.zeros((n_graphs, feats.shape[1]), dtype=feats.dtype, device=feats.device).index_add(
        0, data["batch"], feats)
    return e, phi


def feature_gradients(model, data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(energies [n_graphs], phi [n_graphs, n_features], g [n_features, n_nodes, 3]): the gradients of the summed
    features with respect to every position (one backward per feature; training and calibration only)."""
    positions = data["positions"].detach().requires_grad_(True)
    with torch.enable_grad():
        energy, phi = frame_outputs(model, data, positions)
        total = phi.sum(dim=0)
        grads = [torch.autograd.grad([total[k]], [positions], retain_graph=k < total.numel() - 1)[0]
                 for k in range(total.numel())]
    return energy.detach(), phi.detach(), torch.stack(grads)


def _statistics(model, dataset, batch_size: int, device) -> dict[str, list]:
    """Per batch: g [n_features, n_nodes, 3], phi / n_atoms [n_graphs, n_features], and the force errors
    [n_nodes, 3] of ``dataset``."""
    out = {"g": [], "phi": [], "err": []}
    for batch in _loader(dataset, batch_size, shuffle=False):
        batch = batch.to(device)
        data = batch.to_dict()
        _, phi, g = feature_gradients(model, data)
        positions = data["positions"].detach().requires_grad_(True)
        with torch.enable_grad():
            energy, _ = frame_outputs(model, data, positions)
            forces = -torch.autograd.grad([energy.sum()], [positions])[0]
        natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(phi.dtype)
        out["g"].append(g.double())
        out["phi"].append((phi / natoms[:, None]).double())
        out["err"].append((batch.forces - forces.detach()).double())
    return out


def rigidity(stats: dict[str, list], energy_ratio: float) -> torch.Tensor:
    """``A = sum g g^T + energy_ratio sum (phi / n)(phi / n)^T`` (float64)."""
    a = sum(torch.einsum("kia,lia->kl", g, g) for g in stats["g"])
    return a + energy_ratio * sum(p.T @ p for p in stats["phi"])


def calibrate_covariance(a: torch.Tensor, valid: dict[str, list]) -> tuple[torch.Tensor, dict[str, float]]:
    """``C = alpha^2 (A + s^2 I)^-1`` with ``s^2`` (on ``REGULARISER_GRID`` x mean diag A) and ``alpha^2``
    minimising the Gaussian NLL of the validation force errors; (C, its figures)."""
    n = a.shape[0]
    base = float(torch.diagonal(a).mean()) or 1.0
    err2 = torch.cat([e.reshape(-1) for e in valid["err"]]) ** 2
    best = None
    for factor in REGULARISER_GRID:
        reg = factor * base
        inverse = torch.linalg.inv(a + reg * torch.eye(n, dtype=a.dtype, device=a.device))
        var = torch.cat([torch.einsum("kia,kl,lia->ia", g, inverse, g).reshape(-1) for g in valid["g"]])
        var = torch.clamp(var, min=_EPS)
        alpha2 = float(torch.mean(err2 / var))
        nll = 0.5 * float(torch.mean(torch.log(alpha2 * var))) + 0.5 + 0.5 * math.log(2 * math.pi)
        if math.isfinite(nll) and (best is None or nll < best[0]):
            best = (nll, reg, alpha2, inverse)
    if best is None:
        raise FloatingPointError("the LLPR covariance could not be calibrated (no finite likelihood)")
    nll, reg, alpha2, inverse = best
    return alpha2 * inverse, {"llpr_alpha2": alpha2, "llpr_regulariser": reg, "llpr_valid_nll": nll}


def fit_covariance(model, train_set, valid_set, hp) -> tuple[torch.Tensor, dict[str, float]]:
    """The calibrated covariance of a trained model (float64) and its figures (see the module doc)."""
    device = torch.device(hp.device)
    model = model.to(device)
    stats = _statistics(model, train_set, hp.batch_size, device)
    ratio = hp.energy_weight / hp.forces_weight if hp.forces_weight > 0 else 1.0
    a = rigidity(stats, ratio)
    covariance, figures = calibrate_covariance(a, _statistics(model, valid_set, hp.batch_size, device)
                                               if valid_set else stats)
    model.to("cpu")
    return covariance.cpu(), figures


def with_covariance(model: torch.nn.Module, covariance: torch.Tensor, rank: int | None = None) -> torch.nn.Module:
    """The LLPR model of a trained MACE model and its covariance."""
    base = base_model(model)
    out = model_from_architecture(llpr_architecture(base.almat_architecture, covariance.shape[0], rank))
    dtype = next(base.parameters()).dtype
    state = {**base.state_dict(), COVARIANCE_KEY: covariance.to(dtype)}
    out.load_state_dict(state, strict=True)
    return out.to(dtype).eval()


def _fit_llpr(learner, run: Training) -> TrainResult:
    """The base learner's training (from the previous LLPR model's base weights when warm-starting), then the
    covariance on its training labels, calibrated on its validation labels."""
    init = None if run.init_model is None else base_model(run.init_model)
    base_run = Training(run.atoms_list, run.ids, run.hp, run.seed, init, run.progress, {})
    result = learner.fit(base_run)
    model = result.model
    previous = torch.get_default_dtype()
    torch.set_default_dtype(next(model.parameters()).dtype)
    try:
        index = {label_id: i for i, label_id in enumerate(run.ids)}
        zs = [int(z) for z in model.atomic_numbers.tolist()]
        data = atoms_to_dataset(run.atoms_list, zs, float(model.r_max))
        train_set = [data[index[i]] for i in result.train_ids]
        valid_set = [data[index[i]] for i in result.valid_ids]
        covariance, figures = fit_covariance(model, train_set, valid_set, run.hp)
    finally:
        torch.set_default_dtype(previous)
    rank = run.options.get("rank")
    result.model = with_covariance(model, covariance, None if rank is None else int(rank))
    result.metrics.update(figures)
    return result


# ------------------------------------------------------------------ prediction


def _directions(model: torch.nn.Module, rank: int | None) -> torch.Tensor:
    """[r, n_features]: sqrt(lambda_r) u_r of the ``rank`` largest eigenvalues of the covariance."""
    covariance = getattr(model, COVARIANCE_KEY).double()
    values, vectors = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    values = torch.clamp(values, min=0.0)
    order = torch.argsort(values, descending=True)[: rank or len(values)]
    return (vectors[:, order] * torch.sqrt(values[order])).T.to(covariance.dtype)


def llpr_outputs(model, data: dict, compute_stress: bool = False, deviation: bool = True,
                 rank: int | None = None) -> dict[str, torch.Tensor]:
    """Energies [n_graphs], forces [n_nodes, 3] (stresses [n_graphs, 3, 3]) and, with ``deviation``, the
    energy uncertainty [n_graphs] and every atom's force uncertainty ``sigma`` [n_nodes] (see the module doc)."""
    positions, displacement, inputs = grad_inputs(data, compute_stress)
    with torch.enable_grad():
        energy, phi = frame_outputs(model, data, positions, displacement)
        grads = torch.autograd.grad([energy.sum()], inputs, retain_graph=deviation)
        out = {"energy": energy.detach(), "forces": -grads[0].detach()}
        if compute_stress:
            out["stress"] = stress_from_virial(grads[1], data).detach()
        if not deviation:
            return out
        directions = _directions(model, rank).to(phi.dtype).to(phi.device)  # [r, n_features]
        psi = phi @ directions.T  # [n_graphs, r]
        total = psi.sum(dim=0)
        var = torch.zeros(positions.shape[0], dtype=phi.dtype, device=phi.device)
        for r in range(total.numel()):
            g = torch.autograd.grad([total[r]], [positions], retain_graph=r < total.numel() - 1)[0]
            var = var + torch.sum(g * g, dim=1)
    out["sigma"] = torch.sqrt(var).detach()
    out["energy_sigma"] = torch.linalg.vector_norm(psi.detach(), dim=1)
    return out


def synthetic_members(out: dict[str, torch.Tensor], ptr: np.ndarray) -> CommitteePrediction:
    """Two members ``mean +- sigma`` whose deviations are the LLPR uncertainties (see the module doc); the mean
    only without ``sigma``."""
    e = out["energy"].cpu().numpy().astype(float)
    f = out["forces"].cpu().numpy().astype(float)
    s = voigt(out["stress"].cpu().numpy().astype(float)) if "stress" in out else None
    n_frames = len(e)
    if "sigma" not in out:
        return CommitteePrediction(e[None], [f[None, ptr[i]:ptr[i + 1]] for i in range(n_frames)],
                                   None if s is None else s[None], with_deviation=False)
    d = out["sigma"].cpu().numpy().astype(float)[:, None] * np.full(3, 1.0 / math.sqrt(3.0))
    de = out["energy_sigma"].cpu().numpy().astype(float)
    members = np.stack([f + d, f - d])
    return CommitteePrediction(np.stack([e + de, e - de]), [members[:, ptr[i]:ptr[i + 1]] for i in range(n_frames)],
                               None if s is None else np.stack([s, s]))


class _Llpr:
    """What makes a MACE learner an LLPR one (``learner.uncertainty: llpr``): ``fit`` adds the covariance, a
    model counts for two synthetic members, its mean alone costs one model."""

    architectures = {"LLPRMACE": build_llpr}
    shallow = True  # the mean alone costs one model: the sampler skips the uncertainty between recorded frames

    def fit(self, run: Training) -> TrainResult:
        return _fit_llpr(super(), run)

    def heads(self, model) -> int:
        return 2

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        from mace.tools.torch_geometric import DataLoader

        parts = []
        for batch in DataLoader(model_inputs(committee.models, atoms_list), batch_size=batch_size, shuffle=False):
            parts.append(self._evaluate_batch(committee, on_device(batch, committee.device), stress, True))
        return _concatenate(parts)

    def evaluate(self, committee, atoms_list, compute_stress=False, deviation=True) -> CommitteePrediction:
        return self._evaluate_batch(committee, collate(committee, atoms_list), compute_stress, deviation)

    def _evaluate_batch(self, committee, batch, compute_stress: bool, deviation: bool) -> CommitteePrediction:
        if len(committee.models) != 1:
            raise ValueError(f"an LLPR committee is one model, got {len(committee.models)}")
        model = committee.models[0]
        out = llpr_outputs(model, batch.to_dict(), compute_stress, deviation, getattr(model, "llpr_rank", None))
        return synthetic_members(out, batch.ptr.cpu().numpy())


def _concatenate(parts: Sequence[CommitteePrediction]) -> CommitteePrediction:
    stresses = None if parts[0].stresses is None else np.concatenate([p.stresses for p in parts], axis=1)
    return CommitteePrediction(np.concatenate([p.energies for p in parts], axis=1),
                               [f for p in parts for f in p.forces], stresses)


class LlprMaceLearner(_Llpr, MaceLearner):
    """MACE from scratch with its LLPR covariance: one model, its uncertainty analytic."""


class LlprMaceFinetuneLearner(_Llpr, MaceFinetuneLearner):
    """A fine-tuned MACE foundation with its LLPR covariance."""

