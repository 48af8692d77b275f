"""Regenerate the CP2K reference outputs used by tests/oracle/test_cp2k.py (needs cp2k on PATH).

    pmg config --cp2k /usr/share/cp2k ~/.cache/almat/cp2k-pmg   # once
    .venv/bin/python tests/test_data/cp2k/generate.py

Each case is one real atomate2 CP2K static (Debian's CP2K 2023.1) of a rattled Si8 cell with the tests' small
settings (``SMALL`` in tests/oracle/test_cp2k.py); only ``cp2k.inp.gz`` and ``cp2k.out.gz`` are kept, which is
what ``TaskDocument.from_directory`` reads:

- ``si8_static``: converged (custodian with its default handlers and validator);
- ``si8_scf_unconverged``: MAX_SCF 2 and no custodian handlers/validator, so CP2K finishes with
  ``SCF run NOT converged`` and atomate2 still makes a task document.

Two more cases keep CP2K's trajectory files too (``*-pos-1.xyz``, ``*-frc-1.xyz``, ``*-1.cell``, ``*-1.stress``),
for tests/oracle/test_cp2k_relax_md.py:

- ``si8_relax``: atomate2's CP2K ``RelaxMaker`` (``cp2k_relax_maker``: 3 steps, fmax 0.01 eV/Å, positions only),
  which stops at its step limit;
- ``si8_md``: atomate2's CP2K ``MDMaker`` (``Cp2kMdMaker``: 6 steps of 2 fs at 600 K, seed 1).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from almat.oracle.cp2k import cp2k_environment, cp2k_static_maker
from almat.oracle.cp2k_md import cp2k_md_maker
from almat.oracle.cp2k_relax import cp2k_relax_maker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "oracle"))
from test_cp2k import SMALL, si8  # noqa: E402

CASES = {
    "si8_static": ({}, {}),
    "si8_scf_unconverged": ({"override_default_params": {"FORCE_EVAL": {"DFT": {"SCF": {"MAX_SCF": 2}}}}},
                            {"handlers": (), "validators": ()}),
}


def _reference(case: str, maker, files: tuple[str, ...]) -> None:
    """Run ``maker`` on Si8 in a temporary folder and keep ``files`` of its run as the reference ``case``."""
    with tempfile.TemporaryDirectory() as tmp:
        job = maker.make(AseAtomsAdaptor.get_structure(si8()))
        out = run_locally(job, root_dir=tmp, create_folders=True, ensure_success=True)
        run_dir = Path(str(out[job.uuid][1].output.dir_name).split(":", 1)[-1])
        target = HERE / case
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name in files:
            shutil.copy(run_dir / name, target / name)
    print(case, sorted(p.name for p in target.iterdir()))


def main() -> None:
    cp2k_environment()
    for case, (extra, run_kwargs) in CASES.items():
        maker = cp2k_static_maker(**{**SMALL, **extra})
        maker.run_cp2k_kwargs.update(run_kwargs)
        _reference(case, maker, ("cp2k.inp.gz", "cp2k.out.gz"))
    md = cp2k_md_maker(SMALL, temperature=600, steps=6)
    md.input_set_generator.user_input_settings["override_default_params"]["GLOBAL"] = {"SEED": 1}
    for case, maker in (("si8_relax", cp2k_relax_maker(SMALL, steps=3, fmax=0.01, relax_cell=False)), ("si8_md", md)):
        _reference(case, maker, ("cp2k.inp.gz", "cp2k.out.gz", "CP2K-pos-1.xyz.gz", "CP2K-frc-1.xyz.gz",
                                 "CP2K-1.cell.gz", "CP2K-1.stress.gz"))


if __name__ == "__main__":
    main()
