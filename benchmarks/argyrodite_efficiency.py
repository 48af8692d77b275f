"""Argyrodite label efficiency: a target where selection matters (issue 23, part 5).

System: enumerated Li6PS5Cl orderings (13-atom primitive cells, and 26-atom doubled cells whose two halves carry
two different orderings: two sizes), GFN1-xTB (tblite) as the oracle, four conditions: NVT at 300, 600 and
900 K, and NPT at 900 K and 1 GPa (ASE's isotropic MTK barostat).

Data, made once and cached under ``benchmark_results/argyrodite_efficiency_data/`` (the file name carries a hash
of everything that made it, so a rerun with the same settings reuses it; ``--data-seed`` changes it):

- **oracle MD** per cell and condition: a burn-in, then two branches with fresh Maxwell-Boltzmann velocities:
  the *test* branch gives the held-out frames, the *snapshot* branch gives the frames a user without active
  learning would train on (random oracle-MD snapshots). Every frame carries the oracle's energy and forces
  of the MD step itself. The test set is never drawn from any learner's MD.

Every run works as a campaign does (``run_one``): it trains on its *base set* (``n_base`` random oracle-MD
snapshots, the same for every method of a seed), then per iteration explores afresh with its own current
committee (or single model): MD from every cell at every condition, ``explore_steps`` each, a frame every
``explore_every`` steps, frames beyond ``trust_hi`` dropped and their walker stopped. It picks ``budget`` of
those frames, labels them with GFN1-xTB (energy, forces, stress) and trains again, warm-started. Every oracle
call counts as a label, the base set included.

Methods (``METHODS``):

- ``committee``: MACE committee from scratch, highest max force deviation among its explored frames;
- ``random-md``: the committee, uniformly random oracle-MD snapshots instead (what a user without active
  learning trains on; their labels come with the MD);
- ``random-explored``: the committee, uniformly random picks among its own explored frames (exploration
  without selection);
- ``foundation``: CHGNet (bundled weights) fine-tuned, committee acquisition;
- ``shallow``: one shallow-ensemble MACE (heads as members), the same acquisition;
- ``llpr``: one MACE model with its LLPR uncertainty, the same acquisition;
- ``committee-stress``: ``committee`` trained on the labels' stresses too (``stress_weight`` 0.1 GPa²), to see
  whether the NPT default slows convergence;
- ``committee-window``: the committee as ``workflows/li6ps5cl_npt.yaml`` selects: candidates are the frames
  with a deviation in [0.08, 0.5) eV/Å (its trust levels), picked by the ``diverse`` policy (max deviation,
  near-duplicates filtered); random picks when no frame is a candidate (the campaign's guard).

Score: the held-out force RMSE of the committee mean. The target (``--target``, or by default the worst final
RMSE of the ``committee`` runs, a value every AL seed reaches) gives ``labels to target`` (interpolated in
log RMSE, ``label_efficiency.labels_to_target``); a run that never reaches it counts as "more than its last
label count", so a ratio against it is a lower bound. The error at equal labels is the geometric mean over
seeds at each label count of the grid.

    python benchmarks/argyrodite_efficiency.py --quick     # two 13-atom cells, 1 seed, 2 iterations (< 10 min)
    python benchmarks/argyrodite_efficiency.py             # 4 cells, 2 seeds (hours on 2 cores)
    python benchmarks/argyrodite_efficiency.py --methods committee,random-md --seeds 3
    python benchmarks/argyrodite_efficiency.py --resume        # run what a stopped run with the same settings left
    python benchmarks/argyrodite_efficiency.py --resummarise   # table and plot again from the JSON (a stopped run too)

Writes ``argyrodite_efficiency.json`` (after every finished run, so a stopped run leaves what it had) and
``argyrodite_efficiency.png`` (learning curves) to ``benchmark_results/argyrodite_efficiency[_quick]/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

sys.path.insert(0, str(Path(__file__).parent))
from curves import error_at  # noqa: E402
from foundation_start import chgnet_committee_trainer  # noqa: E402
from label_efficiency import (  # noqa: E402
    labels_to_target, mace_committee_trainer, plot_method_comparison,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark_results"
CIF = ROOT / "workflows" / "data" / "Li6PS5Cl_argyrodite.cif"
GPA_IN_BAR = 1.0e4
#: the plot's x axis: labels trained on, not oracle calls (a random oracle-MD snapshot also paid its MD steps)
XLABEL = "labels trained on (oracle calls: see the table)"

#: name -> (ensemble, temperature K, pressure bar or None)
CONDITIONS: dict[str, tuple[str, float, float | None]] = {
    "nvt-300K": ("nvt", 300.0, None),
    "nvt-600K": ("nvt", 600.0, None),
    "nvt-900K": ("nvt", 900.0, None),
    "npt-900K-1GPa": ("npt", 900.0, GPA_IN_BAR),
}

#: method -> learner ("committee", "chgnet", or an uncertainty kind of one MACE model: "shallow", "llpr"),
#: acquisition (``almat.select``), what it picks from ("explored": a fresh exploration with its own committee
#: every iteration; "oracle-md": the oracle-MD snapshots), and optionally the MACE ``stress_weight`` (GPa²)
METHODS: dict[str, dict[str, str]] = {
    "committee": {"learner": "committee", "acquisition": "committee", "pool": "explored"},
    "random-md": {"learner": "committee", "acquisition": "random", "pool": "oracle-md"},
    "random-explored": {"learner": "committee", "acquisition": "random", "pool": "explored"},
    "foundation": {"learner": "chgnet", "acquisition": "committee", "pool": "explored"},
    "shallow": {"learner": "shallow", "acquisition": "committee", "pool": "explored"},
    "llpr": {"learner": "llpr", "acquisition": "committee", "pool": "explored"},
    "committee-stress": {"learner": "committee", "acquisition": "committee", "pool": "explored",
                         "stress_weight": 0.1},
    "committee-window": {"learner": "committee", "acquisition": "diverse", "pool": "explored",
                         "window": (0.08, 0.5)},
}


@dataclass
class DataSpec:
    """The cells and the oracle MD (every number that changes the cached data)."""

    cells: list[list[int]] = field(default_factory=lambda: [[0], [3], [0, 1], [0, 3]])  # enumeration ranks
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    timestep_fs: float = 2.0
    burn_in: int = 20  # oracle MD steps before the branches
    test_frames: int = 3  # per cell and condition, one every test_every steps
    test_every: int = 6
    snapshot_frames: int = 5
    snapshot_every: int = 5
    data_seed: int = 0

    def key(self) -> str:
        """The hash of the oracle-MD settings (not of the cells and conditions: each cell and condition has a
        file of its own, with its seed, so a run on fewer cells reuses the files of a run on more)."""
        same = {k: v for k, v in asdict(self).items() if k not in ("cells", "conditions")}
        return hashlib.sha1(json.dumps(same, sort_keys=True).encode()).hexdigest()[:10]

    def seed(self, cell_name: str, condition: str) -> int:
        """The oracle MD seed of a cell and condition, the same in every run of this data seed: 10 x the cell's
        place in the default cells (others: a hash) + the condition's place in ``CONDITIONS``."""
        default = ["r" + "+r".join(map(str, c)) for c in DataSpec.__dataclass_fields__["cells"].default_factory()]
        cell = default.index(cell_name) if cell_name in default else 10 + int(
            hashlib.sha1(cell_name.encode()).hexdigest()[:6], 16) % 89
        return self.data_seed * 1000 + 10 * cell + list(CONDITIONS).index(condition)


