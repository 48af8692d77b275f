"""The problems of benchmarks/peer_dpgen.py and the frames both tools share (run in almat's .venv).

For each problem, written once under ``DATA/<problem>/`` (reused while ``data.json`` matches):
- ``initial``: the campaign's own initial structures (almat's ``perturbed_structures`` with the campaign's
  ``initial`` settings and seed, so almat's ``initial`` job makes the very same frames), oracle-labelled;
- ``test``: frames of oracle-driven MD at every condition of the schedule (seeded), never explored by
  either tool;
- ``pool``: more oracle MD frames (another seed), from which the control's random label sets are drawn.
Each set is an extended XYZ file (almat) and a deepmd/npy folder per start structure (DP-GEN, ``dp``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

ROOT = Path(__file__).resolve().parents[3]
STRUCTURES = ROOT / "tests" / "test_data" / "structures"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One exploration stage = one iteration of both tools."""

    temperatures: tuple[float, ...]
    ensemble: str = "nvt"
    pressures_bar: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    oracle: str  # emt | xtb (fp_ase.py's names)
    structures: tuple[str, ...]  # "bulk:Cu" or a CIF under tests/test_data/structures
    schedule: tuple[Stage, ...]
    n_initial: int  # per start structure
    rattle_std: float
    max_strain: float
    md_steps: int
    sample_every: int
    timestep_fs: float
    n_test_per_condition: int
    n_pool_per_condition: int
    almat_trust: tuple[float, float]
    dpgen_trust: tuple[float, float]
    max_select: int  # oracle calls for candidates per iteration (both tools)

    def start_atoms(self) -> list[Atoms]:
        from ase.build import bulk

        out = []
        for s in self.structures:
            out.append(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)) if s == "bulk:Cu"
                       else read(STRUCTURES / s))
        return out

    def calculator(self):
        if self.oracle == "emt":
            from ase.calculators.emt import EMT

            return EMT()
        from tblite.ase import TBLite

        return TBLite(method="GFN1-xTB", verbosity=0)


PROBLEMS = {
    "cu": Problem("cu", "emt", ("bulk:Cu",),
                  (Stage((300.0, 600.0)), Stage((900.0, 1200.0)), Stage((300.0, 600.0, 900.0, 1200.0)),
                   Stage((300.0, 600.0, 900.0, 1200.0))),
                  n_initial=16, rattle_std=0.08, max_strain=0.02, md_steps=300, sample_every=10, timestep_fs=2.0,
                  n_test_per_condition=15, n_pool_per_condition=30, almat_trust=(0.06, 0.40),
                  dpgen_trust=(0.05, 0.15), max_select=8),
    "lpsc": Problem("lpsc", "xtb", ("Li6PS5Cl_enumerated_rank0.cif", "Li6PS5Cl_enumerated_rank1.cif"),
                    (Stage((300.0, 600.0)), Stage((600.0, 900.0)), Stage((900.0,), "npt", (1.0,)),
                     Stage((900.0,), "npt", (1.0,))),
                    n_initial=12, rattle_std=0.05, max_strain=0.03, md_steps=300, sample_every=10, timestep_fs=1.0,
                    n_test_per_condition=10, n_pool_per_condition=20, almat_trust=(0.10, 0.60),
                    dpgen_trust=(0.10, 0.30), max_select=8),
}


@dataclasses.dataclass
class SharedData:
    folder: Path
    initial: list[list[Atoms]]  # per start structure
    test: list[list[Atoms]]
    pool: list[list[Atoms]]

    def summary(self) -> dict[str, Any]:
        return {k: sum(len(x) for x in getattr(self, k)) for k in ("initial", "test", "pool")} | {
            "folder": str(self.folder)}


def initial_frames(problem: Problem, seed: int = 0) -> list[list[Atoms]]:
    """The campaign's initial structures, as almat's ``initial_structures`` job makes them."""
    from almat.campaign.initial import perturbed_structures
    from almat.schemas import to_atoms, to_structure

    rng = np.random.default_rng(seed)
    return [[to_atoms(s) for s in perturbed_structures(to_structure(a), problem.n_initial, problem.rattle_std,
                                                       problem.max_strain, rng)] for a in problem.start_atoms()]


def label(frames: list[Atoms], calc) -> list[Atoms]:
    out = []
    for a in frames:
        b = a.copy()
        b.calc = calc
        e, f, s = b.get_potential_energy(), b.get_forces(), b.get_stress(voigt=False)
        b.calc = SinglePointCalculator(b, energy=e, forces=f, stress=s)
        out.append(b)
    return out


def oracle_md(problem: Problem, start: Atoms, stage: Stage, n_frames: int, seed: int) -> list[Atoms]:
    """``n_frames`` labelled frames per condition of a stage from oracle-driven MD (after a burn-in)."""
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    rng = np.random.default_rng(seed)
    out = []
    for t_k in stage.temperatures:
        for p_bar in (stage.pressures_bar or (None,)):
            atoms = start.copy()
            atoms.calc = problem.calculator()
            MaxwellBoltzmannDistribution(atoms, temperature_K=t_k, rng=rng)
            Stationary(atoms)
            dt = problem.timestep_fs * units.fs
            dyn = (Langevin(atoms, dt, temperature_K=t_k, friction=0.02 / units.fs, fixcm=False, rng=rng)
                   if p_bar is None else
                   NPTBerendsen(atoms, dt, temperature_K=t_k, pressure_au=p_bar * units.bar, taut=100 * units.fs,
                                taup=500 * units.fs, compressibility_au=4.57e-5 / units.bar))
            dyn.run(100)  # burn-in
            for _ in range(n_frames):
                dyn.run(problem.sample_every)
                out += label([atoms], problem.calculator())
    return out


