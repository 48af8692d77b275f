"""Exploration MD with a committee calculator, recording the model deviation of every sampled frame.

Ensembles (``ENSEMBLES``): ``nvt`` (ASE's Langevin), ``npt`` (ASE's isotropic MTK barostat with a
Nose-Hoover chain, ``IsotropicMTKNPT``) and ``npt_aniso`` (ASE's ``MTKNPT``, every cell parameter free).
The cell is stored with every frame.

Many walkers at once: :func:`run_walkers` advances every walker in its own thread with its own ASE
integrator and random generator, and the walkers' force calls meet in one :class:`_Batcher`, which
evaluates the committee on all of them in one batched forward per model (neighbour lists and collation
done once and shared by the models). A walker therefore follows exactly the trajectory it would follow
alone (same seed, same frames up to float rounding of the batched forward), and one that fails or
explodes stops alone while the others go on.

What drives the MD (``DRIVES``): ``mean``, the committee's mean forces at every step; ``first``, the first
member's forces (as DP-GEN drives LAMMPS with the first of its graphs), the others evaluated only on the
steps whose frame is recorded (every ``sample_every``): about ``n_models`` times cheaper between recorded
frames. A shallow ensemble's mean already costs one model: it drives with its mean either way.
"""

from __future__ import annotations

import base64
import copy
import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from almat.uncertainty.deviation import FrameClass, TrustLevels

logger = logging.getLogger(__name__)

#: ensemble name -> what drives it
ENSEMBLES = {"nvt": "Langevin", "npt": "IsotropicMTKNPT", "npt_aniso": "MTKNPT"}
#: what drives the MD: the committee's mean forces, or its first member's (see the module doc)
DRIVES = ("mean", "first")


@dataclass
class ExplorationSettings:
    temperature: float = 300.0  # K
    steps: int = 300
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.02  # Langevin (nvt)
    sample_every: int = 10
    stop_after_failed: int = 1  # stop after this many consecutive frames beyond hi
    min_distance_factor: float = 0.7  # closer than this x the start's shortest distance: the MD exploded
    max_temperature_factor: float = 10.0  # instantaneous T above factor * T (and 3000 K) means exploded
    seed: int = 0
    ensemble: str = "nvt"
    pressure_bar: float | None = None  # npt ensembles
    thermostat_time_fs: float = 100.0  # Nose-Hoover chain of the npt ensembles
    barostat_time_fs: float = 500.0
    max_volume_factor: float = 3.0  # npt: a volume beyond [V0 / f, f V0] means the cell collapsed or exploded

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; valid: {', '.join(ENSEMBLES)}")
        if self.ensemble != "nvt" and self.pressure_bar is None:
            raise ValueError(f"ensemble {self.ensemble} needs a pressure")

    @property
    def npt(self) -> bool:
        return self.ensemble != "nvt"


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
    stress: np.ndarray | None = None  # Voigt, eV/Å³ (npt)


def encode_array(a) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float64)
    return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d) -> np.ndarray:
    if isinstance(d, dict) and "b64" in d:
        return np.frombuffer(base64.b64decode(d["b64"]), dtype=d["dtype"]).reshape(d["shape"])
    return np.asarray(d, dtype=float)


def decode_trajectory(blob: dict) -> dict:
    """A stored trajectory (compact or the older lists of floats) with numpy positions, cells (and stress)."""
    out = dict(blob)
    for key in ("positions", "cells", "stress"):
        if out.get(key) is not None:
            out[key] = decode_array(out[key])
    return out


