"""VASP through atomate2: relaxations of enumerated structures and static labels for active learning.

Details: ``docs/architecture.md``, module notes (almat/oracle/vasp.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.units import GPa
from jobflow import Flow, Maker, job
from monty.json import jsanitize
from pymatgen.core import Structure
from pymatgen.io.vasp.sets import MPRelaxSet, MPStaticSet, VaspInputSet

from almat.oracle.atomate2 import as_task_dict, code_flow, settings_hash, task_get, to_structure
from almat.oracle.jobs import as_structure_doc, record_labels
from almat.schemas import LabelDoc, LabelStatus, StructureDoc, StructureSource

logger = logging.getLogger(__name__)

__all__ = [
    "KBAR_TO_EV_PER_A3",
    "VaspRelaxFlowMaker",
    "VaspStaticOracleMaker",
    "labels_from_task",
    "mp_relax_maker",
    "mp_static_maker",
    "settings_from_task",
    "vasp_fingerprint",
    "vasp_settings",
    "vasp_stress_to_ase",
]

#: 1 kBar in eV/Å³
KBAR_TO_EV_PER_A3 = 0.1 * GPa


def vasp_stress_to_ase(stress_kbar) -> np.ndarray:
    """VASP stress (kBar, positive = compressive) -> ASE stress (eV/Å³, positive = tensile), 3x3."""
    return -np.asarray(stress_kbar, dtype=float).reshape(3, 3) * KBAR_TO_EV_PER_A3


# --------------------------------------------------------------------------------------------------
# settings and fingerprint


def _functional(incar: dict[str, Any], hubbard: dict[str, float] | None, potcar_functional: str = "PBE") -> str:
    gga = str(incar.get("GGA") or "--").strip().upper()  # "--": the functional of the POTCARs
    name = {"PE": "PBE", "PS": "PBEsol", "91": "PW91", "RP": "RPBE", "AM": "AM05", "--": potcar_functional}.get(gga, gga)
    if incar.get("METAGGA") and str(incar["METAGGA"]).lower() not in ("none", "--"):
        name = str(incar["METAGGA"]).upper()
    if incar.get("LHFCALC"):
        name = f"hybrid({name}, AEXX={incar.get('AEXX', 0.25)}, HFSCREEN={incar.get('HFSCREEN', 0)})"
    if hubbard and any(abs(u) > 1e-8 for u in hubbard.values()):
        name += "+U"
    return name


def vasp_settings(input_set: VaspInputSet) -> dict[str, Any]:
    """The level of theory of a pymatgen input set, independent of any structure."""
    config = input_set._config_dict  # noqa: SLF001 - pymatgen keeps the set's settings there
    incar = dict(config.get("INCAR", {}))
    try:
        incar.update(input_set.incar_updates or {})
    except Exception:  # noqa: BLE001 - some updates need a structure or previous run; config is enough
        pass
    incar.update(input_set.user_incar_settings or {})
    kpoints = dict(config.get("KPOINTS", {}))
    try:
        kpoints.update(input_set.kpoints_updates or {})
    except Exception:  # noqa: BLE001
        pass
    user_kpts = input_set.user_kpoints_settings
    if isinstance(user_kpts, dict):
        kpoints.update(user_kpts)
    potcar = dict(config.get("POTCAR", {}))
    potcar.update(input_set.user_potcar_settings or {})
    ldauu = incar.get("LDAUU") if incar.get("LDAU") else None
    settings = {
        "code": "vasp",
        "input_set": type(input_set).__name__,
        # +U is applied by the set's own rules (e.g. MP: transition metals in oxides/fluorides only);
        # the U values are part of the settings below, the functional name is the base functional
        "functional": _functional(incar, None),
        "ENCUT": incar.get("ENCUT"),
        "kpoint_density": {k: v for k, v in kpoints.items()
                           if k in ("reciprocal_density", "grid_density", "length", "kspacing")}
                          or ({"KSPACING": incar["KSPACING"]} if incar.get("KSPACING") else {}),
        "potcar_functional": input_set.user_potcar_functional or config.get("POTCAR_FUNCTIONAL", "PBE"),
        "potcar_symbols": dict(sorted(potcar.items())),
        "hubbard_u": ldauu,
        "ISPIN": incar.get("ISPIN"),
    }
    return settings


def vasp_fingerprint(settings: dict[str, Any]) -> str:
    """Hash of the level of theory (see the module doc)."""
    keys = ("code", "functional", "ENCUT", "kpoint_density", "potcar_functional", "potcar_symbols", "hubbard_u")
    return settings_hash({k: settings.get(k) for k in keys})


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


#: tags whose value VASP used is recorded in vasprun.xml's <parameters> (``input.parameters`` of a TaskDoc)
#: under another name
_PARAMETER_NAMES = {"ENCUT": "ENMAX"}
#: what ``oracle_settings["actual"]["used"]`` records of each run
_USED_TAGS = ("ENCUT", "PREC", "GGA", "METAGGA", "ISPIN", "ISMEAR", "SIGMA", "EDIFF", "NELM", "LASPH", "LREAL", "LDAU")


def _used(inp: Any, tag: str) -> Any:
    """The value of an INCAR tag that VASP ran with: vasprun.xml's <parameters> (what VASP used, its own
    defaults included for tags the INCAR omits), else the INCAR (a TaskDoc without parameters)."""
    value = task_get(inp, "parameters", _PARAMETER_NAMES.get(tag, tag))
    if value is None or tag == "PREC":  # (<parameters> cuts PREC to 6 letters: "Accura")
        value = task_get(inp, "incar", tag, default=value)
    if tag == "ENCUT" and value is not None:
        value = float(value)
    if tag == "METAGGA" and str(value).strip().lower() in ("none", "--", ""):
        value = None
    return value


def settings_from_task(task: Any) -> dict[str, Any]:
    """The level of theory as run, from a ``TaskDoc`` (or its dict): for labels without a Maker.

    Values are those VASP used (vasprun.xml's <parameters>), so a tag the INCAR omits (ENCUT, ISPIN,
    GGA, ...) is recorded with VASP's default rather than as null."""
    t = as_task_dict(task)
    calc = t["calcs_reversed"][0]
    inp = calc["input"]
    incar = dict(task_get(inp, "incar", default={}))
    structure = to_structure(task_get(inp, "structure") or calc["output"]["structure"])
    kpts = task_get(inp, "kpoints")
    grid = task_get(kpts, "kpoints", 0) if isinstance(kpts, dict) else getattr(kpts, "kpts", [None])[0]
    density = None
    if grid is not None:
        density = round(float(np.prod(grid)) / structure.lattice.reciprocal_lattice.volume, 3)
    symbols = [str(s) for s in task_get(inp, "potcar", default=[])]
    elements = [str(el) for el in structure.composition.elements]
    hubbards = task_get(inp, "hubbards", default={}) or {}
    potcar_functional = _potcar_functional(inp)
    used = {tag: _used(inp, tag) for tag in ("GGA", "METAGGA", "LHFCALC", "AEXX", "HFSCREEN")}
    return {
        "code": "vasp",
        "input_set": None,
        "functional": _functional({**incar, **{k: v for k, v in used.items() if v is not None}}, hubbards,
                                  "LDA" if potcar_functional.startswith("LDA") else "PBE"),
        "ENCUT": _used(inp, "ENCUT"),
        "kpoint_density": {"kpoints_per_inv_A3": density} if density else {"KSPACING": _used(inp, "KSPACING")},
        "potcar_functional": potcar_functional,
        "potcar_symbols": dict(sorted(zip(elements, symbols))) if len(elements) == len(symbols) else symbols,
        "hubbard_u": {k: v for k, v in hubbards.items() if v} or None,
        "ISPIN": _used(inp, "ISPIN"),
    }


