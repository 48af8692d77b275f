"""Pre-relaxation with CP2K through atomate2 (``prerelax`` with ``oracle: {kind: cp2k}``): a flow [atomate2 CP2K
``RelaxMaker`` (positions) or ``CellOptMaker`` (positions and cell, ``relax_cell``), parse job].

The relaxation runs at the oracle's level of theory (``oracle.cp2k``: basis and potential, cutoffs, k-points,
mixing, ...), with ``MAX_ITER`` = ``prerelax.steps`` and ``MAX_FORCE`` = ``prerelax.fmax`` converted to Hartree/Bohr
(CP2K compares the largest force *component*; ``RMS_FORCE`` is set the same and the step criteria ``MAX_DR`` /
``RMS_DR`` are loosened so that, as with ASE's ``fmax``, the forces decide). Custodian's
``UnconvergedRelaxationErrorHandler`` (which restarts a relaxation that reached ``MAX_ITER``) and atomate2's output
validator (which fails it) are left out: a relaxation that reaches its step limit keeps its last structure
(``converged`` False), as the ASE and VASP relaxations do.

The parse job reads the relaxation's trajectory back from CP2K's files (``read_cp2k_frames``) and labels every
``trajectory_stride``-th optimisation step and the last one with the *static* oracle's fingerprint (one level of
theory, one oracle: ``cp2k_level_of_theory``). Its output is a ``RelaxDoc``, as ``AseRelaxMaker``'s.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.units import Bohr, Hartree
from jobflow import Flow, Maker, job
from monty.json import jsanitize

from almat.oracle.atomate2 import as_task_dict, settings_hash
from almat.oracle.cp2k import (cp2k_actual, cp2k_level_of_theory, cp2k_motion_generator, cp2k_output_text,
                               motion_flow, read_cp2k_frames)
from almat.oracle.jobs import as_structure_doc, record_labels
from almat.oracle.relax import RelaxDoc
from almat.schemas import LabelDoc, LabelStatus, StructureDoc, StructureSource

logger = logging.getLogger(__name__)

#: CP2K's MAX_DR / RMS_DR (Bohr) for a relaxation that the forces decide
LOOSE_STEP_CRITERION = 1.0


def custodian_without_relax_restarts() -> dict[str, Any]:
    """``run_cp2k_kwargs`` for a relaxation: atomate2's custodian handlers but the one that restarts an unconverged
    relaxation, no output validator (it fails an unconverged relaxation), custodian polling every second."""
    from atomate2.cp2k.run import run_cp2k
    from custodian.cp2k.handlers import UnconvergedRelaxationErrorHandler

    handlers = inspect.signature(run_cp2k).parameters["handlers"].default
    return {"handlers": [h for h in handlers if not isinstance(h, UnconvergedRelaxationErrorHandler)],
            "validators": [], "custodian_kwargs": {"polling_time_step": 1}}


def cp2k_relax_maker(settings: dict[str, Any] | None = None, steps: int = 200, fmax: float = 0.05,
                     relax_cell: bool = True):
    """atomate2's CP2K ``CellOptMaker`` (``relax_cell``) or ``RelaxMaker`` at the level of theory of ``settings``
    (``oracle.cp2k``: ``user_input_settings`` and ``kpoints``, as ``cp2k_static_maker`` takes them), at most
    ``steps`` optimisation steps, converged when no force component exceeds ``fmax`` (eV/Å)."""
    from atomate2.cp2k.jobs.core import CellOptMaker, RelaxMaker
    from atomate2.cp2k.sets.core import CellOptSetGenerator, RelaxSetGenerator

    force = fmax / (Hartree / Bohr)
    motion = {"max_iter": int(steps), "max_force": force, "rms_force": force,
              "max_drift": LOOSE_STEP_CRITERION, "rms_drift": LOOSE_STEP_CRITERION}
    generator = cp2k_motion_generator(CellOptSetGenerator if relax_cell else RelaxSetGenerator, settings or {}, motion)
    maker = (CellOptMaker if relax_cell else RelaxMaker)(input_set_generator=generator)
    maker.run_cp2k_kwargs.update(custodian_without_relax_restarts())
    maker.stop_children_kwargs["handle_unsuccessful"] = False  # the parse job says what went wrong
    return maker


def _label_steps(n: int, stride: int | None) -> list[int]:
    """Indices of the frames to label: 0, stride, 2·stride, ... and the last one (only the last: ``stride`` None)."""
    return [n - 1] if stride is None else sorted(set(range(0, n, max(int(stride), 1))) | {n - 1})


def frame_label(frame: dict[str, Any], failure: str | None, **fields: Any) -> LabelDoc:
    """The label of one trajectory frame (``read_cp2k_frames``): failed with ``failure`` or when a value is not
    finite."""
    values = [frame["energy"], frame["forces"]] + ([frame["stress"]] if frame["stress"] is not None else [])
    if failure is None and not all(np.all(np.isfinite(np.asarray(v, float))) for v in values):
        failure = f"non-finite energy, forces or stress at step {frame['step']} in {fields.get('run_dir')}"
    if failure:
        return LabelDoc(structure=frame["structure"], status=LabelStatus.failed, reason=failure, **fields)
    return LabelDoc(structure=frame["structure"], status=LabelStatus.ok, energy=float(frame["energy"]),
                    forces=np.asarray(frame["forces"]).tolist(),
                    stress=None if frame["stress"] is None else np.asarray(frame["stress"]).tolist(), **fields)


def trajectory_failure(task: Any, text: str, frames: list, what: str, job_uuid: str | None) -> str | None:
    """Why no frame of a CP2K run is a label (the job failed, no frame, an SCF that did not converge), else None."""
    if task is None:
        return (f"CP2K {what} job {job_uuid} failed: no task document (CP2K crashed or is not on PATH, custodian "
                "could not fix the run, or its output could not be parsed; see its folder and log)")
    if "SCF run NOT converged" in text:
        return f"SCF not converged (CP2K: 'SCF run NOT converged') during the {what} in {task.get('dir_name')}"
    if not frames:
        return f"no trajectory frame (positions and forces) in {task.get('dir_name')}"
    return None


@dataclass
class TrajectoryRun:
    """What a parse job reads of an atomate2 CP2K relaxation or MD: the start, the frames, CP2K's output, why it
    failed (None: it did not), and the fields every label of it carries."""

    start: StructureDoc
    folder: str | None
    frames: list[dict[str, Any]]
    text: str
    failure: str | None
    fields: dict[str, Any]

    @classmethod
    def read(cls, task: Any, structure: Any, settings: dict[str, Any], source: StructureSource, what: str,
             campaign: str | None, iteration: int | None, job_uuid: str | None, every: int = 1) -> "TrajectoryRun":
        """``every``: keep the frames of every ``every``-th step only (MD's stride)."""
        start = as_structure_doc(structure, campaign, iteration).model_copy(update={"campaign": campaign,
                                                                                   "iteration": iteration})
        t = as_task_dict(task)
        folder = t.get("dir_name") if t else None
        frames = [f for f in (read_cp2k_frames(folder, start.structure) if folder else []) if f["step"] % every == 0]
        text = cp2k_output_text(folder) if folder else ""
        oracle_settings = jsanitize(settings, strict=False)
        if t is not None:
            oracle_settings["actual"] = cp2k_actual(t["calcs_reversed"][0])
        fields = dict(source=source, oracle=f"cp2k:{settings['input_set']}", oracle_fingerprint=settings_hash(settings),
                      oracle_settings=oracle_settings, campaign=campaign, iteration=iteration, job_uuid=job_uuid,
                      run_dir=folder)
        return cls(start, folder, frames, text, trajectory_failure(t, text, frames, what, job_uuid), fields)

    def labels(self, keep: list[int]) -> list[LabelDoc]:
        """The labels of the frames ``keep``; one failed label (with the reason) when there is no frame."""
        if self.frames:
            return [frame_label(self.frames[i], self.failure, **self.fields) for i in keep]
        return [LabelDoc(structure=self.start.structure, status=LabelStatus.failed, reason=self.failure, **self.fields)]


@job
def cp2k_relax_labels(task: Any, structure: Any, settings: dict[str, Any], trajectory_stride: int | None = 10,
                      campaign: str | None = None, iteration: int | None = -1, start_index: int | None = None,
                      job_uuid: str | None = None) -> RelaxDoc:
    """Parse job: the ``RelaxDoc`` of an atomate2 CP2K relaxation (None: the CP2K job failed), its labels and the
    relaxed structure (source ``relaxed``, parent the start) recorded in the campaign collections."""
    run = TrajectoryRun.read(task, structure, settings, StructureSource.relaxed, "relaxation", campaign, iteration,
                             job_uuid)
    start, frames, text, folder = run.start, run.frames, run.text, run.folder
    labels = run.labels(_label_steps(len(frames), trajectory_stride))
    converged = "GEOMETRY OPTIMIZATION COMPLETED" in text
    relaxed = frames[-1]["structure"] if frames else start.structure
    n_steps = frames[-1]["step"] if frames else 0
    energy = labels[-1].energy if frames and labels[-1].ok else None
    relaxed_doc = StructureDoc(structure=relaxed, source=StructureSource.relaxed, campaign=campaign,
                               iteration=iteration, parent=start.structure_hash,
                               metadata={"converged": converged, "n_steps": n_steps, "start_index": start_index,
                                         "energy": energy, "run_dir": folder})
    record_labels(labels, [start, relaxed_doc])
    logger.info("CP2K relaxed %s in %d steps (%s), E = %s eV", relaxed.composition.reduced_formula, n_steps,
                "converged" if converged else "not converged", energy)
    return RelaxDoc(structure=relaxed, converged=converged, n_steps=n_steps, energy=energy, labels=labels,
                    start_index=start_index)


@dataclass
class Cp2kRelaxMaker(Maker):
    """Relax a structure with CP2K (atomate2 ``RelaxMaker``/``CellOptMaker``, see ``cp2k_relax_maker``) and label
    its trajectory with the static oracle's fingerprint; output a ``RelaxDoc``. ``level_of_theory``: the static
    oracle's settings (``cp2k_static_settings(oracle.cp2k)``), else derived from ``cp2k_maker``'s input set."""

    name: str = "cp2k relax"
    cp2k_maker: Any = field(default_factory=cp2k_relax_maker)
    trajectory_stride: int | None = 10
    level_of_theory: dict[str, Any] | None = None  # the static oracle's settings (None: from cp2k_maker's set)

    settings = property(lambda self: self.level_of_theory or cp2k_level_of_theory(self.cp2k_maker.input_set_generator))
    oracle_name = property(lambda self: f"cp2k:{self.settings['input_set']}")
    fingerprint = property(lambda self: settings_hash(self.settings))

    def make(self, structure: Any, campaign: str | None = None, iteration: int | None = -1,
             start_index: int | None = None) -> Flow:
        settings = self.settings
        return motion_flow(self.cp2k_maker, structure, self.name, lambda j: cp2k_relax_labels(
            j.output, structure, settings, self.trajectory_stride, campaign=campaign, iteration=iteration,
            start_index=start_index, job_uuid=j.uuid))