@dataclass
class Trajectory:
    symbols: list[str]
    frames: list[Frame] = field(default_factory=list)
    stopped_early: bool = False
    exploded: bool = False
    stop_reason: str | None = None
    pbc: tuple[bool, bool, bool] = (True, True, True)

    def atoms(self, index: int) -> Atoms:
        frame = self.frames[index]
        return Atoms(self.symbols, positions=frame.positions, cell=frame.cell, pbc=self.pbc)

    def counts(self) -> dict[str, int]:
        out = {c.value: 0 for c in FrameClass}
        for frame in self.frames:
            out[frame.frame_class.value] += 1
        return out

    def to_blob(self) -> dict:
        """Compact: positions and cells as base64 float64 arrays (``decode_trajectory`` reads them)."""
        n, stress = len(self.frames), [f.stress for f in self.frames]
        blob = {
            "format": 2,
            "symbols": self.symbols,
            "pbc": list(self.pbc),
            "steps": [f.step for f in self.frames],
            "positions": encode_array(np.reshape([f.positions for f in self.frames], (n, len(self.symbols), 3))),
            "cells": encode_array(np.reshape([f.cell for f in self.frames], (n, 3, 3))),
            "model_deviation": [f.model_deviation for f in self.frames],
            "energy_deviation": [f.energy_deviation for f in self.frames],
            "energy": [f.energy for f in self.frames],
            "temperature": [f.temperature for f in self.frames],
            "frame_class": [f.frame_class.value for f in self.frames],
            "stopped_early": self.stopped_early,
            "exploded": self.exploded,
            "stop_reason": self.stop_reason,
        }
        if n and all(s is not None for s in stress):
            blob["stress"] = encode_array(np.reshape(stress, (n, 6)))
        return blob


@dataclass
class Walker:
    """One MD run of an exploration: its start, settings and trust levels."""

    atoms: Atoms
    settings: ExplorationSettings
    trust: TrustLevels
    name: str = ""

    def __post_init__(self) -> None:
        if self.settings.npt and not np.all(self.atoms.pbc):
            raise ValueError(f"{self.name or 'walker'}: {self.settings.ensemble} needs a cell periodic along a, b "
                             f"and c; {self.atoms.get_chemical_formula()} has pbc={self.atoms.pbc.tolist()} "
                             "(a cluster has no pressure): use nvt")


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return float("inf")
    distances = atoms.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    return float(distances.min())


def _explosion(atoms: Atoms, settings: ExplorationSettings, min_allowed: float, volume0: float) -> str | None:
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(atoms.cell.array)):
        return "non-finite positions or cell"
    if settings.npt:
        ratio = atoms.get_volume() / volume0
        f = settings.max_volume_factor
        if not 1 / f <= ratio <= f:
            return f"cell volume {ratio:.2f} x the start's (outside [{1 / f:.2f}, {f:.2f}]): the cell " + (
                "exploded" if ratio > 1 else "collapsed")
    dmin = _min_distance(atoms)
    if dmin < min_allowed:
        return f"atoms {dmin:.2f} Å apart (< {min_allowed:.2f} Å)"
    temperature = atoms.get_temperature()
    limit = max(settings.max_temperature_factor * settings.temperature, 3000.0)
    if not np.isfinite(temperature) or temperature > limit:
        return f"temperature {temperature:.0f} K (> {limit:.0f} K)"
    return None


def _dynamics(atoms: Atoms, s: ExplorationSettings, rng: np.random.Generator):
    dt = s.timestep_fs * units.fs
    if s.ensemble == "nvt":
        # the centre of mass was zeroed (Stationary)
        return Langevin(atoms, timestep=dt, temperature_K=s.temperature, friction=s.friction_per_fs / units.fs,
                        fixcm=False, rng=rng)
    from ase.md import nose_hoover_chain

    cls = getattr(nose_hoover_chain, ENSEMBLES[s.ensemble])
    return cls(atoms, timestep=dt, temperature_K=s.temperature, pressure_au=s.pressure_bar * units.bar,
               tdamp=s.thermostat_time_fs * units.fs, pdamp=s.barostat_time_fs * units.fs)