@dataclass
class BenchSettings:
    data: DataSpec = field(default_factory=DataSpec)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    n_base: int = 6  # random oracle-MD snapshots every run of a seed starts from (its initial data)
    budget: int = 6  # labels per iteration
    iterations: int = 5
    random_iterations: int = 7  # the random baselines run longer, so that a large ratio can be seen
    n_models: int = 2
    n_heads: int = 4
    explore_steps: int = 100  # per cell and condition, every iteration
    explore_every: int = 10
    trust_hi: float = 1.0  # eV/Å: explored frames at or beyond are dropped (and stop the walker)
    mace: dict[str, Any] = field(default_factory=lambda: {
        "num_channels": 8, "radial_mlp": [16, 16], "epochs": 30, "warm_start_epochs": 15, "batch_size": 4,
        "eval_every": 5})
    chgnet: dict[str, Any] = field(default_factory=lambda: {"epochs": 4, "warm_start_epochs": 2, "batch_size": 4})
    target: float | None = None
    jobs: int = 2

    @classmethod
    def quick(cls) -> "BenchSettings":
        data = DataSpec(cells=[[0], [3]], burn_in=4, test_frames=2, test_every=3, snapshot_frames=3,
                        snapshot_every=3)
        return cls(data=data, seeds=[0], n_base=3, budget=3, iterations=2, random_iterations=2,
                   explore_steps=20, explore_every=5,
                   mace={"num_channels": 8, "radial_mlp": [16, 16], "epochs": 2, "warm_start_epochs": 1,
                         "batch_size": 4, "eval_every": 1},
                   chgnet={"epochs": 1, "warm_start_epochs": 1, "batch_size": 4})


# -- cells ---------------------------------------------------------------------------------------------------


def _frac_key(atoms: Atoms) -> list[tuple]:
    frac = np.round(atoms.get_scaled_positions() % 1.0, 3) % 1.0
    return sorted((s, *map(float, f)) for s, f in zip(atoms.get_chemical_symbols(), frac) if s != "Li")


