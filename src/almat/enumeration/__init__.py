"""Enumeration of ordered derivative structures from partially occupied ones (icet or enumlib)."""

from almat.enumeration.core import (
    EnumeratedStructure,
    EnumerationError,
    enumerate_derivatives,
    enumlib_available,
    ewald_energy,
    realisable_cell_sizes,
    set_occupancy,
    write_structures,
)

__all__ = [
    "EnumeratedStructure",
    "EnumerateMaker",
    "EnumerationError",
    "enumerate_derivatives",
    "enumlib_available",
    "ewald_energy",
    "realisable_cell_sizes",
    "set_occupancy",
    "write_structures",
]


def __getattr__(name):  # the Maker pulls in jobflow and the stores; import it on demand
    if name == "EnumerateMaker":
        from almat.enumeration.jobs import EnumerateMaker

        return EnumerateMaker
    raise AttributeError(name)