def _md_set(problem: Problem, start: Atoms, stages: Sequence[Stage], n_frames: int, seed: int) -> list[Atoms]:
    """One start structure's frames of one set: ``n_frames`` per condition of every stage (stage i: seed + 10 i)."""
    return [a for i, st in enumerate(stages) for a in oracle_md(problem, start, st, n_frames, seed + 10 * i)]


def map_tasks(fn: Callable[..., Any], tasks: list[tuple], jobs: int, log: Callable[[str], None], name: str) -> list:
    """``fn(*task)`` for every task, in order, logging each one done; ``jobs`` > 1 runs them in that many
    processes (spawned)."""
    parallel = jobs > 1 and len(tasks) > 1
    pool = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) if parallel else None
    with pool or contextlib.nullcontext():
        futures = [pool.submit(fn, *task) for task in tasks] if pool else None
        out = []
        for i, task in enumerate(tasks):
            out.append(futures[i].result() if futures else fn(*task))
            log(f"[{name}] shared frames: {i + 1} of {len(tasks)} sets done")
        return out


def write_data(problem: Problem, folder: Path, quick: bool, log: Callable[[str], None] = print,
               jobs: int = 1) -> SharedData:
    """The shared frames of a problem, written once (reused while the settings match); ``jobs`` processes
    run the oracle MD (one task per start structure and set)."""
    stages = problem.schedule[:2] if quick else problem.schedule
    n_test, n_pool = (min(10, problem.n_test_per_condition), min(15, problem.n_pool_per_condition)) if quick else (
        problem.n_test_per_condition, problem.n_pool_per_condition)
    key = {"problem": dataclasses.asdict(problem), "stages": len(stages), "n": [n_test, n_pool], "version": 1}
    meta = folder / "data.json"
    if meta.exists() and json.loads(meta.read_text()) == json.loads(json.dumps(key)):
        return load_data(folder, len(problem.structures))
    log(f"[{problem.name}] writing the shared frames to {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    starts = problem.start_atoms()
    initial = [label(frames, problem.calculator()) for frames in initial_frames(problem)]
    # one task per start structure and set, each with its own seeds: the frames do not depend on `jobs`
    tasks = [(problem, start, stages, n, base + k) for base, n in ((1000, n_test), (2000, n_pool))
             for k, start in enumerate(starts)]
    done = map_tasks(_md_set, tasks, jobs, log, problem.name)
    test, pool = done[: len(starts)], done[len(starts):]
    for name, sets in (("initial", initial), ("test", test), ("pool", pool)):
        for k, frames in enumerate(sets):
            write(folder / f"{name}_{k}.extxyz", frames)
            write_deepmd_npy(frames, folder / f"{name}_{k}")
    meta.write_text(json.dumps(key))
    return SharedData(folder, initial, test, pool)


def load_data(folder: Path, n_structures: int) -> SharedData:
    sets = {name: [read(folder / f"{name}_{k}.extxyz", ":") for k in range(n_structures)]
            for name in ("initial", "test", "pool")}
    return SharedData(folder, **sets)


def write_deepmd_npy(frames: list[Atoms], folder: Path, type_map: list[str] | None = None) -> None:
    """A deepmd/npy system (one composition): type.raw, type_map.raw, set.000/{coord,box,energy,force,virial}."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = frames[0].get_chemical_symbols()
    type_map = type_map or sorted(set(symbols))
    (folder / "type_map.raw").write_text("\n".join(type_map) + "\n")
    (folder / "type.raw").write_text("\n".join(str(type_map.index(s)) for s in symbols) + "\n")
    sets = folder / "set.000"
    sets.mkdir(exist_ok=True)
    np.save(sets / "coord.npy", np.array([a.positions.reshape(-1) for a in frames]))
    np.save(sets / "box.npy", np.array([np.asarray(a.cell).reshape(-1) for a in frames]))
    np.save(sets / "energy.npy", np.array([a.get_potential_energy() for a in frames]))
    np.save(sets / "force.npy", np.array([a.get_forces().reshape(-1) for a in frames]))
    np.save(sets / "virial.npy", np.array([(-a.get_stress(voigt=False) * a.get_volume()).reshape(-1) for a in frames]))


def random_label_sets(data: SharedData, sizes: list[int], seed: int) -> dict[int, list[list[Atoms]]]:
    """For each size: the initial frames plus random pool frames up to that size (nested sets)."""
    rng = np.random.default_rng(seed)
    flat = [(k, a) for k, frames in enumerate(data.pool) for a in frames]
    order = rng.permutation(len(flat))
    n_init = sum(len(x) for x in data.initial)
    out = {}
    for size in sizes:
        picked = [flat[i] for i in order[: max(0, min(size - n_init, len(flat)))]]
        out[size] = [list(data.initial[k]) + [a for j, a in picked if j == k] for k in range(len(data.initial))]
    return out