def make_cells(orderings: Sequence[Sequence[int]]) -> list[Atoms]:
    """One cell per entry: ``[r]`` is the 13-atom ordering of Ewald rank ``r`` of the primitive argyrodite
    (Li 0.5 on 48h, ``almat.enumeration``); ``[r, s]`` the doubled cell (26 atoms) with ordering ``r`` in its
    first half and ``s`` in its second (a 26-atom ordering of its own when r != s)."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from almat.enumeration.core import enumerate_derivatives, set_occupancy

    parent = set_occupancy(Structure.from_file(CIF).get_primitive_structure(), "Li+", 0.5)
    need = max(max(o) for o in orderings) + 1
    ranked = [AseAtomsAdaptor.get_atoms(e.structure) for e in enumerate_derivatives(parent, n_structures=need)]
    for a in ranked:
        a.info.clear()
        a.arrays = {k: v for k, v in a.arrays.items() if k in ("numbers", "positions")}
    cells = []
    for order in orderings:
        first = ranked[order[0]]
        if len(order) == 1:
            cells.append(first.copy())
            continue
        second = ranked[order[1]]
        if _frac_key(first) != _frac_key(second):
            raise ValueError(f"orderings {order} do not share their P/S/Cl framework")
        big = first.repeat((2, 1, 1))
        keep = [i for i, a in enumerate(big) if a.symbol != "Li" or i < len(first)]
        big = big[keep]
        li = second[[a.symbol == "Li" for a in second]]
        li.positions += first.cell[0]
        big.extend(li)
        cells.append(big)
    for order, cell in zip(orderings, cells):
        cell.info["cell_name"] = "r" + "+r".join(map(str, order))
    return cells


# -- oracle MD (cached) --------------------------------------------------------------------------------------


def _dynamics(atoms: Atoms, condition: str, timestep_fs: float, rng: np.random.Generator):
    from ase import units
    from ase.md import nose_hoover_chain
    from ase.md.langevin import Langevin

    ensemble, temperature, pressure = CONDITIONS[condition]
    dt = timestep_fs * units.fs
    if ensemble == "nvt":
        return Langevin(atoms, timestep=dt, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=rng)
    return nose_hoover_chain.IsotropicMTKNPT(atoms, timestep=dt, temperature_K=temperature,
                                             pressure_au=pressure * units.bar, tdamp=100 * units.fs,
                                             pdamp=500 * units.fs)


def _labelled_copy(atoms: Atoms, stress: bool = False, **info) -> Atoms:
    """A copy carrying the energy and forces (and with ``stress`` the stress) of ``atoms``' calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator

    a = atoms.copy()
    results = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().copy()}
    if stress:
        results["stress"] = atoms.get_stress().copy()
    a.calc = SinglePointCalculator(a, **results)
    a.info.update(info)
    return a


