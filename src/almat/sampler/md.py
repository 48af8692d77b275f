"""Exploration MD with a committee calculator (ASE Langevin NVT), recording the model deviation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from almat.uncertainty.deviation import FrameClass, TrustLevels

logger = logging.getLogger(__name__)


@dataclass
class ExplorationSettings:
    temperature: float = 300.0  # K
    steps: int = 300
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.02
    sample_every: int = 10
    stop_after_failed: int = 1  # stop after this many consecutive frames beyond hi
    min_distance_factor: float = 0.7  # closer than this x the start's shortest distance: the MD exploded
    max_temperature_factor: float = 10.0  # instantaneous T above factor * T (and 3000 K) means exploded
    seed: int = 0


@dataclass
class Frame:
    step: int
    positions: np.ndarray
    cell: np.ndarray
    model_deviation: float
    energy_deviation: float
    energy: float
    temperature: float
    frame_class: FrameClass


@dataclass
class Trajectory:
    symbols: list[str]
    frames: list[Frame] = field(default_factory=list)
    stopped_early: bool = False
    exploded: bool = False
    stop_reason: str | None = None

    def atoms(self, index: int) -> Atoms:
        frame = self.frames[index]
        return Atoms(self.symbols, positions=frame.positions, cell=frame.cell, pbc=True)

    def counts(self) -> dict[str, int]:
        out = {c.value: 0 for c in FrameClass}
        for frame in self.frames:
            out[frame.frame_class.value] += 1
        return out

    def to_blob(self) -> dict:
        return {
            "symbols": self.symbols,
            "steps": [f.step for f in self.frames],
            "positions": [f.positions.tolist() for f in self.frames],
            "cells": [f.cell.tolist() for f in self.frames],
            "model_deviation": [f.model_deviation for f in self.frames],
            "energy_deviation": [f.energy_deviation for f in self.frames],
            "energy": [f.energy for f in self.frames],
            "temperature": [f.temperature for f in self.frames],
            "frame_class": [f.frame_class.value for f in self.frames],
            "stopped_early": self.stopped_early,
            "exploded": self.exploded,
            "stop_reason": self.stop_reason,
        }


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return float("inf")
    distances = atoms.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    return float(distances.min())


def _explosion(atoms: Atoms, settings: ExplorationSettings, min_allowed: float) -> str | None:
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        return "non-finite positions"
    dmin = _min_distance(atoms)
    if dmin < min_allowed:
        return f"atoms {dmin:.2f} Å apart (< {min_allowed:.2f} Å)"
    temperature = atoms.get_temperature()
    limit = max(settings.max_temperature_factor * settings.temperature, 3000.0)
    if not np.isfinite(temperature) or temperature > limit:
        return f"temperature {temperature:.0f} K (> {limit:.0f} K)"
    return None


def run_exploration(atoms: Atoms, calculator, trust: TrustLevels, settings: ExplorationSettings) -> Trajectory:
    """Langevin NVT from ``atoms`` with a committee calculator; one frame every ``sample_every`` steps.

    The run stops early after ``stop_after_failed`` consecutive frames beyond ``trust.hi``, and when the
    MD explodes (non-finite positions, two atoms closer than ``min_distance_factor`` times the shortest
    distance in the start structure, runaway temperature); the frames so far are kept.
    """
    atoms = atoms.copy()
    start_dmin = _min_distance(atoms)
    # a start structure that is already squeezed is judged against 1 Å rather than itself
    min_allowed = settings.min_distance_factor * (start_dmin if np.isfinite(start_dmin) and start_dmin > 1.0 else 1.0)
    atoms.calc = calculator
    rng = np.random.default_rng(settings.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature,
        friction=settings.friction_per_fs / units.fs,
        fixcm=False,  # the centre of mass was zeroed above (Stationary)
        rng=rng,
    )
    traj = Trajectory(symbols=atoms.get_chemical_symbols())
    failed_in_a_row = 0
    step = 0
    while True:
        reason = _explosion(atoms, settings, min_allowed)
        if reason is None:
            try:
                atoms.get_forces()
            except Exception as exc:  # noqa: BLE001 - a crash of the potential ends this trajectory only
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            traj.exploded, traj.stopped_early, traj.stop_reason = True, True, f"MD exploded at step {step}: {reason}"
            logger.warning("%s", traj.stop_reason)
            break
        results = atoms.calc.results
        deviation = float(results["model_deviation"])
        frame_class = trust.classify(deviation)
        traj.frames.append(
            Frame(
                step=step,
                positions=atoms.get_positions(),
                cell=np.array(atoms.get_cell()),
                model_deviation=deviation,
                energy_deviation=float(results["energy_deviation"]),
                energy=float(results["energy"]),
                temperature=float(atoms.get_temperature()),
                frame_class=frame_class,
            )
        )
        failed_in_a_row = failed_in_a_row + 1 if frame_class == FrameClass.failed else 0
        if failed_in_a_row >= settings.stop_after_failed:
            traj.stopped_early = True
            traj.stop_reason = f"model deviation {deviation:.3f} eV/Å beyond hi={trust.hi} at step {step}"
            break
        if step >= settings.steps:
            break
        n = min(settings.sample_every, settings.steps - step)
        try:
            dyn.run(n)
        except Exception as exc:  # noqa: BLE001
            traj.exploded, traj.stopped_early = True, True
            traj.stop_reason = f"MD failed after step {step}: {type(exc).__name__}: {exc}"
            logger.warning("%s", traj.stop_reason)
            break
        step += n
    return traj
