"""CP2K through atomate2 (``oracle: {kind: cp2k}``): a flow [atomate2 CP2K ``StaticMaker``, parse job], as for VASP.

A failed CP2K job (custodian could not converge the SCF, a crash, an unparsable output) or ``SCF run NOT converged``
gives a *failed* label with the reason. pymatgen reads CP2K's energy in eV, its forces in Hartree/Bohr and its stress
in GPa, positive = compressive: labels carry eV, eV/Å and ASE's stress. The label's structure is the input one (CP2K
prints the cell to 1e-3 Å), forces in its site order. atomate2 0.1.5 cannot parse spin-restricted outputs.

The second part is what CP2K's pre-relaxation (``almat.oracle.cp2k_relax``) and MD (``almat.oracle.cp2k_md``) share:
the level of theory of any CP2K input set (their frames are the static oracle's labels), their input sets, and
their frames read back from CP2K's trajectory files.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase.units import Bohr, GPa, Hartree
from jobflow import Flow, Maker, OnMissing, job
from monty.io import zopen
from monty.json import jsanitize
from pymatgen.core import Structure

from almat.oracle.atomate2 import as_task_dict, code_flow, settings_hash, to_structure
from almat.oracle.jobs import as_structure_doc, record_labels, site_permutation
from almat.schemas import LabelDoc, LabelStatus, StructureDoc


def cp2k_environment(data_dir: str | Path | None = None) -> dict[str, str]:
    """Check this process can run atomate2's CP2K jobs and point pymatgen at its CP2K data (see docs/index.md).

    One-line ``FileNotFoundError`` if atomate2's CP2K command (``$ATOMATE2_CP2K_CMD``, default ``cp2k.psmp``) is not
    on PATH or pymatgen's copy of CP2K's data (``data_dir``, ``$PMG_CP2K_DATA_DIR``, pymatgen's setting or
    ``~/.cache/almat/cp2k-pmg``) is missing; else sets ``PMG_CP2K_DATA_DIR`` and ``PMG_DEFAULT_CP2K_FUNCTIONAL``."""
    from atomate2 import SETTINGS as A2
    from pymatgen.core import SETTINGS

    exe = next((w for w in A2.CP2K_CMD.split() if "cp2k" in w), A2.CP2K_CMD)
    if shutil.which(exe) is None:
        raise FileNotFoundError(f"CP2K not found: {exe!r} is not on PATH (install cp2k or set ATOMATE2_CP2K_CMD)")
    target = Path(data_dir or os.environ.get("PMG_CP2K_DATA_DIR") or SETTINGS.get("PMG_CP2K_DATA_DIR")
                  or "~/.cache/almat/cp2k-pmg").expanduser()
    if not any(p.is_file() and p.name.isalpha() and len(p.name) <= 2 for p in target.glob("*")):  # element files
        raise FileNotFoundError(f"pymatgen's CP2K data not found in {target}: run pmg config --cp2k /usr/share/cp2k "
                                f"{target}")
    env = {"PMG_CP2K_DATA_DIR": str(target),
           "PMG_DEFAULT_CP2K_FUNCTIONAL": os.environ.get("PMG_DEFAULT_CP2K_FUNCTIONAL", "PBE")}
    os.environ.update(env)
    SETTINGS.update(env)
    return env


def cp2k_data_subset(settings: dict[str, Any], source: str | Path, dest: str | Path) -> Path:
    """A copy of pymatgen's CP2K data (``source``, from ``pmg config --cp2k``) cut down to the basis sets and
    potentials that ``settings`` (``oracle.cp2k``) names, plus the auxiliary fitting bases (``*FIT*``); point
    ``PMG_CP2K_DATA_DIR`` at ``dest`` on the workers. pymatgen parses an element's whole data file (200-300 kB
    of YAML) for every input it writes: 9-20 s a label for Li, P, S and Cl on 2 cores, 0.2 s cut down. The
    inputs written are byte-identical (checked in tests/oracle/test_cp2k.py). Written aside, then renamed."""
    import yaml

    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    kinds = settings.get("basis_and_potential") or {}
    if not kinds:
        raise ValueError("cp2k_data_subset: settings name no basis_and_potential to keep")
    bases = {k.get("basis") for k in kinds.values()}
    potentials = {k.get("potential") for k in kinds.values()}
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for el in kinds:
        data = yaml.load((source / el).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        keep = {"basis_sets": {h: b for h, b in data["basis_sets"].items()
                               if bases & {b["name"], *b.get("alias_names", [])} or "FIT" in b["name"]},
                "potentials": {h: p for h, p in data["potentials"].items()
                               if potentials & {p["name"], *p.get("alias_names", [])}}}
        (tmp / el).write_text(yaml.dump(keep, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def cp2k_static_maker(**settings):
    """atomate2's CP2K ``StaticMaker``; ``settings`` update its ``user_input_settings`` (PBE unless
    ``xc_functionals`` says otherwise), but ``kpoints``: ``gamma`` or a pymatgen KPOINTS setting (default the set's)."""
    from atomate2.cp2k.jobs.core import StaticMaker
    from atomate2.cp2k.sets.core import StaticSetGenerator

    kpoints = settings.pop("kpoints", {})
    maker = StaticMaker(input_set_generator=StaticSetGenerator(
        user_input_settings={"xc_functionals": ["PBE"], **settings},
        user_kpoints_settings=None if kpoints in (None, "gamma") else kpoints))
    maker.run_cp2k_kwargs["custodian_kwargs"] = {"polling_time_step": 1}  # custodian's 10 s would add 5 s a label
    return maker


def cp2k_static_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The level of theory of the static oracle of ``oracle.cp2k`` settings: what its relaxations and MD frames
    are labelled with, so that they share its fingerprint."""
    return cp2k_settings(cp2k_static_maker(**settings).input_set_generator)


def cp2k_settings(generator) -> dict[str, Any]:
    """The level of theory of an atomate2 CP2K input set generator, independent of any structure."""
    base, user = generator.config_dict.get("cp2k_input", {}), dict(generator.user_input_settings or {})
    kpoints = generator.user_kpoints_settings
    return {"code": "cp2k", "input_set": type(generator).__name__,
            "functional": user.get("xc_functionals") or os.environ.get("PMG_DEFAULT_CP2K_FUNCTIONAL"),
            "basis_and_potential": user.get("basis_and_potential", {}),
            "basis_table": settings_hash(base.get("basis_and_potential", {})),  # the set's own choice per element
            "kpoints": "gamma" if kpoints is None or "KPOINTS" not in generator.config_dict
            else kpoints or generator.config_dict["KPOINTS"],
            **{k: user.get(k, base.get(k)) for k in ("cutoff", "rel_cutoff", "qs_method", "spin_polarized",
                                                     "smearing", "elec_temp", "override_default_params")}}


def cp2k_actual(calc: dict[str, Any]) -> dict[str, Any]:
    """What a CP2K run used (its version, basis set and pseudopotential per element), from a task's calculation."""
    kinds = (calc.get("input") or {}).get("atomic_kind_info") or {}
    return {"cp2k_version": calc.get("cp2k_version"), "basis_potential": {
        k.get("element", n): [k.get("orbital_basis_set"), k.get("pseudo_potential")] for n, k in kinds.items()}}


@job
def cp2k_labels(task: Any, doc: StructureDoc, settings: dict[str, Any], campaign: str | None = None,
                iteration: int | None = None, job_uuid: str | None = None) -> LabelDoc:
    """Parse job: one ``LabelDoc`` from an atomate2 CP2K ``TaskDocument`` (None: the CP2K job failed), recorded
    with its structure in the campaign collections (``cp2k_labels.original(...)`` only makes the label)."""
    doc = as_structure_doc(doc, campaign, iteration)
    base = dict(structure=doc.structure, source=doc.source, oracle=f"cp2k:{settings['input_set']}",
                oracle_fingerprint=settings_hash(settings), oracle_settings=jsanitize(settings, strict=False),
                campaign=campaign, iteration=iteration, job_uuid=job_uuid)
    t, values = as_task_dict(task), {}
    if t is None:
        reason = (f"CP2K job {job_uuid} failed: no task document (custodian could not converge the SCF or fix the "
                  "run, CP2K crashed or is not on PATH, or its output could not be parsed; see its folder and log)")
    else:
        calc, base["run_dir"] = t["calcs_reversed"][0], t.get("dir_name")
        base["oracle_settings"]["actual"] = cp2k_actual(calc)
        step = (calc["output"].get("ionic_steps") or [{}])[-1]
        perm = site_permutation(doc.structure, to_structure(step.get("structure") or calc["output"]["structure"]),
                                 tol=0.01)
        energy, forces, stress = step.get("E"), step.get("forces"), step.get("stress_tensor")
        folder = Path(str(base["run_dir"]).split(":", 1)[-1])  # atomate2's dir_name is "host:/path"
        out = next((f for f in (folder / "cp2k.out.gz", folder / "cp2k.out") if f.is_file()), None)
        if out and b"SCF run NOT converged" in (gzip.decompress if out.suffix == ".gz" else bytes)(out.read_bytes()):
            reason = f"SCF not converged (CP2K: 'SCF run NOT converged') in {base['run_dir']}"
        elif perm is None or energy is None or forces is None or not all(
                np.all(np.isfinite(np.asarray(v, float))) for v in (energy, forces, stress) if v is not None):
            reason = f"missing or non-finite energy/forces/stress, or not the input structure, in {base['run_dir']}"
        else:
            forces = np.asarray(forces, float)[perm] * Hartree / Bohr  # Ha/Bohr -> eV/Å, in the input's site order
            reason, values = None, {"energy": float(energy), "forces": forces.tolist(),
                                    "stress": None if stress is None else (-np.asarray(stress, float) * GPa).tolist()}
    label = LabelDoc(status=LabelStatus.failed if reason else LabelStatus.ok, reason=reason, **values, **base)
    record_labels([label], [doc.model_copy(update={"campaign": campaign, "iteration": iteration})])
    return label


@dataclass
class Cp2kStaticOracleMaker(Maker):
    """The CP2K oracle: one static per structure, output one ``LabelDoc``. Default ``cp2k_maker``: atomate2's
    defaults with PBE (``cp2k_static_maker()``, production settings, slow)."""

    name: str = "cp2k oracle"
    cp2k_maker: Any = field(default_factory=cp2k_static_maker)

    settings = property(lambda self: cp2k_settings(self.cp2k_maker.input_set_generator))
    oracle_name = property(lambda self: f"cp2k:{self.settings['input_set']}")
    fingerprint = property(lambda self: settings_hash(self.settings))

    def make(self, structure, campaign: str | None = None, iteration: int | None = None) -> Flow:
        settings = self.settings
        return code_flow(self.cp2k_maker, structure, campaign, iteration, self.name, lambda j, doc: cp2k_labels(
            j.output, doc, settings, campaign=campaign, iteration=iteration, job_uuid=j.uuid))


# --------------------------------------------------------------------------------------------------
# what CP2K's relaxations and MD share: one level of theory, frames read back from the run's trajectory

#: user_input_settings that say what CP2K does with the level of theory (relax, MD), not what the level is
MOTION_KEYS = ("activate_motion", "print_bandstructure", "print_dos", "print_pdos", "print_v_hartree",
               "print_e_density", "print_mo_cubes")


def cp2k_level_of_theory(generator) -> dict[str, Any]:
    """The settings (and so the fingerprint) of the static oracle with the same level of theory as any atomate2
    CP2K input set generator (static, relax, cell opt, MD): labels from relaxations and MD frames count as the
    static oracle's labels. What only steers the motion is left out: ``MOTION_KEYS``, and in
    ``override_default_params`` the ``MOTION`` section and ``GLOBAL/SEED``."""
    from atomate2.cp2k.sets.core import StaticSetGenerator

    user = {k: v for k, v in (generator.user_input_settings or {}).items() if k not in MOTION_KEYS}
    overrides = {k: v for k, v in (user.get("override_default_params") or {}).items() if k.upper() != "MOTION"}
    if isinstance(overrides.get("GLOBAL"), dict):  # the MD's random seed: not part of the level of theory
        overrides["GLOBAL"] = {k: v for k, v in overrides["GLOBAL"].items() if k.upper() != "SEED"} or None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        user["override_default_params"] = overrides
    else:
        user.pop("override_default_params", None)
    return cp2k_settings(StaticSetGenerator(user_input_settings=user, config_dict=generator.config_dict,
                                            user_kpoints_settings=generator.user_kpoints_settings))


def cp2k_motion_generator(generator_class, settings: dict[str, Any], motion: dict[str, Any], **overrides):
    """An atomate2 CP2K generator of ``generator_class`` with the oracle's ``settings`` (as ``cp2k_static_maker``
    takes them) and ``activate_motion`` keywords; sites are kept in the input's order (``sort_structure`` off),
    so trajectory frames, forces included, come in that order."""
    settings = dict(settings)
    kpoints = settings.pop("kpoints", {})
    user = {"xc_functionals": ["PBE"], **settings, **overrides}
    user["activate_motion"] = {**motion, **dict(settings.get("activate_motion") or {})}
    return generator_class(user_input_settings=user, sort_structure=False,
                           user_kpoints_settings=None if kpoints in (None, "gamma") else kpoints)


def _read_xyz_frames(path: Path) -> dict[int, tuple[list[str], np.ndarray, float]]:
    """CP2K's ``-pos-``/``-frc-`` xyz trajectory: step -> (symbols, 3N values, E in Hartree); a step printed twice
    (a restart appends) keeps its last print."""
    with zopen(path, "rt") as f:
        lines = f.read().splitlines()
    frames, k = {}, 0
    while k < len(lines) and lines[k].strip():
        n = int(lines[k])
        head = re.search(r"i\s*=\s*(\d+).*E\s*=\s*(\S+)", lines[k + 1])
        rows = [line.split() for line in lines[k + 2:k + 2 + n]]
        frames[int(head.group(1))] = ([r[0] for r in rows], np.array([r[1:4] for r in rows], float),
                                      float(head.group(2)))
        k += n + 2
    return frames


def _read_cells(path: Path | None) -> dict[int, np.ndarray]:
    """CP2K's ``.cell`` file: step -> 3x3 cell (Å)."""
    if path is None:
        return {}
    with zopen(path, "rt") as f:
        rows = [line.split() for line in f.read().splitlines() if line.strip() and not line.startswith("#")]
    return {int(r[0]): np.array(r[2:11], float).reshape(3, 3) for r in rows}


def _stresses_by_energy(text: str) -> list[tuple[float, np.ndarray]]:
    """(energy in Hartree, stress in GPa) of each force evaluation in CP2K's main output: the ``STRESS|`` block
    after each ``ENERGY| Total FORCE_EVAL`` line. This is the potential (virial) stress; MOTION's ``.stress``
    file adds the kinetic part in MD, which a label must not have."""
    out, energy, lines = [], None, text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith(" ENERGY| Total FORCE_EVAL"):
            energy = float(line.split()[-1])
        elif "STRESS| Analytical stress tensor [GPa]" in line and energy is not None:
            out.append((energy, np.array([row.split()[2:5] for row in lines[k + 2:k + 5]], float)))
    return out


def read_cp2k_frames(folder: str | Path, start) -> list[dict[str, Any]]:
    """The frames of a CP2K GEO_OPT, CELL_OPT or MD run from its trajectory files (``MOTION/PRINT``), in step order:
    ``step``, ``structure`` (the start's site order), ``energy`` (eV), ``forces`` (eV/Å), ``stress`` (ASE's,
    eV/Å³, or None). ``start``: the input structure (species order and, without a cell file, the cell)."""
    folder = Path(str(folder).split(":", 1)[-1])  # atomate2's dir_name is "host:/path"
    found = {kind: sorted(folder.glob(pattern)) for kind, pattern in
             (("pos", "*-pos-1.xyz*"), ("frc", "*-frc-1.xyz*"), ("cell", "*-1.cell*"))}
    if not found["pos"] or not found["frc"]:
        return []
    pos, frc = _read_xyz_frames(found["pos"][0]), _read_xyz_frames(found["frc"][0])
    cells = _read_cells(found["cell"][0] if found["cell"] else None)
    stresses = _stresses_by_energy(cp2k_output_text(folder))
    species = [site.specie.symbol for site in start]
    frames = []
    for step in sorted(set(pos) & set(frc)):
        symbols, xyz, energy = pos[step]
        if symbols != species:
            raise ValueError(f"CP2K trajectory in {folder}: step {step} lists its atoms in another order than "
                             "the input")
        # the force evaluation of this frame: the one that printed its energy (the xyz files print 10 decimals)
        stress = next((s for e, s in reversed(stresses) if abs(e - energy) < 1e-9), None)
        frames.append({"step": step, "energy": energy * Hartree, "forces": frc[step][1] * Hartree / Bohr,
                       "structure": Structure(cells.get(step, start.lattice.matrix), species, xyz,
                                              coords_are_cartesian=True),
                       "stress": None if stress is None else -stress * GPa})  # GPa, + = compressive -> ASE
    return frames


def cp2k_output_text(folder: str | Path) -> str:
    """CP2K's main output of a run folder (``cp2k.out`` or ``.gz``), '' when there is none."""
    folder = Path(str(folder).split(":", 1)[-1])
    out = next((f for f in (folder / "cp2k.out.gz", folder / "cp2k.out") if f.is_file()), None)
    if out is None:
        return ""
    data = out.read_bytes()
    return (gzip.decompress(data) if out.suffix == ".gz" else data).decode(errors="replace")


def motion_flow(code_maker: Any, structure: Any, name: str, parse: Callable) -> Flow:
    """Flow [atomate2 CP2K job, parse job] for a structure that may still be a reference (a pre-relaxed start):
    ``parse(code_job)`` makes the parse job, which also runs when the CP2K job failed (it then gets None)."""
    code_job = code_maker.make(structure.structure if isinstance(structure, StructureDoc) else structure)
    parse_job = parse(code_job)
    parse_job.name = f"{name} labels"
    parse_job.config.on_missing_references = OnMissing.NONE
    parse_job.config.expose_store = True
    return Flow([code_job, parse_job], output=parse_job.output, name=name)
