"""Invariant descriptors of frames, from one model of a committee, for FPS and diversity.

Each learner gives its own (``Learner.descriptors``): MACE the scalar (``0e``) channels of every interaction
layer's node features (``almat.learner.mace.invariant_indices``: rotation-, translation- and
permutation-invariant, what the model itself uses to tell environments apart, read layer by layer from
``model.products[i].linear.irreps_out``, so any ``max_L`` and a scalar-only last layer work), CHGNet its atom
features before the last layer.

Per-structure descriptors are the mean over atoms of the per-atom ones. They live in the model's
own feature space: distances are only comparable between descriptors from the same model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from almat.learner.mace import invariant_indices  # noqa: F401 - (re-exported)
from almat.learner.registry import learner_of
from almat.schemas import to_atoms


def descriptor_model(model_or_committee, member: int = 0) -> torch.nn.Module:
    """The model to take descriptors from: the model itself, or one member of a ``Committee``.

    One member is enough: descriptors are only compared with descriptors from the same model.
    """
    models = getattr(model_or_committee, "models", None)
    if models is not None:
        if not -len(models) <= member < len(models):
            raise IndexError(f"committee has {len(models)} members, asked for member {member}")
        return models[member]
    return model_or_committee


def _learner(model: torch.nn.Module):
    return learner_of(getattr(model, "almat_architecture", {}).get("class", type(model).__name__))


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
    model = descriptor_model(model_or_committee, member)
    atoms_list = _as_atoms(frames)
    if not atoms_list:
        return []
    return _learner(model).descriptors(model, atoms_list, batch_size=batch_size, num_layers=num_layers, device=device)


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
        model = descriptor_model(model_or_committee, member)
        return np.zeros((0, _learner(model).descriptor_size(model, num_layers)))
    return np.stack([d.mean(axis=0) for d in per_atom])