def oracle_md(cell: Atoms, condition: str, spec: DataSpec, seed: int) -> tuple[list[Atoms], list[Atoms], int]:
    """Burn-in, then the test branch and the snapshot branch (fresh velocities each); returns the labelled test
    frames, the labelled snapshots and the number of oracle MD steps."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from almat.oracle.xtb import xtb_spec

    _, temperature, _ = CONDITIONS[condition]
    rng = np.random.default_rng(seed)
    atoms = cell.copy()
    atoms.calc = xtb_spec().load()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    _dynamics(atoms, condition, spec.timestep_fs, rng).run(spec.burn_in)
    branch_point = atoms.copy()
    branches, steps = [], spec.burn_in
    for branch, n, every in (("test", spec.test_frames, spec.test_every),
                             ("snapshot", spec.snapshot_frames, spec.snapshot_every)):
        atoms = branch_point.copy()
        atoms.calc = xtb_spec().load()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        dyn = _dynamics(atoms, condition, spec.timestep_fs, rng)
        frames = []
        for _ in range(n):
            dyn.run(every)
            frames.append(_labelled_copy(atoms, cell_name=cell.info["cell_name"], condition=condition, branch=branch))
        branches.append(frames)
        steps += n * every
    return branches[0], branches[1], steps


def _md_task(args):
    """One cell and condition of the oracle MD, read from its cache file when there is one."""
    from ase.io import read, write

    cell, condition, spec, seed, path = args
    meta = json.loads(path.with_suffix(".json").read_text()) if path is not None and path.exists() else {}
    if meta.get("seed") == seed:
        frames = read(path, index=":")
        return ([a for a in frames if a.info["branch"] == "test"], [a for a in frames if a.info["branch"] != "test"],
                meta["steps"], meta["seconds"])
    _quiet(1)
    t0 = time.perf_counter()
    test, snaps, steps = oracle_md(cell, condition, spec, seed)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path.with_suffix(".tmp.extxyz"), [*test, *snaps], format="extxyz")
        path.with_suffix(".json").write_text(json.dumps({"steps": steps, "seconds": seconds, "seed": seed}))
        os.replace(path.with_suffix(".tmp.extxyz"), path)
    return test, snaps, steps, seconds


def oracle_data(spec: DataSpec, jobs: int = 1, cache: Path | None = OUT / "argyrodite_efficiency_data",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """The cells, the held-out test frames and the oracle-MD snapshots. Each cell and condition is cached in
    ``cache/oracle_md_<hash of spec>/`` (with its seed) once made, and read from there afterwards."""
    cells = make_cells(spec.cells)
    folder = cache / f"oracle_md_{spec.key()}" if cache is not None else None
    tasks = [(c, cond, spec, spec.seed(c.info["cell_name"], cond),
              folder / f"{c.info['cell_name']}_{cond}.extxyz" if folder is not None else None)
             for c in cells for cond in spec.conditions]
    results = _map(_md_task, tasks, jobs)
    meta = {"spec": asdict(spec), "oracle_md_steps": sum(r[2] for r in results),
            "oracle_md_seconds": sum(r[3] for r in results), "cells": {c.info["cell_name"]: len(c) for c in cells},
            "seeds": {f"{t[0].info['cell_name']}/{t[1]}": t[3] for t in tasks}}
    if folder is not None:
        (folder / "spec.json").write_text(json.dumps(meta, indent=1))
    log(f"oracle MD: {meta['oracle_md_steps']} GFN1-xTB steps, {meta['oracle_md_seconds']:.0f} s (summed over "
        f"processes, when made){'; cached in ' + str(folder) if folder is not None else ''}")
    return {"test": [a for r in results for a in r[0]], "snapshots": [a for r in results for a in r[1]],
            "meta": meta, "cells": cells, "path": str(folder)}


# -- exploration ---------------------------------------------------------------------------------------------


def base_indices(n_snapshots: int, n_base: int, seed: int) -> list[int]:
    """The base set of a seed: ``n_base`` random oracle-MD snapshots (the same for every method)."""
    return sorted(int(i) for i in np.random.default_rng(10_000 + seed).choice(n_snapshots, n_base, replace=False))


def explore(committee, cells: Sequence[Atoms], settings: BenchSettings, seed: int, iteration: int) -> list[Atoms]:
    """One exploration round, as a campaign's explore job runs it: MD with this iteration's committee (or single
    model) from every cell at every condition, a frame every ``explore_every`` steps; the frames below
    ``trust_hi`` (a walker stops at the first beyond) are the candidates."""
    from almat.sampler.md import ExplorationSettings, run_exploration
    from almat.uncertainty.deviation import TrustLevels

    trust = TrustLevels(lo=min(0.05, settings.trust_hi / 2), hi=settings.trust_hi)
    frames = []
    for i, cell in enumerate(cells):
        for k, condition in enumerate(settings.data.conditions):
            ensemble, temperature, pressure = CONDITIONS[condition]
            md = ExplorationSettings(temperature=temperature, steps=settings.explore_steps,
                                     timestep_fs=settings.data.timestep_fs, sample_every=settings.explore_every,
                                     seed=100_000 * seed + 1000 * iteration + 10 * i + k, ensemble=ensemble,
                                     pressure_bar=pressure)
            traj = run_exploration(cell, committee.calculator(stress=ensemble != "nvt"), trust, md)
            for j, frame in enumerate(traj.frames):
                if j > 0 and frame.model_deviation < settings.trust_hi:
                    a = traj.atoms(j)
                    a.info.update(cell_name=cell.info["cell_name"], condition=condition,
                                  deviation=frame.model_deviation)
                    frames.append(a)
    return frames


# -- learners ------------------------------------------------------------------------------------------------


def single_model_trainer(uncertainty: str, hyperparameters: dict[str, Any], n_heads: int, base_seed: int = 0):
    """A train function (``train(frames, iteration, previous)``): one MACE model with its own uncertainty
    (``shallow``: heads; any other kind the registry knows), warm-started from the previous iteration's model."""
    from almat.learner.committee import Committee
    from almat.learner.registry import load_learner

    learner = load_learner("mace", uncertainty)
    options = {"n_heads": n_heads} if uncertainty == "shallow" else {}

    def train(frames: Sequence[Atoms], iteration: int, previous=None):
        ids = [str(i) for i in range(len(frames))]
        init = previous.models[0] if previous is not None else None
        result = learner.train(list(frames), ids, hyperparameters, seed=base_seed + 1000 * iteration, init_model=init,
                               **options)
        return Committee([result.model], [f"it{iteration}-{uncertainty}"])

    return train


def trainer_for(method: str, settings: BenchSettings, seed: int):
    """The train function of a method (``train(frames, iteration, previous)``, warm-started from ``previous``);
    a method with a ``stress_weight`` trains MACE on the labels' stresses too."""
    spec = METHODS[method]
    kind = spec["learner"]
    mace = {**settings.mace, **({"stress_weight": spec["stress_weight"]} if "stress_weight" in spec else {})}
    if kind == "committee":
        return mace_committee_trainer(mace, settings.n_models, base_seed=100 * seed)
    if kind == "chgnet":
        return chgnet_committee_trainer(settings.chgnet, settings.n_models)
    return single_model_trainer(kind, mace, settings.n_heads, base_seed=100 * seed)


# -- runs ----------------------------------------------------------------------------------------------------


def _quiet(threads: int | None) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    if threads:
        import torch

        torch.set_num_threads(threads)


