"""The zero-shot start: MD with a foundation model, before any label, gives the first structures to label
(in the spirit of PWact's "bigmodel" start)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from almat.learner.mace import SingleModelCalculator  # noqa: F401 - (re-exported)
from almat.learner.registry import load_learner


def foundation_calculator(learner: str, hyperparameters) -> Calculator:
    """The pretrained model of a learner kind as an ASE calculator (``Learner.zero_shot_calculator``: the
    bundled CHGNet, or the MACE foundation file of ``mace-finetune``); ``hyperparameters``: the learner's, or a
    dict of them."""
    found = load_learner(learner)
    return found.zero_shot_calculator(found.validate(hyperparameters))


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