def run_exploration(atoms: Atoms, calculator, trust: TrustLevels, settings: ExplorationSettings) -> Trajectory:
    """MD from ``atoms`` with a committee calculator (``settings.ensemble``); one frame every ``sample_every``.

    The run stops early after ``stop_after_failed`` consecutive frames beyond ``trust.hi``, and when the
    MD explodes (non-finite positions, two atoms closer than ``min_distance_factor`` times the shortest
    distance in the start structure, runaway temperature, an NPT cell that collapsed or exploded, an
    error of the potential); the frames so far are kept.
    """
    walker = Walker(atoms, settings, trust)
    atoms = atoms.copy()
    traj = Trajectory(symbols=atoms.get_chemical_symbols(), pbc=tuple(bool(p) for p in atoms.pbc))
    start_dmin = _min_distance(atoms)
    # a start structure that is already squeezed is judged against 1 Å rather than itself
    min_allowed = settings.min_distance_factor * (start_dmin if np.isfinite(start_dmin) and start_dmin > 1.0 else 1.0)
    volume0 = atoms.get_volume() if settings.npt else 1.0
    atoms.calc = calculator
    rng = np.random.default_rng(settings.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature, rng=rng)
    Stationary(atoms)
    dyn = _dynamics(atoms, settings, rng)
    failed_in_a_row = 0
    step = 0
    while True:
        reason = _explosion(atoms, settings, min_allowed, volume0)
        if reason is None:
            try:
                atoms.get_forces()
            except Exception as exc:  # noqa: BLE001 - a crash of the potential ends this trajectory only
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            traj.exploded, traj.stopped_early, traj.stop_reason = True, True, f"MD exploded at step {step}: {reason}"
            logger.warning("%s%s", f"{walker.name}: " if walker.name else "", traj.stop_reason)
            break
        results = atoms.calc.results
        deviation = float(results["model_deviation"])
        frame_class = trust.classify(deviation)
        traj.frames.append(Frame(
            step=step, positions=atoms.get_positions(), cell=np.array(atoms.get_cell()), model_deviation=deviation,
            energy_deviation=float(results["energy_deviation"]), energy=float(results["energy"]),
            temperature=float(atoms.get_temperature()), frame_class=frame_class,
            stress=np.array(results["stress"]) if settings.npt and "stress" in results else None))
        failed_in_a_row = failed_in_a_row + 1 if frame_class == FrameClass.failed else 0
        if failed_in_a_row >= settings.stop_after_failed:
            traj.stopped_early = True
            traj.stop_reason = f"model deviation {deviation:.3f} eV/Å beyond hi={trust.hi} at step {step}"
            break
        if step >= settings.steps:
            break
        n = min(settings.sample_every, settings.steps - step)
        try:
            if getattr(calculator, "cheap_steps", False) and n > 1:  # deviations only where a frame is recorded
                calculator.deviation = False
                dyn.run(n - 1)
                calculator.deviation = True
                dyn.run(1)
            else:
                dyn.run(n)
        except Exception as exc:  # noqa: BLE001
            traj.exploded, traj.stopped_early = True, True
            traj.stop_reason = f"MD failed after step {step}: {type(exc).__name__}: {exc}"
            logger.warning("%s", traj.stop_reason)
            break
        step += n
    return traj


# -- many walkers, one batched committee forward per step ------------------------------------------------


