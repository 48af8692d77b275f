"""Structure identity and conversions between ASE and pymatgen.

The structure hash identifies a *configuration*: the same atoms in the same cell give the same hash,
whatever the order of the sites and whatever float noise below the tolerances:

- lattice vectors are rounded to ``LATTICE_DECIMALS`` decimals in Å (1e-4 Å);
- fractional coordinates are wrapped into [0, 1) and rounded to ``FRAC_DECIMALS`` decimals (1e-5,
  i.e. ~1e-4 Å in a 10 Å cell); a coordinate that rounds to 1.0 is folded to 0.0;
- sites are sorted by (element, rounded coordinates) before hashing.

Noise that straddles a rounding boundary can still change the hash; with these tolerances that needs
a displacement within ~1e-5 of a grid line, which MD and relaxations essentially never produce twice.
Cells are not reduced: the same crystal in two different supercells has two hashes, on purpose, since
the labels (total energy, stress) differ.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms
from pymatgen.core import Lattice, Structure

LATTICE_DECIMALS = 4
FRAC_DECIMALS = 5


def to_structure(obj: Atoms | Structure | dict) -> Structure:
    """A pymatgen ``Structure`` from ASE ``Atoms``, a ``Structure`` or its dict."""
    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, dict):
        return Structure.from_dict(obj)
    if isinstance(obj, Atoms):
        if not obj.pbc.all():
            raise ValueError("almat handles periodic cells only (pbc must be True along a, b and c)")
        return Structure(
            Lattice(np.array(obj.cell)),
            obj.get_chemical_symbols(),
            obj.get_positions(),
            coords_are_cartesian=True,
        )
    raise TypeError(f"cannot make a Structure from {type(obj).__name__}")


def to_atoms(obj: Atoms | Structure | dict) -> Atoms:
    """ASE ``Atoms`` (periodic) from a ``Structure``, its dict, or ``Atoms`` (copied)."""
    if isinstance(obj, Atoms):
        return obj.copy()
    structure = to_structure(obj)
    if not structure.is_ordered:
        raise ValueError("cannot make Atoms from a disordered structure; enumerate it first")
    return Atoms(
        symbols=[site.specie.symbol for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )


def chemsys_of(elements) -> str:
    """Chemical system string, elements sorted alphabetically: ``Cl-Li-P-S``."""
    return "-".join(sorted(set(elements)))


def structure_hash(obj: Atoms | Structure | dict) -> str:
    """Hash of a configuration, stable under site permutation and float noise (see module doc)."""
    atoms = to_atoms(obj)
    cell = np.round(np.array(atoms.cell), LATTICE_DECIMALS) + 0.0  # + 0.0 folds -0.0
    frac = atoms.get_scaled_positions(wrap=True)
    frac = np.round(frac, FRAC_DECIMALS) % 1.0
    frac = np.round(frac, FRAC_DECIMALS) + 0.0
    symbols = atoms.get_chemical_symbols()
    sites = sorted(zip(symbols, map(tuple, frac.tolist())))
    h = hashlib.sha256()
    h.update(np.array2string(cell.ravel(), precision=LATTICE_DECIMALS, separator=",").encode())
    for symbol, coords in sites:
        h.update(f"{symbol}:{coords[0]:.{FRAC_DECIMALS}f},{coords[1]:.{FRAC_DECIMALS}f},"
                 f"{coords[2]:.{FRAC_DECIMALS}f};".encode())
    return h.hexdigest()[:24]
