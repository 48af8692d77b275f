"""CP2K through atomate2 (``oracle: {kind: cp2k}``): a flow [atomate2 CP2K ``StaticMaker``, parse job], as for VASP.

A failed CP2K job (custodian could not converge the SCF, a crash, an unparsable output) or ``SCF run NOT converged``
gives a *failed* label with the reason. pymatgen reads CP2K's energy in eV, its forces in Hartree/Bohr and its stress
in GPa, positive = compressive: labels carry eV, eV/Å and ASE's stress. The label's structure is the input one (CP2K
prints the cell to 1e-3 Å), forces in its site order. atomate2 0.1.5 cannot parse spin-restricted outputs.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.units import Bohr, GPa, Hartree
from jobflow import Flow, Maker, job
from monty.json import jsanitize

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
    if not (target / "Si").is_file():
        raise FileNotFoundError(f"pymatgen's CP2K data not found in {target}: run pmg config --cp2k /usr/share/cp2k "
                                f"{target}")
    env = {"PMG_CP2K_DATA_DIR": str(target),
           "PMG_DEFAULT_CP2K_FUNCTIONAL": os.environ.get("PMG_DEFAULT_CP2K_FUNCTIONAL", "PBE")}
    os.environ.update(env)
    SETTINGS.update(env)
    return env


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
        kinds = (calc.get("input") or {}).get("atomic_kind_info") or {}  # what ran, per element
        base["oracle_settings"]["actual"] = {"cp2k_version": calc.get("cp2k_version"), "basis_potential": {
            k.get("element", n): [k.get("orbital_basis_set"), k.get("pseudo_potential")] for n, k in kinds.items()}}
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
