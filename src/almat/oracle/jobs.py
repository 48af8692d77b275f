"""The oracle: label configurations with a reference calculator.

``AseOracleMaker`` wraps any ASE calculator given as an importable ``CalculatorSpec``. One job labels
one structure and returns a ``LabelDoc``. Whatever goes wrong in the calculation (an exception, NaN or
infinite energies, forces or stress) becomes a *failed* ``LabelDoc`` carrying the reason, so the
campaign goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.calculators.calculator import PropertyNotImplementedError
from jobflow import CURRENT_JOB, Maker
from pymatgen.core import Structure

from almat.oracle.calculators import CalculatorSpec
from almat.schemas import LabelDoc, LabelStatus, StructureDoc, StructureSource, to_atoms
from almat.stores import current_db, store_job

logger = logging.getLogger(__name__)

__all__ = ["AseOracleMaker", "label_with_calculator", "record_labels"]


def _finite(value: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, dtype=float))))


def label_with_calculator(
    structure: Structure,
    spec: CalculatorSpec,
    calculator=None,
    compute_stress: bool = True,
    **label_fields: Any,
) -> LabelDoc:
    """Run the calculator on one structure; any failure becomes a failed ``LabelDoc``."""
    common = dict(
        structure=structure,
        oracle=spec.name,
        oracle_fingerprint=spec.fingerprint,
        oracle_settings=spec.settings(),
        **label_fields,
    )
    start = time.perf_counter()
    try:
        atoms = to_atoms(structure)
        atoms.calc = calculator if calculator is not None else spec.load()
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
        stress = None
        if compute_stress:
            try:
                stress = np.asarray(atoms.get_stress(voigt=False), dtype=float)
            except PropertyNotImplementedError:
                stress = None
        bad = [name for name, v in (("energy", energy), ("forces", forces), ("stress", stress))
               if v is not None and not _finite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {', '.join(bad)} from {spec.path}")
    except Exception as exc:  # noqa: BLE001 - the oracle must never stop the campaign
        reason = f"{type(exc).__name__}: {exc}".strip()
        logger.warning("oracle %s failed on %s: %s", spec.path, structure.composition.reduced_formula, reason)
        return LabelDoc(status=LabelStatus.failed, reason=reason[:2000],
                        wall_time=time.perf_counter() - start, **common)
    return LabelDoc(
        status=LabelStatus.ok,
        energy=energy,
        forces=forces.tolist(),
        stress=None if stress is None else stress.tolist(),
        wall_time=time.perf_counter() - start,
        **common,
    )


def record_labels(labels: list[LabelDoc], structures: list[StructureDoc] | None = None) -> None:
    """Write labels (and their structures) to the campaign collections of the running job's store."""
    db = current_db()
    if db is None:
        return
    try:
        if structures:
            db.upsert("structures", structures)
        db.upsert("labels", labels)
    finally:
        db.close()


def _as_structure_doc(structure: StructureDoc | Structure | dict, campaign, iteration) -> StructureDoc:
    if isinstance(structure, StructureDoc):
        return structure
    if isinstance(structure, dict) and "structure" in structure:
        return StructureDoc.model_validate(structure)
    s = structure if isinstance(structure, Structure) else Structure.from_dict(structure)
    return StructureDoc(structure=s, source=StructureSource.init, campaign=campaign, iteration=iteration)


@dataclass
class AseOracleMaker(Maker):
    """Label one structure with an ASE calculator.

    Parameters
    ----------
    name
        Job name.
    calculator
        The calculator, as an importable spec (module, class, kwargs).
    compute_stress
        Ask the calculator for the stress too (skipped silently where it has none).
    """

    name: str = "oracle"
    calculator: CalculatorSpec = field(default_factory=lambda: CalculatorSpec("ase.calculators.emt", "EMT"))
    compute_stress: bool = True

    @store_job(output_schema=LabelDoc)
    def make(
        self,
        structure: StructureDoc | Structure,
        campaign: str | None = None,
        iteration: int | None = None,
    ) -> LabelDoc:
        doc = _as_structure_doc(structure, campaign, iteration)
        campaign = campaign if campaign is not None else doc.campaign
        iteration = iteration if iteration is not None else doc.iteration
        label = label_with_calculator(
            doc.structure,
            self.calculator,
            compute_stress=self.compute_stress,
            source=doc.source,
            campaign=campaign,
            iteration=iteration,
            job_uuid=CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None,
        )
        doc = doc.model_copy(update={"campaign": campaign, "iteration": iteration})
        record_labels([label], [doc])
        if not label.ok:
            logger.info("label failed (%s); the campaign goes on", label.reason)
        return label

    @property
    def oracle_name(self) -> str:
        return self.calculator.name

    @property
    def fingerprint(self) -> str:
        return self.calculator.fingerprint