def xtb_labels(frames: Sequence[Atoms]) -> list[Atoms | None]:
    """GFN1-xTB labels (energy, forces and the stress, which tblite computes with the forces); ``None`` where
    the calculation fails or is not finite."""
    from almat.oracle.xtb import xtb_spec

    calc, out = xtb_spec().load(), []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        try:
            labelled = _labelled_copy(a, stress=True)
        except Exception:  # noqa: BLE001 - a failed label is counted and skipped, as a campaign does
            out.append(None)
            continue
        finite = np.isfinite(labelled.get_forces()).all() and np.isfinite(labelled.get_potential_energy())
        out.append(labelled if finite else None)
    return out


def candidates(method: str, committee, iteration: int, seed: int, data: dict[str, Any], base_idx: list[int],
               used: set[int], settings: BenchSettings) -> tuple[list[Atoms], Callable]:
    """What a method picks from in an iteration, and the oracle that labels the picks: a fresh exploration with
    its own committee, or the oracle-MD snapshots not yet used (labelled already: the MD computed them)."""
    if METHODS[method]["pool"] == "oracle-md":
        snaps = data["snapshots"]
        left = [i for i in range(len(snaps)) if i not in set(base_idx) and i not in used]
        frames = []
        for i in left:
            frames.append(snaps[i].copy())
            frames[-1].info["snapshot"] = i
        return frames, lambda picked: [_labelled_copy(snaps[a.info["snapshot"]]) for a in picked]
    return explore(committee, data["cells"], settings, seed, iteration), xtb_labels


def _pick(frames: list[Atoms], spec: dict[str, Any], n: int, committee, iteration: int, rng, training) -> list[int]:
    """``n`` of ``frames`` by the method's acquisition function (``almat.campaign.pool.acquire``). A method with a
    trust ``window`` (lo, hi) picks among the frames whose exploration deviation lies in it (a campaign's
    candidates), and randomly among all of them when none does (a campaign's random guard)."""
    from almat.campaign.pool import PoolState, acquire

    acquisition = spec["acquisition"]
    if "window" in spec:
        lo, hi = spec["window"]
        inside = [i for i, a in enumerate(frames) if lo <= a.info["deviation"] < hi]
        if not inside:
            return _pick(frames, {"acquisition": "random"}, n, committee, iteration, rng, training)
        chosen = _pick([frames[i] for i in inside], {"acquisition": acquisition}, n, committee, iteration, rng,
                       training)
        return [inside[k] for k in chosen]
    if not frames:
        return []
    return acquire(frames, PoolState(n_pool=len(frames)), acquisition, n, committee, iteration, rng,
                   training_frames=training).indices


def run_one(method: str, seed: int, data: dict[str, Any], settings: BenchSettings,
            threads: int | None = 1) -> dict[str, Any]:
    """One method, one seed, as a campaign runs: train on the base set, then per iteration explore with the
    current committee, pick ``budget`` frames, label them, train again (warm start); scored on the test set
    after every training. Labels count every oracle call, the base set included."""
    from almat.campaign.jobs import test_errors

    _quiet(threads)
    spec = METHODS[method]
    start = time.perf_counter()
    base_idx = base_indices(len(data["snapshots"]), settings.n_base, seed)
    labels = [data["snapshots"][i] for i in base_idx]
    train = trainer_for(method, settings, seed)
    rng = np.random.default_rng(20_000 + seed)
    iterations = settings.random_iterations if spec["acquisition"] == "random" else settings.iterations
    run = {"method": method, "seed": seed, "n_labels": [], "force_rmse": [], "energy_rmse_per_atom": [],
           "explored": [], "failed_labels": 0, "labelled_conditions": {}, "iteration_seconds": [],
           "snapshots_used": [list(base_idx)]}
    committee, calls, used = None, settings.n_base, set()
    for iteration in range(iterations + 1):
        t0 = time.perf_counter()
        if iteration:
            pool, oracle = candidates(method, committee, iteration, seed, data, base_idx, used, settings)
            picks = [pool[i] for i in _pick(pool, spec, settings.budget, committee, iteration,
                                            rng, labels)]
            used |= {a.info["snapshot"] for a in picks if "snapshot" in a.info}
            run["snapshots_used"].append([a.info["snapshot"] for a in picks if "snapshot" in a.info])
            new = oracle(picks)
            calls += len(picks)
            run["failed_labels"] += sum(a is None for a in new)
            labels += [a for a in new if a is not None]
            run["explored"].append(len(pool))
            for a in picks:
                c = a.info.get("condition")
                run["labelled_conditions"][c] = run["labelled_conditions"].get(c, 0) + 1
        committee = train(labels, iteration, committee)
        errors = test_errors(committee, data["test"])
        run["n_labels"].append(calls)
        run["force_rmse"].append(errors.force_rmse)
        run["energy_rmse_per_atom"].append(errors.energy_rmse_per_atom)
        run["iteration_seconds"].append(time.perf_counter() - t0)
    run["oracle_calls"] = calls - settings.n_base if spec["pool"] == "explored" else 0
    sets = [sum(run["snapshots_used"][:k + 1], []) for k in range(len(run["snapshots_used"]))]
    run["oracle_calls_curve"] = (oracle_md_cost(sets, settings.data) if spec["pool"] == "oracle-md"
                                 else list(run["n_labels"]))
    run["wall_time"] = time.perf_counter() - start
    return run


