"""Initial data: strained and rattled copies of the start structures."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

__all__ = ["perturbed_structures"]


def perturbed_structures(
    structure: Structure,
    n: int,
    rattle_std: float,
    max_strain: float,
    rng: np.random.Generator,
) -> list[Structure]:
    """``n`` configurations: the structure itself, then copies under a random symmetric strain
    (|component| <= ``max_strain``) with Gaussian displacements of ``rattle_std`` Å per Cartesian
    component. The rattle grows linearly from 0.5x to 1.5x ``rattle_std`` across the set, so the data
    cover both near-equilibrium and strongly distorted configurations.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    out = [structure.copy()]
    for i in range(1, n):
        strain = rng.uniform(-max_strain, max_strain, size=(3, 3))
        strain = 0.5 * (strain + strain.T)
        lattice = Lattice(structure.lattice.matrix @ (np.eye(3) + strain))
        scale = 0.5 + (i - 1) / max(n - 2, 1)
        cart = structure.lattice.get_cartesian_coords(structure.frac_coords) @ (np.eye(3) + strain)
        cart = cart + rng.normal(0.0, rattle_std * scale, size=cart.shape)
        out.append(Structure(lattice, structure.species, cart, coords_are_cartesian=True))
    return out
