"""Test helpers for tests/query: a call-counting EMT calculator and small EMT-labelled data sets."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from almat.oracle import CalculatorSpec, label_with_calculator
from almat.schemas import StructureSource, to_structure


class CountingEMT(EMT):
    """EMT that counts how many times it really calculates (class-wide counter)."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


COUNTING_SPEC = CalculatorSpec("almat_query_testutils", "CountingEMT")
EMT_SPEC = CalculatorSpec("ase.calculators.emt", "EMT")
#: EMT with another setting: another level of theory as far as fingerprints go
EMT_ASAP_SPEC = CalculatorSpec("ase.calculators.emt", "EMT", {"asap_cutoff": True})


def cu_structures(n: int, seed: int = 0, repeat=(2, 1, 1)):
    """``n`` rattled fcc Cu cells (4 atoms each for the default repeat)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)[: 4 * int(np.prod(repeat))]
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(to_structure(atoms))
    return out


def cuau_structures(n: int, seed: int = 1):
    """``n`` rattled CuAu (L1_0-like) 4-atom cells."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.8, cubic=True)
        atoms.symbols[[1, 2]] = "Au"
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(to_structure(atoms))
    return out


def label_all(structures, spec=EMT_SPEC, **fields):
    return [label_with_calculator(s, spec, **fields) for s in structures]


def source_cycle(i: int) -> StructureSource:
    return [StructureSource.init, StructureSource.perturbed, StructureSource.md][i % 3]