def _worker(args):
    method, seed, data, settings = args
    return run_one(method, seed, data, settings, threads=1)


def _map(fn, tasks: list, jobs: int, on_result: Callable[[Any], None] | None = None) -> list:
    """``fn`` over ``tasks``, ``jobs`` processes (spawned, 1 torch thread each); results in task order."""
    if jobs <= 1 or len(tasks) <= 1:
        results = []
        for t in tasks:
            results.append(fn(t))
            if on_result:
                on_result(results[-1])
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) as ex:
        futures = {ex.submit(fn, t): k for k, t in enumerate(tasks)}
        done = {}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
            if on_result:
                on_result(done[futures[fut]])
    return [done[k] for k in range(len(tasks))]


def oracle_md_cost(snapshot_sets: Sequence[Sequence[int]], spec: DataSpec) -> list[int]:
    """Oracle calls behind random oracle-MD snapshots: the MD steps a user runs to reach them. Snapshot ``i`` is
    number ``i % snapshot_frames`` of its cell and condition's branch (``oracle_data``'s order), which runs
    ``burn_in`` steps and then ``snapshot_every`` per snapshot; a trajectory costs up to its last snapshot used.
    One value per entry of ``snapshot_sets`` (cumulative: the sets of the iterations so far)."""
    last: dict[int, int] = {}
    out = []
    for used in snapshot_sets:
        for i in used:
            group, place = divmod(int(i), spec.snapshot_frames)
            last[group] = max(last.get(group, -1), place)
        out.append(sum(spec.burn_in + (p + 1) * spec.snapshot_every for p in last.values()))
    return out


# -- scoring -------------------------------------------------------------------------------------------------


def _geomean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return float(np.exp(np.mean(np.log(vals)))) if vals else None


