"""The oracle's own MD with CP2K through atomate2 (``initial.method: oracle-md`` with ``oracle: {kind: cp2k}``): a
flow [atomate2 CP2K ``MDMaker``, parse job], the CP2K counterpart of ``almat.oracle.md.AseOracleMdMaker``.

NVT at ``temperature`` for ``steps`` steps of ``timestep_fs`` (CSVR thermostat, time constant ``timecon_fs``; CP2K
draws the start velocities at ``temperature`` from its ``GLOBAL/SEED``, here ``1 + seed + 7919 * start_index``), at the
oracle's level of theory. The parse job reads the trajectory back from CP2K's files (``read_cp2k_frames``): every
step computed the energy, forces and stress, so the kept frames come out labelled, with the *static* oracle's
fingerprint. Frames are kept every ``stride`` steps (step 0 included), then ``n_frames`` of them by
``almat.oracle.md.subsample`` (``stride`` or ``fps``), as the ASE oracle MD does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from jobflow import Flow, Maker, job

from almat.oracle.atomate2 import settings_hash
from almat.oracle.cp2k import cp2k_level_of_theory, cp2k_motion_generator, motion_flow
from almat.oracle.cp2k_relax import TrajectoryRun
from almat.oracle.jobs import record_labels
from almat.oracle.md import subsample
from almat.schemas import LabelDoc, StructureSource, to_atoms

logger = logging.getLogger(__name__)


def cp2k_md_maker(settings: dict[str, Any] | None = None, temperature: float = 600.0, steps: int = 200,
                  timestep_fs: float = 2.0, timecon_fs: float = 50.0):
    """atomate2's CP2K ``MDMaker`` at the level of theory of ``settings`` (``oracle.cp2k``): NVT, CSVR thermostat.
    (pymatgen writes the thermostat ``TYPE`` as a bare string CP2K's input writer cannot print: it is set again
    through ``override_default_params``.)"""
    from atomate2.cp2k.jobs.core import MDMaker
    from atomate2.cp2k.sets.core import MDSetGenerator

    settings = dict(settings or {})
    overrides = dict(settings.pop("override_default_params", None) or {})
    overrides["MOTION"] = {"MD": {"THERMOSTAT": {"TYPE": "CSVR", "CSVR": {"TIMECON": float(timecon_fs)}}}}
    motion = {"ensemble": "NVT", "temperature": float(temperature), "timestep": float(timestep_fs),
              "nsteps": int(steps), "thermostat": "CSVR"}
    generator = cp2k_motion_generator(MDSetGenerator, settings, motion, override_default_params=overrides)
    maker = MDMaker(input_set_generator=generator)
    # atomate2 0.1.5's trajectory object fails on CP2K's MD outputs (6 frame properties for 7 frames): the parse
    # job reads the trajectory files itself
    maker.task_document_kwargs["store_trajectory"] = False
    maker.run_cp2k_kwargs["custodian_kwargs"] = {"polling_time_step": 1}
    maker.stop_children_kwargs["handle_unsuccessful"] = False  # the parse job says what went wrong
    return maker


def _with_seed(maker, seed: int):
    """A copy of an atomate2 CP2K MD maker whose run draws its start velocities from ``seed``."""
    user = dict(maker.input_set_generator.user_input_settings)
    overrides = dict(user.get("override_default_params") or {})
    overrides["GLOBAL"] = {**dict(overrides.get("GLOBAL") or {}), "SEED": int(seed)}
    return replace(maker, input_set_generator=replace(maker.input_set_generator, user_input_settings={
        **user, "override_default_params": overrides}))


@job
def cp2k_md_labels(task: Any, structure: Any, settings: dict[str, Any], stride: int = 10, n_frames: int = 12,
                   method: str = "stride", campaign: str | None = None, iteration: int | None = -1,
                   job_uuid: str | None = None) -> list[LabelDoc]:
    """Parse job: the kept, labelled frames of an atomate2 CP2K MD (one failed label when there is none: the CP2K
    job failed, gave no frame or an SCF did not converge), recorded with the start structure."""
    run = TrajectoryRun.read(task, structure, settings, StructureSource.md, "MD", campaign, iteration, job_uuid,
                             every=stride)
    start, frames = run.start, run.frames
    labels = run.labels(subsample([to_atoms(f["structure"]) for f in frames], n_frames, method) if frames else [])
    record_labels(labels, [start])
    logger.info("CP2K MD of %s: %d frames every %d steps, %d labelled frames kept (%s)",
                start.structure.composition.reduced_formula, len(frames), stride, len(labels), method)
    return labels


@dataclass
class Cp2kMdMaker(Maker):
    """The CP2K oracle's own MD from one start structure (see ``cp2k_md_maker``): its frames every ``stride`` steps,
    then ``n_frames`` of them (``subsample``: ``stride`` or ``fps``), each labelled by the MD step that computed it.
    ``level_of_theory``: the static oracle's settings (``cp2k_static_settings(oracle.cp2k)``), else derived from
    ``cp2k_maker``'s input set."""

    name: str = "cp2k oracle md"
    cp2k_maker: Any = field(default_factory=cp2k_md_maker)
    stride: int = 10
    n_frames: int = 12
    subsample: str = "stride"
    seed: int = 0
    level_of_theory: dict[str, Any] | None = None

    settings = property(lambda self: self.level_of_theory or cp2k_level_of_theory(self.cp2k_maker.input_set_generator))
    oracle_name = property(lambda self: f"cp2k:{self.settings['input_set']}")
    fingerprint = property(lambda self: settings_hash(self.settings))

    def make(self, structure: Any, campaign: str | None = None, iteration: int | None = -1,
             start_index: int = 0) -> Flow:
        settings = self.settings
        code_maker = _with_seed(self.cp2k_maker, 1 + self.seed + 7919 * start_index)  # CP2K's seed is > 0
        return motion_flow(code_maker, structure, self.name, lambda j: cp2k_md_labels(
            j.output, structure, settings, self.stride, self.n_frames, self.subsample, campaign=campaign,
            iteration=iteration, job_uuid=j.uuid))
