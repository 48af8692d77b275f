"""Enumeration of ordered derivative structures from partially occupied ones (icet or enumlib)."""

from almat.enumeration.core import (
    EnumeratedStructure, EnumerationError, enumerate_derivatives, enumlib_available, ewald_energy, set_occupancy,
    write_structures,
)
from almat.enumeration.jobs import EnumerateMaker
