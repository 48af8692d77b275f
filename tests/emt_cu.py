"""Small EMT-labelled Cu data for the tests (shared by conftest's fixtures and tests that need other sizes)."""

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT


def emt_cu_atoms(n: int, seed: int = 0, repeat=(2, 2, 2), rattle=0.06, cubic=False):
    """``n`` rattled, strained fcc Cu cells labelled by EMT (SinglePointCalculator results)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=cubic).repeat(repeat)
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.normal(0, rattle, size=atoms.positions.shape)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        out.append(atoms)
    return out