def rmse_at_labels(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Error at equal labels: per method, the geometric mean over seeds of the force RMSE at every label count
    any run has, where every seed of the method covers it (log-linear between a curve's points: an
    acquisition that labels fewer than its budget in an iteration leaves its own grid)."""
    grid = sorted({n for r in runs for n in r["n_labels"]})
    out: dict[str, dict[str, float]] = {}
    for m in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == m]
        values = {n: [error_at(r["n_labels"], r["force_rmse"], n) for r in mine] for n in grid}
        out[m] = {str(n): _geomean(v) for n, v in values.items() if all(x is not None for x in v)}
    return out


#: (numerator, denominator, issue target): labels of the first over labels of the second must be >= target
RATIOS = [("random-md", "committee", 5.0), ("random-explored", "committee", 3.0), ("committee", "foundation", 3.0),
          ("random-md", "shallow", 5.0), ("random-explored", "shallow", 3.0), ("random-md", "llpr", 5.0),
          ("random-explored", "llpr", 3.0), ("committee", "committee-stress", 1.0),
          ("random-md", "committee-window", 5.0), ("random-explored", "committee-window", 3.0)]


def _ratio(num: dict[str, Any], den: dict[str, Any], goal: float) -> dict[str, Any]:
    """Labels to target of ``num`` over ``den``. A method that did not reach the target on every seed counts
    its last label count (its labels are then a lower bound); one that reached it at its first point may have
    needed fewer (an upper bound). Hence the kind of the ratio, and whether it meets ``goal`` (None: undecided)."""
    value = num["labels_bound"] / den["labels_bound"]
    ways = ({"lower"} if num["reached"] < num["seeds"] else set()) | ({"upper"} if num["at_first_point"] else set())
    ways |= ({"upper"} if den["reached"] < den["seeds"] else set()) | ({"lower"} if den["at_first_point"] else set())
    if not ways:
        kind, met = "exact", value >= goal
    elif ways == {"lower"}:
        kind, met = "lower bound", True if value >= goal else None
    elif ways == {"upper"}:
        kind, met = "upper bound", False if value < goal else None
    else:
        kind, met = "undetermined", None
    return {"ratio": value, "bound": kind, "issue_target": goal, "met": met}


def _per_method(runs: list[dict[str, Any]], target: float, x: str) -> dict[str, dict[str, Any]]:
    """Per method: how many seeds reach ``target``, and where, counted in ``x`` (``n_labels``: labels trained
    on; ``oracle_calls``: oracle calls spent, MD steps behind oracle-MD snapshots included)."""
    out = {}
    for r in runs:
        r.setdefault("oracle_calls_curve", list(r["n_labels"]))
        r[f"{x}_to_target"] = labels_to_target(r[_CURVE[x]], r["force_rmse"], target)
    for m in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == m]
        reached = [r[f"{x}_to_target"] for r in mine if r[f"{x}_to_target"] is not None]
        out[m] = {
            "seeds": len(mine), "reached": len(reached),
            "mean_labels_to_target": float(np.mean(reached)) if reached else None,
            "labels_bound": float(np.mean([r[f"{x}_to_target"] if r[f"{x}_to_target"] is not None
                                           else r[_CURVE[x]][-1] for r in mine])),
            "at_first_point": any(r[f"{x}_to_target"] == r[_CURVE[x]][0] for r in mine),
            "final_force_rmse": _geomean([r["force_rmse"][-1] for r in mine]),
            "max_labels": max(r[_CURVE[x]][-1] for r in mine)}
    return out


#: what a count is read from in a run
_CURVE = {"n_labels": "n_labels", "oracle_calls": "oracle_calls_curve"}


def summarise(runs: list[dict[str, Any]], target: float | None = None) -> dict[str, Any]:
    """Target, labels to target per run and method, the issue's ratios (``_ratio``: exact or a bound), and the
    error at equal labels; the same counted in oracle calls (``by_oracle_calls``), where random oracle-MD
    snapshots cost the MD steps behind them. A run that never reaches the target counts as its last count in
    ``labels_bound``."""
    if target is None:
        al = [r["force_rmse"][-1] for r in runs if r["method"] == "committee" and r["force_rmse"][-1] is not None]
        if not al:
            raise ValueError("no committee runs to set the target from: give a target")
        target, rule = float(max(al)), "worst final force RMSE of the committee AL runs"
    else:
        rule = "fixed"
    out = {"target_force_rmse": target, "target_rule": rule}
    for x, key in (("n_labels", "per_method"), ("oracle_calls", "by_oracle_calls")):
        per_method = _per_method(runs, target, x)
        ratios = {f"{num}/{den}": _ratio(per_method[num], per_method[den], goal) for num, den, goal in RATIOS
                  if num in per_method and den in per_method}
        out[key] = per_method
        out["ratios" if x == "n_labels" else "ratios_by_oracle_calls"] = ratios
    for r in runs:
        r["labels_to_target"] = r["n_labels_to_target"]
    return {**out, "rmse_at_labels": rmse_at_labels(runs)}


def format_table(result: dict[str, Any]) -> str:
    def to_target(s):
        return (f"{s['mean_labels_to_target']:.1f}" if s["reached"] == s["seeds"]
                else f"> {s['labels_bound']:.1f}" if not s["reached"] else f"{s['labels_bound']:.1f} (some > max)")

    calls = result.get("by_oracle_calls") or {}
    rows = [f"target held-out force RMSE {result['target_force_rmse']:.4f} eV/Å ({result['target_rule']})", "",
            "| method | seeds reached | labels to target | oracle calls to target | final RMSE (eV/Å) | max labels |",
            "|---|---|---|---|---|---|"]
    for m, s in result["per_method"].items():
        rows.append(f"| {m} | {s['reached']}/{s['seeds']} | {to_target(s)} | "
                    f"{to_target(calls[m]) if m in calls else '-'} | {s['final_force_rmse']:.4f} | {s['max_labels']} |")
    at = result.get("rmse_at_labels") or {}
    common = sorted(set.intersection(*[set(v) for v in at.values()]), key=int) if at else []
    if "settings" in result:  # the columns of the budget's grid: the base set, then one iteration's budget each
        base, budget = result["settings"]["n_base"], result["settings"]["budget"]
        common = [n for n in common if (int(n) - base) % budget == 0]
    if common:
        rows += ["", "error at equal labels (eV/Å, geometric mean over seeds):", "",
                 "| method | " + " | ".join(common) + " |", "|---" * (len(common) + 1) + "|"]
        rows += [f"| {m} | " + " | ".join(f"{v[n]:.4f}" for n in common) + " |" for m, v in at.items()]
    by_calls = result.get("ratios_by_oracle_calls") or {}
    rows += ["", "| ratio | in labels | kind | met | in oracle calls | kind | met | issue target |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["ratios"].items():
        c = by_calls.get(name)
        rows.append(f"| {name} | {r['ratio']:.2f} | {r['bound']} | {r['met']} | "
                    + (f"{c['ratio']:.2f} | {c['bound']} | {c['met']}" if c else "- | - | -")
                    + f" | >= {r['issue_target']:g} |")
    return "\n".join(rows)


# -- the benchmark -------------------------------------------------------------------------------------------


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "argyrodite_efficiency.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out / "argyrodite_efficiency.json")


def _previous_runs(out: Path | None, settings: BenchSettings) -> list[dict[str, Any]]:
    """The finished runs of an earlier, stopped run with the same settings in ``out`` (for ``--resume``)."""
    path = out / "argyrodite_efficiency.json" if out is not None else None
    if path is None or not path.exists():
        return []
    old = json.loads(path.read_text())
    same = {k: v for k, v in old.get("settings", {}).items() if k not in ("seeds", "methods", "jobs", "target")}
    mine = {k: v for k, v in json.loads(json.dumps(asdict(settings))).items() if k in same}
    return old["runs"] if same == mine else []


def run_benchmark(settings: BenchSettings, out: Path | None, cache: Path | None = OUT / "argyrodite_efficiency_data",
                  log: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Oracle data (cached), then every method and seed (``run_one``); JSON after every run, then PNG. With
    ``resume``, the runs an earlier stopped run with the same settings finished are kept and not run again."""
    t0 = time.perf_counter()
    data = oracle_data(settings.data, settings.jobs, cache, log)
    log(f"test set {len(data['test'])} oracle-MD frames, {len(data['snapshots'])} oracle-MD snapshots")
    done = _previous_runs(out, settings) if resume else []
    if done:
        log(f"resuming: {len(done)} finished run(s) kept")
    result: dict[str, Any] = {"settings": asdict(settings), "data": data["meta"], "data_file": data["path"],
                              "test_size": len(data["test"]), "snapshot_pool_size": len(data["snapshots"]),
                              "runs": list(done)}

    def finished(run):
        result["runs"].append(run)
        log(f"  {run['method']} seed {run['seed']}: " + ", ".join(
            f"{n}: {f:.3f}" for n, f in zip(run["n_labels"], run["force_rmse"])) + f" ({run['wall_time']:.0f} s; "
            f"explored {run['explored']})")
        if out is not None:
            _write(out, {**result, "wall_time": time.perf_counter() - t0, "complete": False})

    have = {(r["method"], r["seed"]) for r in done}
    tasks = [(m, s, data, settings) for s in settings.seeds for m in settings.methods if (m, s) not in have]
    _map(_worker, tasks, settings.jobs, finished)
    order = [*settings.methods, *METHODS]
    result["runs"].sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["seed"]))
    result.update(summarise(result["runs"], settings.target), wall_time=time.perf_counter() - t0, complete=True)
    if out is not None:
        _write(out, result)
        curves = {m: [(r["n_labels"], r["force_rmse"]) for r in result["runs"] if r["method"] == m]
                  for m in dict.fromkeys(r["method"] for r in result["runs"])}
        plot_method_comparison(curves, out / "argyrodite_efficiency.png", target=result["target_force_rmse"],
                               xlabel=XLABEL,
                               title=f"Li6PS5Cl / GFN1-xTB: {len(data['cells'])} cells, "
                                     f"{len(data['test'])} test frames")
        result["files"] = [str(out / "argyrodite_efficiency.json"), str(out / "argyrodite_efficiency.png")]
    return result


