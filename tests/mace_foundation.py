"""A small MACE "foundation" model written as mace writes them (a whole pickled module), for the tests of
fine-tuning from a local ``.model`` file: trained in seconds on EMT Cu and CuAu."""

from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write


def emt_frames(n: int, seed: int, second: str | None = None, shift: float = 0.0) -> list:
    """``n`` strained, rattled 8-atom Cu cells (half of the atoms ``second`` if given) labelled by EMT,
    with the energy zero moved by ``shift`` eV/atom (another oracle's scale)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        if second:
            symbols = atoms.get_chemical_symbols()
            for j in rng.choice(len(atoms), size=len(atoms) // 2, replace=False):
                symbols[j] = second
            atoms.set_chemical_symbols(symbols)
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1_000_000)))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy() + shift * len(atoms), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def write_foundation(folder: Path, epochs: int = 25) -> tuple[Path, Path]:
    """(``foundation.model``, ``replay.xyz``) in ``folder``: a MACE trained on EMT Cu and CuAu, and its data."""
    import torch

    from almat.learner.hyperparameters import MaceHyperParameters
    from almat.learner.mace import train_mace

    data = emt_frames(16, 1, second="Au") + emt_frames(8, 2)
    hp = MaceHyperParameters(num_channels=8, r_max=4.0, epochs=epochs)
    model = train_mace(data, [str(i) for i in range(len(data))], hp, seed=0).model
    del model.almat_architecture  # a plain mace model, as mace_run_train writes it
    torch.save(model, folder / "foundation.model")
    write(folder / "replay.xyz", data)
    return folder / "foundation.model", folder / "replay.xyz"
