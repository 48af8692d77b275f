"""The zero-shot start: MD with a foundation model, before any label, gives the first structures to label
(in the spirit of PWact's "bigmodel" start)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from almat.learner.mace import predict


class SingleModelCalculator(Calculator):
    """ASE calculator of one MACE model (energy, forces)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = predict([self.model], [self.atoms])
        energy = float(energies[0, 0])
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[0][0]}


def foundation_calculator(learner: str, hyperparameters: dict) -> Calculator:
    """The pretrained model of a learner kind as an ASE calculator: the bundled CHGNet, or the MACE
    foundation file of ``mace-finetune``."""
    if learner == "mace-finetune":
        from almat.learner.mace_finetune import read_foundation

        return SingleModelCalculator(read_foundation(hyperparameters["foundation"]["path"]))
    from chgnet.model.dynamics import CHGNetCalculator

    from almat.learner.chgnet import pretrained_chgnet

    return CHGNetCalculator(model=pretrained_chgnet(), use_device="cpu")


def foundation_md_frames(atoms: Atoms, n_frames: int, temperature: float, steps: int, seed: int,
                         calculator: Calculator) -> list[Atoms]:
    """``n_frames`` configurations, evenly spaced, from Langevin MD of ``atoms`` with a foundation model's
    ``calculator``: what a universal potential visits, before any label."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(max(1, steps // n_frames))
        frame = atoms.copy()
        frame.calc = None
        frames.append(frame)
    return frames