def _potcar_functional(inp: Any) -> str:
    return str(task_get(inp, "potcar_type", 0, default="PAW_PBE")).replace("PAW_", "").replace("PAW", "LDA")


def _actual(t: dict[str, Any]) -> dict[str, Any]:
    calc = t["calcs_reversed"][0]
    inp = calc["input"]
    kpts = task_get(inp, "kpoints")
    grid = task_get(kpts, "kpoints", 0) if isinstance(kpts, dict) else getattr(kpts, "kpts", [None])[0]
    incar = dict(task_get(inp, "incar", default={}))
    return {
        "potcar_symbols": [str(s) for s in task_get(inp, "potcar", default=[])],
        "ENCUT": _used(inp, "ENCUT"),
        "kpoint_grid": list(grid) if grid is not None else None,
        "used": jsanitize({tag: _used(inp, tag) for tag in _USED_TAGS}, strict=False),  # VASP's values
        "energy": "e_fr_energy",  # the free energy (TOTEN) of each ionic step; see the module doc
        "incar": jsanitize(incar, strict=False),  # the INCAR as written: tags it omits are not there
        "vasp_version": calc.get("vasp_version"),
        "task_label": t.get("task_label"),
        "custodian_corrections": len(t.get("custodian") or []),
    }


# --------------------------------------------------------------------------------------------------
# TaskDoc -> LabelDoc


def _oracle_name(settings: dict[str, Any]) -> str:
    return f"vasp:{settings.get('input_set') or 'task'}"


