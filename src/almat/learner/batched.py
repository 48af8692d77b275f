"""The committee's MACE members evaluated in one pass, and the energy function they share with the shallow
ensemble (``almat.learner.shallow``).

``node_energies`` is the energy part of ``ScaleShiftMACE.forward`` as a pure function of the edge vectors:
it never calls ``requires_grad_`` (which torch.func transforms refuse) and keeps every head's readout, so the
same code gives a plain model's per-atom energy ``[n_nodes, 1]`` and a shallow ensemble's ``[n_nodes, n_heads]``.

Batched committee evaluation (``evaluate_stacked``): the members' parameters are stacked
(``torch.func.stack_module_state``) and one ``vmap`` over them runs every member's forward and its force
backward together: forces are ``-dE/dpositions`` from ``torch.func.vjp`` inside the ``vmap`` (``torch.autograd.grad``
is not allowed there). Two things in mace stand in the way of ``vmap`` and are handled here:
``prepare_graph`` calls ``positions.requires_grad_`` (``node_energies`` does not use it), and ``scatter_sum`` adds
in place into a fresh unbatched tensor (``out_of_place_scatter`` swaps in an out-of-place twin, equal in value,
for the duration of the call). ``Committee.evaluate`` falls back to its per-model loop when the members do
not stack (different architectures or sizes) or the transform fails; ``benchmarks/uncertainty_cost.py``
measures both.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

#: mace modules that call ``scatter_sum`` by their own global name
_SCATTER_USERS = ("mace.modules.blocks", "mace.modules.models", "mace.modules.utils", "mace.modules.radial",
                  "mace.modules.irreps_tools")
_swap_lock = threading.RLock()


def _scatter_sum_out_of_place(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    """``mace.tools.scatter.scatter_sum`` without the in-place add (vmap cannot add a batched tensor in place
    into an unbatched one); the same values."""
    from mace.tools.scatter import _broadcast

    assert reduce == "sum"
    index = _broadcast(index, src, dim)
    if out is None:
        size = list(src.size())
        if dim_size is not None:
            size[dim] = dim_size
        elif index.numel() == 0:
            size[dim] = 0
        else:
            size[dim] = int(index.max()) + 1
        out = torch.zeros(size, dtype=src.dtype, device=src.device)
    return out.scatter_add(dim, index, src)


@contextlib.contextmanager
def out_of_place_scatter():
    """mace's ``scatter_sum`` replaced by its out-of-place twin while the block runs (equal values, so a thread
    that calls mace meanwhile gets the same results)."""
    with _swap_lock:
        saved = []
        for name in _SCATTER_USERS:
            try:
                module = importlib.import_module(name)
            except ImportError:  # pragma: no cover - another mace layout
                continue
            if getattr(module, "scatter_sum", None) is not None:
                saved.append((module, module.scatter_sum))
                module.scatter_sum = _scatter_sum_out_of_place
        try:
            yield
        finally:
            for module, func in saved:
                module.scatter_sum = func


def edge_vectors(positions: torch.Tensor, data: dict, displacement: torch.Tensor | None = None):
    """Edge vectors and lengths of a collated graph; with a per-graph ``displacement`` [n_graphs, 3, 3] the
    positions and the cell are strained by its symmetric part (its gradient is then the virial)."""
    shifts = data["shifts"]
    if displacement is not None:
        sym = 0.5 * (displacement + displacement.transpose(-1, -2))
        positions = positions + torch.einsum("be,bec->bc", positions, sym[data["batch"]])
        cell = data["cell"].view(-1, 3, 3)
        cell = cell + torch.matmul(cell, sym)
        shifts = torch.einsum("be,bec->bc", data["unit_shifts"], cell[data["batch"][data["edge_index"][0]]])
    sender, receiver = data["edge_index"][0], data["edge_index"][1]
    vectors = positions[receiver] - positions[sender] + shifts
    return vectors, torch.linalg.norm(vectors, dim=-1, keepdim=True)


def node_energies(model: torch.nn.Module, data: dict, vectors: torch.Tensor, lengths: torch.Tensor,
                  n_heads: int = 1) -> torch.Tensor:
    """Per-atom energies [n_nodes, n_heads] of a ``ScaleShiftMACE`` (E0 + pair repulsion + scaled
    interaction energy), every head's readout kept: with ``n_heads`` > 1 the last (non-linear) readout's
    hidden units are split in ``n_heads`` blocks and head h reads only its own block, as mace's
    ``mask_head`` does for one head at a time."""
    from mace.tools.scatter import scatter_sum  # noqa: F401 - (the swapped one is looked up in mace's modules)

    node_attrs, edge_index = data["node_attrs"], data["edge_index"]
    e0 = model.atomic_energies_fn(node_attrs)[:, :1]  # [n_nodes, 1]: E0s shared by the heads
    node_feats = model.node_embedding(node_attrs)
    edge_attrs = model.spherical_harmonics(vectors)
    edge_feats, cutoff = model.radial_embedding(lengths, node_attrs, edge_index, model.atomic_numbers)
    pair = (model.pair_repulsion_fn(lengths, node_attrs, edge_index, model.atomic_numbers)
            if hasattr(model, "pair_repulsion") else torch.zeros_like(e0[:, 0]))
    feats = []
    for i, (interaction, product) in enumerate(zip(model.interactions, model.products)):
        node_feats, sc = interaction(node_attrs=node_attrs, node_feats=node_feats, edge_attrs=edge_attrs,
                                     edge_feats=edge_feats, edge_index=edge_index, cutoff=cutoff,
                                     first_layer=(i == 0))
        node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
        feats.append(node_feats)
    total = pair[:, None]
    for i, readout in enumerate(model.readouts):
        x = feats[-1 if len(model.readouts) == 1 else i]
        if hasattr(readout, "linear_1") and n_heads > 1:
            hidden = readout.non_linearity(readout.linear_1(x))  # [n_nodes, n_heads * m], head-major blocks
            m = hidden.shape[1] // n_heads
            eye = torch.eye(n_heads, dtype=hidden.dtype, device=hidden.device)
            mask = eye.repeat_interleave(m, dim=1)  # [n_heads, n_heads * m]
            per_head = readout.linear_2(hidden[None] * mask[:, None, :])  # [n_heads, n_nodes, n_heads]
            total = total + torch.diagonal(per_head, dim1=0, dim2=2)  # [n_nodes, n_heads]
        else:
            total = total + readout(x)  # [n_nodes, n_heads]
    scale, shift = model.scale_shift.scale, model.scale_shift.shift
    return e0 + scale * total + shift


def graph_energies(model, data: dict, positions, displacement=None, n_heads: int = 1) -> torch.Tensor:
    """Energies [n_graphs, n_heads] of a collated batch."""
    vectors, lengths = edge_vectors(positions, data, displacement)
    per_atom = node_energies(model, data, vectors, lengths, n_heads)
    n_graphs = int(data["ptr"].numel() - 1)
    out = torch.zeros((n_graphs, per_atom.shape[1]), dtype=per_atom.dtype, device=per_atom.device)
    return out.index_add(0, data["batch"], per_atom)


def stress_from_virial(grad_displacement: torch.Tensor, data: dict) -> torch.Tensor:
    """Stress [..., n_graphs, 3, 3] (mace's convention) from dE/d(displacement)."""
    volume = torch.linalg.det(data["cell"].view(-1, 3, 3)).abs()
    stress = grad_displacement / volume[:, None, None]
    return torch.where(torch.abs(stress) < 1e10, stress, torch.zeros_like(stress))


class _Energy(torch.nn.Module):
    """A member as a function of (positions, displacement): what ``functional_call`` swaps parameters into."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data, positions, displacement=None):
        return graph_energies(self.model, data, positions, displacement)[:, 0]


def _plain(module: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if isinstance(v, (int, float, str, bool)) and not k.startswith("_")}


def _differing_attributes(models: Sequence[torch.nn.Module]) -> set[tuple[str, str]]:
    """(submodule, attribute) of the plain attributes (not tensors) in which the members differ: what
    ``functional_call`` would silently take from the first member."""
    out = set()
    for subs in zip(*(list(m.named_modules()) for m in models)):
        first = _plain(subs[0][1])
        for _, sub in subs[1:]:
            other = _plain(sub)
            out |= {(subs[0][0], k) for k in set(first) | set(other) if first.get(k) != other.get(k)}
    return out


def stackable(models: Sequence[torch.nn.Module]) -> bool:
    """Whether the members can be stacked: plain ``ScaleShiftMACE``s with the same parameter names and shapes,
    differing in their plain attributes only by ``avg_num_neighbors`` (folded into the weights that it divides,
    see ``evaluate_stacked``)."""
    first = models[0]
    if type(first).__name__ != "ScaleShiftMACE" or getattr(first, "heads", ["Default"]) != ["Default"]:
        return False
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    if not all(type(m) is type(first) and {k: v.shape for k, v in m.state_dict().items()} == shapes
               for m in models[1:]):
        return False
    return all(name.startswith("interactions.") and key == "avg_num_neighbors"
               and isinstance(getattr(first.get_submodule(name), "linear", None), torch.nn.Module)
               and not any("bias" in n for n, _ in first.get_submodule(name).linear.named_parameters())
               for name, key in _differing_attributes(models))


def evaluate_stacked(models: Sequence[torch.nn.Module], data: dict, compute_stress: bool = False):
    """Energies [n_models, n_graphs], forces [n_models, n_nodes, 3] and, with ``compute_stress``, stresses
    [n_models, n_graphs, 3, 3] of every member in one vmapped pass (see the module doc)."""
    from torch.func import functional_call, stack_module_state, vjp, vmap

    wrappers = [_Energy(m) for m in models]
    params, buffers = stack_module_state(wrappers)
    base = wrappers[0]
    with torch.no_grad():  # an interaction's message is linear(m) / avg_num_neighbors: fold each member's own
        for i, block in enumerate(models[0].interactions):
            ratios = [block.avg_num_neighbors / m.interactions[i].avg_num_neighbors for m in models]
            if any(r != 1.0 for r in ratios):
                weight = params[f"model.interactions.{i}.linear.weight"]
                scale = torch.tensor(ratios, dtype=weight.dtype, device=weight.device)
                weight.mul_(scale.view(-1, *[1] * (weight.dim() - 1)))
    positions = data["positions"].detach()
    n_graphs = int(data["ptr"].numel() - 1)
    inputs = (positions,)
    if compute_stress:
        inputs += (torch.zeros((n_graphs, 3, 3), dtype=positions.dtype, device=positions.device),)

    def member(p, b):
        energy, pullback = vjp(lambda *x: functional_call(base, (p, b), (data, *x)), *inputs)
        grads = pullback(torch.ones_like(energy))
        return energy, -grads[0], grads[1] if compute_stress else energy

    with torch.no_grad(), out_of_place_scatter():  # (vjp tracks what it needs on its own)
        energies, forces, d_disp = vmap(member)(params, buffers)
    return energies, forces, stress_from_virial(d_disp, data) if compute_stress else None