class _Batcher:
    """Where the walkers' force calls meet: when every running walker has asked, the thread that serves
    the batcher (``serve``: the caller of ``run_walkers``) evaluates the committee on all frames at once and
    wakes the walkers. One thread runs every torch call, so torch keeps one team of OpenMP threads, sized by
    that thread's ``torch.set_num_threads`` (``almat.threads``). A batch that fails is evaluated frame by
    frame, so that only the walkers whose frames fail get the error."""

    def __init__(self, committee, n_walkers: int, drive: str = "mean"):
        if drive not in DRIVES:
            raise ValueError(f"unknown drive {drive!r}; valid: {', '.join(DRIVES)}")
        self.committee = committee
        self.cond = threading.Condition()
        self.active = n_walkers
        self.pending: dict[int, tuple[Atoms, bool, bool]] = {}
        shallow = bool(getattr(committee, "shallow", False))
        self.first = first_member(committee) if drive == "first" and not shallow else None
        self.cheap_steps = shallow or self.first is not None  # see ``run_exploration``
        self.results: dict[int, dict | Exception] = {}
        self.n_calls = 0

    def compute(self, key: int, atoms: Atoms, stress: bool, deviation: bool = True) -> dict:
        """A walker's force call: waits for the batch that holds its frame."""
        with self.cond:
            self.pending[key] = (atoms, stress, deviation)
            self.cond.notify_all()
            while key not in self.results:
                self.cond.wait()
            result = self.results.pop(key)
        if isinstance(result, Exception):
            raise result
        return result

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def serve(self) -> None:
        """Evaluate each batch once every running walker has asked; returns when no walker is left."""
        with self.cond:
            while True:
                while self.active > 0 and (not self.pending or len(self.pending) < self.active):
                    self.cond.wait()
                if self.pending:
                    self._flush()
                elif self.active <= 0:
                    return

    def _flush(self) -> None:
        keys = list(self.pending)
        frames = [self.pending[k][0] for k in keys]
        stress = any(self.pending[k][1] for k in keys)
        # the mean only when no walker records this frame (a committee that can skip deviations: cheap_steps)
        kw = {} if any(self.pending[k][2] for k in keys) else {"deviation": False}
        self.pending = {}
        self.n_calls += 1
        try:
            out = self._evaluate(frames, stress, kw)
        except Exception:  # noqa: BLE001 - find the frame(s) that fail
            out = []
            for atoms in frames:
                try:
                    out.append(self._evaluate([atoms], stress, kw)[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
        self.results.update(zip(keys, out))
        self.cond.notify_all()

    def _evaluate(self, frames: list[Atoms], stress: bool, kw: dict) -> list[dict]:
        """Calculator results of ``frames``: the committee's, or, driven by the first member, its energy,
        forces (and stress) with the committee's deviations where they are asked for."""
        if self.first is None:
            pred = self.committee.evaluate(frames, compute_stress=stress, **kw)
            return [pred.results(i, stress) for i in range(len(frames))]
        if kw:  # no frame recorded: the first member alone
            pred = self.first.learner.evaluate(self.first, frames, compute_stress=stress)
            return [member_results(pred, i, 0, stress) for i in range(len(frames))]
        pred = self.committee.evaluate(frames, compute_stress=stress)
        return [{**pred.results(i, stress), **member_results(pred, i, 0, stress)} for i in range(len(frames))]


class _BatchedCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, batcher: _Batcher, key: int, stress: bool):
        super().__init__()
        self.batcher, self.key, self.stress = batcher, key, stress
        self.cheap_steps, self.deviation = batcher.cheap_steps, True

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = dict(self.batcher.compute(self.key, self.atoms, self.stress, self.deviation))


def first_member(committee):
    """The committee's first member alone, as a committee its learner evaluates (``drive: first``)."""
    one = copy.copy(committee)
    one.models, one.model_ids, one.n_members = committee.models[:1], committee.model_ids[:1], 1
    one.cache, one.batched = {}, False
    return one


def member_results(pred, frame: int, member: int, stress: bool) -> dict:
    """ASE calculator results of one member of a ``CommitteePrediction`` on ``frame``."""
    energy = float(pred.energies[member, frame])
    out = {"energy": energy, "free_energy": energy, "forces": pred.forces[frame][member]}
    if stress and pred.stresses is not None:
        out["stress"] = pred.stresses[member, frame]
    return out


def run_walkers(walkers: list[Walker], committee, drive: str = "mean") -> tuple[list[Trajectory], dict]:
    """Advance every walker together (see the module doc), driven by the committee's mean or its first
    member (``drive``, ``DRIVES``); returns their trajectories, in order, and ``{"batched_calls": n}``.
    ``committee`` needs ``evaluate(atoms_list, compute_stress)`` returning a ``CommitteePrediction``
    (``almat.learner.committee``)."""
    batcher = _Batcher(committee, len(walkers), drive)
    out: list[Trajectory | None] = [None] * len(walkers)

    def work(i: int) -> None:
        w = walkers[i]
        try:
            out[i] = run_exploration(w.atoms, _BatchedCalculator(batcher, i, w.settings.npt), w.trust, w.settings)
        except Exception as exc:  # noqa: BLE001 - this walker stops, the others go on
            out[i] = Trajectory(symbols=w.atoms.get_chemical_symbols(), stopped_early=True, exploded=True,
                                stop_reason=f"walker failed: {type(exc).__name__}: {exc}")
            logger.warning("walker %s: %s", w.name or i, out[i].stop_reason)
        finally:
            batcher.leave()

    threads = [threading.Thread(target=work, args=(i,), name=f"walker-{i}", daemon=True) for i in range(len(walkers))]
    for t in threads:
        t.start()
    batcher.serve()
    for t in threads:
        t.join()
    return out, {"batched_calls": batcher.n_calls}
