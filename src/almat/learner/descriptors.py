"""Invariant descriptors from a MACE model's node features.

After each interaction block MACE holds per-atom node features; their scalar (``0e``) channels
are rotation-, translation- and permutation-invariant, and they are what the model itself uses to
tell environments apart. ``model(batch)`` returns all layers' node features concatenated as
``out["node_feats"]`` ([n_atoms, sum of the layers' feature dimensions]). Here the ``0e`` channels
of every layer are cut out of that tensor by reading each layer's irreps
(``model.products[i].linear.irreps_out``), which also handles the last layer (scalars only) and any
``max_L``. This is what ``mace.modules.utils.extract_invariant`` does, without its assumption that
all layers have the same number of channels.

Per-structure descriptors are the mean over atoms of the per-atom ones. They live in the model's
own feature space: distances are only comparable between descriptors from the same model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from almat.learner.mace import model_inputs
from almat.schemas import to_atoms


def descriptor_model(model_or_committee, member: int = 0) -> torch.nn.Module:
    """The MACE model to take descriptors from: the model itself, or one member of a ``Committee``.

    One member is enough: descriptors are only compared with descriptors from the same model.
    """
    models = getattr(model_or_committee, "models", None)
    if models is not None:
        if not -len(models) <= member < len(models):
            raise IndexError(f"committee has {len(models)} members, asked for member {member}")
        return models[member]
    return model_or_committee


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


def _as_atoms(items: Sequence) -> list[Atoms]:
    return [a if isinstance(a, Atoms) else to_atoms(getattr(a, "structure", a)) for a in items]


def atomic_descriptors(
    model_or_committee,
    frames: Sequence,
    batch_size: int = 16,
    num_layers: int = -1,
    member: int = 0,
    device: str = "cpu",
) -> list[np.ndarray]:
    """Per-atom invariant descriptors, one ``[n_atoms, n_features]`` array per frame.

    ``frames`` are ASE ``Atoms``, pymatgen ``Structure``s or objects with a ``structure`` attribute
    (``CandidateFrame``, ``StructureDoc``). Atoms of elements the model does not know raise.
    """
    from mace.tools.torch_geometric import DataLoader

    model = descriptor_model(model_or_committee, member)
    atoms_list = _as_atoms(frames)
    if not atoms_list:
        return []
    if getattr(model, "almat_architecture", {}).get("class") == "CHGNet":  # its atom features, invariant too
        from almat.learner.chgnet import crystal_graphs

        out = model(crystal_graphs(model, atoms_list), task="e", return_atom_feas=True)["atom_fea"]
        return [f.detach().cpu().numpy().astype(float) for f in out]
    columns = torch.as_tensor(invariant_indices(model, num_layers))
    data = model_inputs([model], atoms_list)
    if next(model.parameters()).device != torch.device(device):
        model.to(device)
    out: list[np.ndarray] = []
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=False):
        batch = batch.to(device)
        # node features need no gradients; MACE's forward still asks for them on the positions
        result = model(batch.to_dict(), training=False, compute_force=False)
        feats = result["node_feats"].detach()[:, columns].cpu().numpy().astype(float)
        ptr = batch.ptr.cpu().numpy()
        out.extend(feats[ptr[g]:ptr[g + 1]] for g in range(int(batch.num_graphs)))
    return out


def structure_descriptors(
    model_or_committee,
    frames: Sequence,
    batch_size: int = 16,
    num_layers: int = -1,
    member: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Per-structure descriptors ``[n_frames, n_features]``: the mean over atoms of the per-atom ones."""
    per_atom = atomic_descriptors(model_or_committee, frames, batch_size, num_layers, member, device)
    if not per_atom:
        width = len(invariant_indices(descriptor_model(model_or_committee, member), num_layers))
        return np.zeros((0, width))
    return np.stack([d.mean(axis=0) for d in per_atom])