def _failed_run_label(doc: StructureDoc | None, settings: dict[str, Any] | None, source, failure, common) -> LabelDoc:
    """The one failed label of a VASP job that gave no task document."""
    if doc is None:
        raise ValueError("no task document and no structure to attach a failed label to")
    settings = settings or {"code": "vasp"}
    reason = failure or "the VASP job produced no task document (custodian gave up or VASP failed)"
    return LabelDoc(
        structure=doc.structure, source=source or doc.source, oracle=_oracle_name(settings),
        oracle_fingerprint=vasp_fingerprint(settings), oracle_settings=jsanitize(settings, strict=False),
        status=LabelStatus.failed, reason=reason, **common,
    )


def _step_indices(n_steps: int, trajectory_stride: int | None) -> list[int]:
    """The ionic steps to label: the last one, or 0, k, 2k, ... and the last one."""
    last = n_steps - 1
    if trajectory_stride is None:
        return [last]
    if trajectory_stride < 1:
        raise ValueError("trajectory_stride must be >= 1")
    return sorted(set(range(0, n_steps, trajectory_stride)) | {last})


def _step_label(step: dict[str, Any], i: int, n_steps: int, nelm: int, base: dict[str, Any]) -> LabelDoc:
    """The label of ionic step ``i``: failed when its SCF hit NELM or a value is missing or not finite."""
    run_dir = base["run_dir"]
    n_elec = step.get("num_electronic_steps") or len(step.get("electronic_steps") or [])
    if n_elec >= nelm:
        reason = (f"electronic steps not converged: ionic step {i + 1}/{n_steps} used {n_elec} "
                  f"electronic steps = NELM ({nelm}) in {run_dir}")
        return LabelDoc(status=LabelStatus.failed, reason=reason, **base)
    energy, forces, stress = step.get("e_fr_energy"), step.get("forces"), step.get("stress")
    values = [energy, forces] + ([stress] if stress is not None else [])
    if energy is None or forces is None or not all(np.all(np.isfinite(np.asarray(v, float))) for v in values):
        return LabelDoc(status=LabelStatus.failed, reason=f"missing or non-finite energy/forces/stress "
                        f"at ionic step {i + 1} in {run_dir}", **base)
    return LabelDoc(
        status=LabelStatus.ok,
        energy=float(energy),
        forces=np.asarray(forces, float).tolist(),
        stress=None if stress is None else vasp_stress_to_ase(stress).tolist(),
        **base,
    )


def labels_from_task(
    task: Any,
    structure: StructureDoc | Structure | None = None,
    *,
    settings: dict[str, Any] | None = None,
    trajectory_stride: int | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    job_uuid: str | None = None,
    source: StructureSource | None = None,
    failure: str | None = None,
) -> list[LabelDoc]:
    """Labels from an atomate2 VASP ``TaskDoc`` (or its dict), the last ionic step last.

    ``trajectory_stride``: None labels the final ionic step only; ``k`` labels steps 0, k, 2k, ... and
    the final one. ``settings``: the Maker's ``vasp_settings`` (default: ``settings_from_task``).
    ``task`` None (the VASP job failed) gives one failed label for ``structure`` with ``failure`` as reason.
    """
    doc = None if structure is None else as_structure_doc(structure, campaign, iteration)
    common = dict(campaign=campaign, iteration=iteration, job_uuid=job_uuid)
    t = as_task_dict(task)
    if t is None:
        return [_failed_run_label(doc, settings, source, failure, common)]

    settings = settings or settings_from_task(t)
    calc = t["calcs_reversed"][0]
    steps = calc["output"].get("ionic_steps") or []
    nelm = int(task_get(calc, "input", "parameters", "NELM", default=60))
    run_dir = t.get("dir_name")
    oracle_settings = jsanitize({**settings, "actual": _actual(t)}, strict=False)
    if not steps:
        raise ValueError(f"task document from {run_dir} has no ionic steps")
    indices = _step_indices(len(steps), trajectory_stride)
    is_relax = len(steps) > 1 or int(task_get(calc, "input", "parameters", "NSW", default=0)) > 0
    completed = str(_value(calc.get("has_vasp_completed"))) == "successful"
    if not completed:
        logger.info("VASP run in %s did not complete successfully (state %s)", run_dir, _value(t.get("state")))

    frame_source = source or (StructureSource.relaxed if is_relax else (doc.source if doc else None))
    fields = dict(source=frame_source, oracle=_oracle_name(settings), oracle_fingerprint=vasp_fingerprint(settings),
                  oracle_settings=oracle_settings, run_dir=run_dir, **common)
    labels = [_step_label(steps[i], i, len(steps), nelm, {"structure": to_structure(steps[i]["structure"]), **fields})
              for i in indices]
    if not completed and labels[-1].ok and is_relax:
        logger.warning("relaxation in %s did not converge ionically; its frames are kept as labels", run_dir)
    return labels


