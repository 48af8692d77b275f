"""Plain functions behind ``almat enumerate FILE.cif --occupancy Li+=0.5 --primitive [--no-sort] -o DIR/``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pymatgen.core import Structure

from almat.enumeration.core import enumerate_derivatives, set_occupancy, write_structures

logger = logging.getLogger(__name__)

__all__ = ["enumerate_file", "parse_occupancy", "read_structure"]


def parse_occupancy(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``["Li+=0.5", "Na=0.25"]`` -> ``{"Li+": 0.5, "Na": 0.25}`` (a clear ValueError otherwise)."""
    out: dict[str, float] = {}
    for item in items:
        species, sep, value = item.partition("=")
        if not sep or not species.strip():
            raise ValueError(f"occupancy must look like SPECIES=FRACTION (e.g. Li+=0.5), got {item!r}")
        try:
            out[species.strip()] = float(value)
        except ValueError:
            raise ValueError(f"occupancy fraction is not a number in {item!r}") from None
    return out


def read_structure(path: str | Path) -> Structure:
    """Read a CIF (or any format pymatgen knows); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CIF parser chatter (rounded occupancies etc.)
            structure = Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parser failure becomes one clear message
        raise ValueError(f"cannot read a structure from {path}: {type(exc).__name__}: {exc}") from None
    if len(structure) == 0:
        raise ValueError(f"{path}: no sites in the structure")
    return structure


def enumerate_file(
    path: str | Path,
    occupancy: dict[str, float] | None = None,
    primitive: bool = True,
    max_structures: int = 100,
    out_dir: str | Path = "enumerated",
    fmt: str = "cif",
    backend: str = "auto",
    max_cell_size: int = 1,
    sort: bool = True,
) -> list[Path]:
    """Read ``path``, set occupancies, reduce to primitive, enumerate, and write the structures.

    Returns the written files, lowest Ewald energy first (``0000.cif`` is the lowest); with
    ``sort=False`` in enumeration order, without Ewald ranking (charged targets allowed).
    """
    structure = read_structure(path)
    for species, fraction in (occupancy or {}).items():
        structure = set_occupancy(structure, species, fraction)
    if primitive:
        structure = structure.get_primitive_structure()
    results = enumerate_derivatives(
        structure, max_cell_size=max_cell_size, n_structures=max_structures, backend=backend,
        sort_criteria="ewald" if sort else None,
    )
    paths = write_structures([r.structure for r in results], out_dir, fmt=fmt)
    logger.info("wrote %d structures to %s", len(paths), out_dir)
    return paths
