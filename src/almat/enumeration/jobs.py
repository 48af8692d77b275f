"""``EnumerateMaker``: a jobflow job that enumerates a disordered structure into ``StructureDoc``s."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jobflow import Maker
from pymatgen.core import Structure

from almat.enumeration.core import enumerate_derivatives, set_occupancy
from almat.schemas import StructureDoc, StructureSource
from almat.stores import current_db, store_job

logger = logging.getLogger(__name__)

__all__ = ["EnumerateMaker", "record_structures"]


def record_structures(docs: list[StructureDoc]) -> int:
    """Upsert structure docs into the campaign collections of the running job's store (0 outside a run)."""
    db = current_db()
    if db is None:
        return 0
    try:
        return db.upsert("structures", docs)
    finally:
        db.close()


@dataclass
class EnumerateMaker(Maker):
    """Enumerate ordered derivatives of a partially occupied structure (see ``enumerate_derivatives``).

    Parameters
    ----------
    occupancy
        Occupancies to set before enumerating, e.g. ``{"Li+": 0.5}`` (``set_occupancy``).
    primitive
        Reduce to the primitive cell (after setting the occupancies) before enumerating.
    other fields
        As in ``enumerate_derivatives``.
    """

    name: str = "enumerate"
    occupancy: dict[str, float] = field(default_factory=dict)
    primitive: bool = False
    min_cell_size: int = 1
    max_cell_size: int = 1
    symm_prec: float = 0.1
    refine_structure: bool = False
    max_disordered_sites: int | None = None
    n_structures: int = 100
    sort_criteria: str | None = "ewald"
    backend: str = "auto"
    max_candidates: int = 20000
    max_labelings: float = 5e6

    def prepare(self, structure: Structure) -> Structure:
        """The parent structure as enumerated: occupancies set, reduced to primitive if asked."""
        for species, fraction in self.occupancy.items():
            structure = set_occupancy(structure, species, fraction)
        if self.primitive:
            structure = structure.get_primitive_structure(tolerance=self.symm_prec * 2.5)
        return structure

    def enumerate(
        self, structure: Structure, campaign: str | None = None, iteration: int | None = -1
    ) -> list[StructureDoc]:
        """The enumeration itself, outside jobflow: ``StructureDoc``s with source ``enumerated``."""
        parent = self.prepare(structure)
        results = enumerate_derivatives(
            parent,
            min_cell_size=self.min_cell_size,
            max_cell_size=self.max_cell_size,
            symm_prec=self.symm_prec,
            refine_structure=self.refine_structure,
            max_disordered_sites=self.max_disordered_sites,
            n_structures=self.n_structures,
            sort_criteria=self.sort_criteria,
            backend=self.backend,
            max_candidates=self.max_candidates,
            max_labelings=self.max_labelings,
        )
        parent_formula = parent.composition.formula
        docs = []
        for r in results:
            docs.append(StructureDoc(
                structure=r.structure,
                source=StructureSource.enumerated,
                campaign=campaign,
                iteration=iteration,
                metadata={
                    "ewald_energy": r.ewald_energy,
                    "ewald_energy_per_atom": None if r.ewald_energy is None else r.ewald_energy / len(r.structure),
                    "rank": r.rank,
                    "cell_size": r.cell_size,
                    "backend": r.backend,
                    "parent_formula": parent_formula,
                    "occupancy": dict(self.occupancy),
                },
            ))
        return docs

    @store_job
    def make(
        self, structure: Structure, campaign: str | None = None, iteration: int | None = -1
    ) -> list[StructureDoc]:
        """Enumerate ``structure``; with a campaign name, also upsert the docs into its structures."""
        docs = self.enumerate(structure, campaign=campaign, iteration=iteration)
        if campaign is not None:
            n = record_structures(docs)
            logger.info("recorded %d enumerated structures for campaign %s", n, campaign)
        return docs
