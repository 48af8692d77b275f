"""The oracle: label configurations with a reference calculator.

``AseOracleMaker`` wraps any ASE calculator given as an importable ``CalculatorSpec``. One job labels
one structure and returns a ``LabelDoc``. Whatever goes wrong in the calculation (an exception, NaN or
infinite energies, forces or stress) becomes a *failed* ``LabelDoc`` carrying the reason, so the
campaign goes on.

Labels are never paid for twice: before calling the calculator, the job looks for an ok label of the
same configuration (``structure_hash``) by the same oracle settings (``oracle_fingerprint``) in the
labels collection, whatever its campaign. When there is one, the job writes a label for its own
campaign with the copied results (forces permuted to this structure's site order), ``wall_time`` 0,
the original's ``run_dir``, and ``reused_from`` = the original label's id; the oracle is not called.
A different oracle fingerprint always labels again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.calculators.calculator import PropertyNotImplementedError
from jobflow import CURRENT_JOB, Maker
from pymatgen.core import Structure

from almat.oracle.calculators import CalculatorSpec
from almat.schemas import LabelDoc, LabelStatus, StructureDoc, StructureSource, to_atoms, to_structure
from almat.stores import CampaignDB, current_db, store_job

logger = logging.getLogger(__name__)


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


def label_from_results(frame, spec: CalculatorSpec, **label_fields: Any) -> LabelDoc:
    """The label of a frame that the oracle has already computed (``frame.info["oracle_results"]``: energy,
    forces, maybe stress, e.g. a step of the oracle's own MD); a failed label when a value is not finite."""
    results = frame.info["oracle_results"]
    common = dict(structure=to_structure(frame), oracle=spec.name, oracle_fingerprint=spec.fingerprint,
                  oracle_settings=spec.settings(), **label_fields)
    stress = results.get("stress")
    bad = [name for name in ("energy", "forces", "stress") if results.get(name) is not None
           and not _finite(results[name])]
    if bad:
        return LabelDoc(status=LabelStatus.failed, reason=f"non-finite {', '.join(bad)} from {spec.path}", **common)
    return LabelDoc(status=LabelStatus.ok, energy=float(results["energy"]),
                    forces=np.asarray(results["forces"], dtype=float).tolist(),
                    stress=None if stress is None else np.asarray(stress, dtype=float).tolist(), **common)


def record_labels(labels: list[LabelDoc], structures: list[StructureDoc] | None = None,
                  db: CampaignDB | None = None) -> None:
    """Write labels (and their structures) to the campaign collections (default: the running job's store)."""
    own = db is None
    db = db if db is not None else current_db()
    if db is None:
        return
    try:
        if structures:
            db.upsert("structures", structures)
        db.upsert("labels", labels)
    finally:
        if own:
            db.close()


def site_permutation(new: Structure, old: Structure, tol: float = 1e-3) -> np.ndarray | None:
    """``perm`` with new site i == old site perm[i] (same species, within ``tol`` Å); None if no match."""
    if len(new) != len(old) or not np.allclose(new.lattice.matrix, old.lattice.matrix, atol=1e-3):
        return None
    d = new.frac_coords[:, None, :] - old.frac_coords[None, :, :]
    d -= np.round(d)
    dist = np.linalg.norm(d @ new.lattice.matrix, axis=-1)
    same = np.array([s.species_string for s in new])[:, None] == np.array([s.species_string for s in old])[None, :]
    dist = np.where(same, dist, np.inf)
    perm = dist.argmin(axis=1)
    if not np.all(dist[np.arange(len(new)), perm] < tol) or len(set(perm.tolist())) != len(new):
        return None
    return perm


def find_reusable_label(db: CampaignDB, structure_hash: str, oracle_fingerprint: str) -> LabelDoc | None:
    """An ok label of this configuration by this oracle (any campaign): the original one if possible."""
    found = db.labels.query({"structure_hash": structure_hash, "oracle_fingerprint": oracle_fingerprint, "status": "ok"})
    docs = [LabelDoc.from_store(d) for d in found]
    return min(docs, key=lambda d: (d.reused_from is not None, d.created_at.replace(tzinfo=None)), default=None)


def reuse_label(db: CampaignDB, structure: StructureDoc, spec: CalculatorSpec, **label_fields: Any) -> LabelDoc | None:
    """A label for ``structure`` copied from an earlier ok label by the same oracle settings, if any.

    The earlier label may belong to any campaign. When it is this campaign's own label (same label id,
    e.g. a rerun of the job) it is returned unchanged.
    """
    previous = find_reusable_label(db, structure.structure_hash, spec.fingerprint)
    if previous is None:
        return None
    fresh_id = LabelDoc(structure=structure.structure, structure_hash=structure.structure_hash, oracle=spec.name,
                        oracle_fingerprint=spec.fingerprint, status=LabelStatus.failed, reason="probe",
                        campaign=label_fields.get("campaign")).label_id
    if previous.label_id == fresh_id:
        return previous
    perm = site_permutation(structure.structure, previous.structure)
    if perm is None:
        logger.warning("label %s has the same structure hash but its sites do not match; labelling again",
                       previous.label_id)
        return None
    return LabelDoc(
        structure=structure.structure,
        structure_hash=structure.structure_hash,
        oracle=spec.name,
        oracle_fingerprint=spec.fingerprint,
        oracle_settings=previous.oracle_settings,
        status=LabelStatus.ok,
        energy=previous.energy,
        forces=np.asarray(previous.forces)[perm].tolist(),
        stress=previous.stress,
        wall_time=0.0,
        run_dir=previous.run_dir,
        reused_from=previous.reused_from or previous.label_id,
        **label_fields,
    )


#: label fields that belong to this use of a configuration, not to the oracle's answer (NFT chunk weights)
_OWN_FIELDS = ("force_weights", "energy_weight")


def label_or_reuse(doc: StructureDoc, calculator: CalculatorSpec, fields: dict[str, Any],
                   compute_stress: bool = True, reuse: bool = True) -> LabelDoc:
    """Label one configuration (inside a job): copy an identical earlier label of the same oracle
    settings when ``reuse`` (no oracle call), else call the calculator; record the label and the
    structure in the store. ``fields`` go onto the label (campaign, iteration, source, ...)."""
    db = current_db()
    try:
        label = None
        if db is not None and reuse:
            label = reuse_label(db, doc, calculator, **fields)
            if label is not None:
                logger.info("reused label %s for %s (no oracle call)", label.reused_from or label.label_id,
                            doc.formula)
                own = {k: fields[k] for k in _OWN_FIELDS if k in fields}
                if any(getattr(label, k) != v for k, v in own.items()):
                    label = label.model_copy(update=own)
        if label is None:
            label = label_with_calculator(doc.structure, calculator, compute_stress=compute_stress,
                                          run_dir=os.getcwd(), **fields)
        if db is not None:
            record_labels([label], [doc], db=db)
    finally:
        if db is not None:
            db.close()
    if not label.ok:
        logger.info("label failed (%s); the campaign goes on", label.reason)
    return label


def as_structure_doc(structure: StructureDoc | Structure | dict, campaign, iteration) -> StructureDoc:
    """A ``StructureDoc`` from itself, its dict, or a structure (source ``init``, of this campaign and iteration)."""
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
    reuse_labels
        Copy an existing ok label of the same configuration and oracle settings (any campaign)
        instead of calling the calculator again.
    """

    name: str = "oracle"
    calculator: CalculatorSpec = field(default_factory=lambda: CalculatorSpec("ase.calculators.emt", "EMT"))
    compute_stress: bool = True
    reuse_labels: bool = True

    @store_job(output_schema=LabelDoc)
    def make(self, structure: StructureDoc | Structure, campaign: str | None = None, iteration: int | None = None,
             force_weights: list[float] | None = None) -> LabelDoc:
        """Label ``structure``; with ``force_weights`` (per atom, e.g. an NFT chunk's 1 on its central
        atoms and 0 elsewhere) the label carries them, an energy weight 0, and no stress."""
        doc = as_structure_doc(structure, campaign, iteration)
        fields = dict(source=doc.source, campaign=campaign if campaign is not None else doc.campaign,
                      iteration=iteration if iteration is not None else doc.iteration,
                      job_uuid=CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None)
        if force_weights is not None:
            if len(force_weights) != len(doc.structure):
                raise ValueError(f"{len(force_weights)} force weights for a structure of {len(doc.structure)} atoms")
            fields.update(force_weights=[float(w) for w in force_weights], energy_weight=0.0)
        doc = doc.model_copy(update={"campaign": fields["campaign"], "iteration": fields["iteration"]})
        return label_or_reuse(doc, self.calculator, fields, compute_stress=self.compute_stress and force_weights is None,
                              reuse=self.reuse_labels)

    @property
    def oracle_name(self) -> str:
        return self.calculator.name

    @property
    def fingerprint(self) -> str:
        return self.calculator.fingerprint
