"""Pre-relaxation of start structures with an ASE-calculator oracle (xTB, EMT, CP2K through ASE, ...).

The VASP counterpart is ``almat.oracle.vasp.VaspRelaxFlowMaker`` (atomate2 ``RelaxMaker`` + MPRelaxSet).
Both record the relaxed structure (source ``relaxed``) and turn the relaxation trajectory into labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from jobflow import CURRENT_JOB, Maker
from pydantic import BaseModel, Field
from pymatgen.core import Structure

from almat.oracle.calculators import CalculatorSpec
from almat.oracle.jobs import label_with_calculator, record_labels
from almat.schemas import LabelDoc, StructureDoc, StructureSource, to_atoms, to_structure
from almat.stores import store_job

logger = logging.getLogger(__name__)


class RelaxDoc(BaseModel):
    """Output of a relaxation: the relaxed structure and the labels taken along the way."""

    structure: Structure
    converged: bool
    n_steps: int
    energy: float | None = None
    labels: list[LabelDoc] = Field(default_factory=list)
    start_index: int | None = None


@dataclass
class AseRelaxMaker(Maker):
    """Relax positions (and the cell, with ``relax_cell``) with BFGS and the oracle's calculator.

    Every ``trajectory_stride``-th step and the final one are labelled by the same calculator: each
    relaxation also feeds the training data. A relaxation that does not reach ``fmax`` within
    ``steps`` keeps its last structure (``converged`` False) rather than failing the campaign.
    """

    name: str = "relax"
    calculator: CalculatorSpec = field(default_factory=lambda: CalculatorSpec("ase.calculators.emt", "EMT"))
    fmax: float = 0.05
    steps: int = 200
    relax_cell: bool = True
    trajectory_stride: int = 10

    @store_job(output_schema=RelaxDoc)
    def make(self, structure: StructureDoc | Structure, campaign: str | None = None,
             iteration: int | None = -1, start_index: int | None = None) -> RelaxDoc:
        start = structure.structure if isinstance(structure, StructureDoc) else to_structure(structure)
        atoms = to_atoms(start)
        atoms.calc = self.calculator.load()
        frames: list = []
        target = FrechetCellFilter(atoms) if self.relax_cell else atoms
        opt = BFGS(target, logfile=None)
        opt.attach(lambda: frames.append(atoms.copy()), interval=max(self.trajectory_stride, 1))
        t0 = time.perf_counter()
        converged = bool(opt.run(fmax=self.fmax, steps=self.steps))
        n_steps = int(opt.get_number_of_steps())
        relaxed = to_structure(atoms)
        if not frames or not np.allclose(frames[-1].positions, atoms.positions):
            frames.append(atoms.copy())
        job_uuid = CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None
        labels = [
            label_with_calculator(to_structure(f), self.calculator, source=StructureSource.relaxed,
                                  campaign=campaign, iteration=iteration, job_uuid=job_uuid)
            for f in frames
        ]
        parent = StructureDoc(structure=start, source=StructureSource.init, campaign=campaign, iteration=iteration)
        relaxed_doc = StructureDoc(
            structure=relaxed, source=StructureSource.relaxed, campaign=campaign, iteration=iteration,
            parent=parent.structure_hash,
            metadata={"converged": converged, "n_steps": n_steps, "start_index": start_index,
                      "wall_time": time.perf_counter() - t0},
        )
        record_labels(labels, [parent, relaxed_doc])
        energy = labels[-1].energy if labels and labels[-1].ok else None
        logger.info("relaxed %s in %d steps (%s), E = %s eV", relaxed.composition.reduced_formula, n_steps,
                    "converged" if converged else f"not converged to fmax {self.fmax}", energy)
        return RelaxDoc(structure=relaxed, converged=converged, n_steps=n_steps, energy=energy, labels=labels,
                        start_index=start_index)
