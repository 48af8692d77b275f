"""DP-GEN's ``fp_style: custom`` oracle: label one structure with an ASE calculator, in the task folder.

dpgen writes ``POSCAR`` (``input_fmt: vasp/poscar``) into the task folder, runs the ``fp`` command of
machine.json there, and reads back ``label.hdf5`` in ``output_fmt: deepmd/hdf5``. The same oracles as almat's:

    python fp_ase.py emt     # ase.calculators.emt.EMT (as workflows/cu_emt.yaml)
    python fp_ase.py xtb     # GFN1-xTB through tblite (as almat.oracle.xtb.xtb_spec)

A failed calculation writes nothing, so dpgen counts the task as failed.
"""

import sys

import dpdata
import numpy as np
from ase.io import read


def calculator(name):
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name == "xtb":
        from tblite.ase import TBLite

        return TBLite(method="GFN1-xTB", verbosity=0)
    raise SystemExit(f"fp_ase.py: unknown oracle {name!r}; valid: emt, xtb")


def main(name, src="POSCAR", out="label.hdf5"):
    atoms = read(src, format="vasp")
    atoms.calc = calculator(name)
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), dtype=float)
    stress = np.asarray(atoms.get_stress(voigt=False), dtype=float)  # eV/Å^3
    if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
        raise SystemExit("fp_ase.py: non-finite energy, forces or stress")
    system = dpdata.System(src, fmt="vasp/poscar")
    data = {**system.data, "energies": np.array([energy]), "forces": forces[None],
            "virials": (-stress * atoms.get_volume())[None]}
    dpdata.LabeledSystem(data=data).to("deepmd/hdf5", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "emt")