@job
def vasp_labels(
    task: Any,
    structure: StructureDoc | Structure,
    settings: dict[str, Any],
    trajectory_stride: int | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    vasp_job_uuid: str | None = None,
    record_relaxed: bool = False,
    single: bool = False,
):
    """Parse job: ``TaskDoc`` -> ``LabelDoc``s, recorded in the campaign collections."""
    failure = None
    if task is None:
        failure = (f"VASP job {vasp_job_uuid} failed: no task document (custodian gave up, VASP crashed or the "
                   "inputs could not be written; see that job's log)")
    labels = labels_from_task(
        task, structure, settings=settings, trajectory_stride=trajectory_stride, campaign=campaign,
        iteration=iteration, job_uuid=vasp_job_uuid, failure=failure,
    )
    doc = as_structure_doc(structure, campaign, iteration)
    structures = [doc.model_copy(update={"campaign": campaign, "iteration": iteration})]
    if record_relaxed and labels[-1].ok:
        structures.append(StructureDoc(
            structure=labels[-1].structure, source=StructureSource.relaxed, campaign=campaign,
            iteration=iteration, parent=doc.structure_hash,
            metadata={"energy": labels[-1].energy, "run_dir": labels[-1].run_dir},
        ))
    record_labels(labels, structures)
    return labels[-1] if single else labels


def _no_error_on_unsuccessful(maker) -> None:
    # atomate2 raises on an unconverged run by default; let the TaskDoc reach the parse job instead,
    # which turns it into a failed label with the reason
    maker.stop_children_kwargs.setdefault("handle_unsuccessful", False)


def mp_relax_maker(**set_kwargs):
    """atomate2 ``RelaxMaker`` whose input set is pymatgen's ``MPRelaxSet`` (``set_kwargs``, e.g.
    ``user_incar_settings``, go to the set)."""
    from atomate2.vasp.jobs.core import RelaxMaker

    maker = RelaxMaker(input_set_generator=MPRelaxSet(**set_kwargs))
    _no_error_on_unsuccessful(maker)
    return maker


def mp_static_maker(**set_kwargs):
    """atomate2 ``StaticMaker`` whose input set is pymatgen's ``MPStaticSet`` (``set_kwargs``, e.g.
    ``user_incar_settings``, go to the set)."""
    from atomate2.vasp.jobs.core import StaticMaker

    maker = StaticMaker(input_set_generator=MPStaticSet(**set_kwargs))
    _no_error_on_unsuccessful(maker)
    return maker


@dataclass
class VaspRelaxFlowMaker(Maker):
    """Relax a structure with VASP (atomate2 ``RelaxMaker`` + ``MPRelaxSet``) and label its trajectory.

    The flow's output is the list of labels: ionic steps 0, stride, 2·stride, ... and the final one (the
    relaxed structure, also recorded as a ``relaxed`` StructureDoc whose parent is the input).
    """

    name: str = "vasp relax"
    vasp_maker: Any = field(default_factory=mp_relax_maker)
    trajectory_stride: int | None = 5

    def __post_init__(self) -> None:
        _no_error_on_unsuccessful(self.vasp_maker)

    @property
    def settings(self) -> dict[str, Any]:
        return vasp_settings(self.vasp_maker.input_set_generator)

    @property
    def fingerprint(self) -> str:
        return vasp_fingerprint(self.settings)

    def make(self, structure: StructureDoc | Structure, campaign: str | None = None,
             iteration: int | None = None) -> Flow:
        return code_flow(self.vasp_maker, structure, campaign, iteration, self.name, lambda j, doc: vasp_labels(
            j.output, doc, self.settings, trajectory_stride=self.trajectory_stride, campaign=campaign,
            iteration=iteration, vasp_job_uuid=j.uuid, record_relaxed=True))


@dataclass
class VaspStaticOracleMaker(Maker):
    """The VASP oracle for active learning: one static (atomate2 ``StaticMaker`` + ``MPStaticSet``).

    Like ``AseOracleMaker``, ``make(structure, campaign, iteration)`` gives one ``LabelDoc`` (the output of
    the flow), ok or failed with a reason.
    """

    name: str = "vasp oracle"
    vasp_maker: Any = field(default_factory=mp_static_maker)

    def __post_init__(self) -> None:
        _no_error_on_unsuccessful(self.vasp_maker)

    @property
    def settings(self) -> dict[str, Any]:
        return vasp_settings(self.vasp_maker.input_set_generator)

    @property
    def oracle_name(self) -> str:
        return f"vasp:{self.settings['input_set']}"

    @property
    def fingerprint(self) -> str:
        return vasp_fingerprint(self.settings)

    def make(self, structure: StructureDoc | Structure, campaign: str | None = None,
             iteration: int | None = None) -> Flow:
        return code_flow(self.vasp_maker, structure, campaign, iteration, self.name, lambda j, doc: vasp_labels(
            j.output, doc, self.settings, campaign=campaign, iteration=iteration, vasp_job_uuid=j.uuid, single=True))