def resummarise(out: Path, target: float | None = None) -> int:
    """Summary, table and plot again from ``out/argyrodite_efficiency.json`` (the runs that finished)."""
    path = out / "argyrodite_efficiency.json"
    if not path.exists():
        print(f"error: no results at {path}", file=sys.stderr)
        return 2
    result = json.loads(path.read_text())
    result.update(summarise(result["runs"], target))
    _write(out, result)
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    curves = {m: [(r["n_labels"], r["force_rmse"]) for r in result["runs"] if r["method"] == m] for m in methods}
    plot_method_comparison(curves, out / "argyrodite_efficiency.png", target=result["target_force_rmse"],
                           xlabel=XLABEL, title=f"Li6PS5Cl / GFN1-xTB ({len(result['runs'])} runs"
                                 f"{'' if result.get('complete') else ', incomplete'})")
    print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 cells, 1 seed, 2 iterations (< 10 min)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 2, quick 1)")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--iterations", type=int, help="AL iterations (the random baselines: at least as many)")
    parser.add_argument("--target", type=float, help="target held-out force RMSE, eV/Å")
    parser.add_argument("--jobs", type=int, help="runs in parallel (default 2)")
    parser.add_argument("--cells", help="orderings by Ewald rank, comma-separated; a doubled cell joins two ranks "
                        "with '+' (default 0,3,0+1,0+3; quick 0,3)")
    parser.add_argument("--data-seed", type=int, help="seed of the oracle MD (another seed: another cached set)")
    parser.add_argument("--out", type=Path, help="default benchmark_results/argyrodite_efficiency[_quick]")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs of a stopped run with the same settings in --out")
    parser.add_argument("--resummarise", action="store_true",
                        help="summarise the runs of the JSON in --out again (a stopped run's too), plot, print")
    args = parser.parse_args(argv)
    out = args.out or OUT / ("argyrodite_efficiency_quick" if args.quick else "argyrodite_efficiency")
    if args.resummarise:
        return resummarise(out, args.target)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    valid = METHODS
    if args.methods:
        unknown = [m for m in args.methods.split(",") if m not in valid]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; valid: {', '.join(valid)}")
        settings.methods = args.methods.split(",")
    if args.seeds is not None:
        settings.seeds = list(range(args.seeds))
    if args.iterations is not None:
        settings.iterations = args.iterations
        settings.random_iterations = max(settings.random_iterations, args.iterations)
    if args.jobs is not None:
        settings.jobs = args.jobs
    if args.cells:
        try:
            settings.data.cells = [[int(r) for r in c.split("+")] for c in args.cells.split(",")]
        except ValueError:
            parser.error(f"--cells: give ranks like 0,3,0+1 (got {args.cells!r})")
    if args.data_seed is not None:
        settings.data.data_seed = args.data_seed
    settings.target = args.target
    _quiet(None)
    result = run_benchmark(settings, out, resume=args.resume)
    print()
    print(format_table(result))
    print(f"\nwall time {result['wall_time']:.0f} s; wrote {', '.join(result.get('files', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
