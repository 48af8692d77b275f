"""Label efficiency: how many oracle calls does active learning save over random selection?

One exploration pool, shared by every method: frames of EMT Langevin MD of fcc Cu (32-atom cells)
at several temperatures, most of them near room temperature, plus rarer strained and vacancy cells
and hot frames. The held-out test set is oracle-labelled frames of *independent* MD runs (other
seeds), the same number for every condition, so the rare regions weigh as much as the common one.

Methods, side by side, on ``run_pool_loop`` below (the pool explorer's state, acquisition and stop rule,
in process, with an external test set), with the
same budget sequence (``n_init`` random labels, then ``budget`` per iteration) and the same seeds
(the initial random labels of a seed are the same for every method):

- ``committee``: highest committee max force deviation (DP-GEN's criterion);
- ``weighted``: committee deviation and descriptor diversity (``almat.select.WeightedAcquisition``);
- ``random``: uniformly random picks (the baseline).

The learner is the same 2-model committee for all (warm-started across iterations): MACE, or DeePMD with
``--learner deepmd`` (deepmd-kit's ``dp train``, ``pip install almat[deepmd]``; its own hyperparameters); the test
score is the committee-mean force RMSE on the held-out frames. The target RMSE is, by default, the
worst final RMSE of the random runs, i.e. a value every random seed reaches at its largest budget;
``labels to target`` is the number of training labels at which a run's learning curve crosses it,
interpolated in log(RMSE) between the two iterations around the crossing (the first iteration at or
below the target is in the JSON too, ``labels_to_target_grid``).

    python benchmarks/label_efficiency.py            # default: 3 seeds, 8 + 6 x 8 labels (14 min on 2 cores)
    python benchmarks/label_efficiency.py --quick    # ~2 min smoke run
    python benchmarks/label_efficiency.py --quick --learner deepmd   # the same with a DeePMD committee
    python benchmarks/label_efficiency.py --seeds 5 --target 0.05 --out results/label_eff

Writes ``label_efficiency.json`` (every number) and ``label_efficiency.png`` (learning curves: the
geometric mean over seeds per method, with the min-max band) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import math
import logging
import numpy as np
from ase import Atoms

from almat.select.lookup import acquisition_policy
from almat.campaign.jobs import test_errors
from almat.campaign.pool import Acquired, PoolState, acquire, decide_stop
from almat.report.plots import COLORS, STYLE, _pyplot
from almat.schemas import PoolIterationDoc

logger = logging.getLogger("almat.benchmarks.label_efficiency")

METHODS = {
    "committee": {"acquisition": "committee", "options": {}},
    "weighted": {"acquisition": "weighted", "options": {"w0": 0.3, "w1": 0.9}},  # n_iterations set below
    "random": {"acquisition": "random", "options": {}},
}


@dataclass
class PoolSpec:
    """The MD conditions of the pool: (name, temperature K, strain, vacancies, frames in the pool)."""

    conditions: list[tuple[str, float, float, int, int]] = field(default_factory=lambda: [
        ("300K", 300.0, 0.0, 0, 400),  # an MD pool is mostly equilibrium frames: redundancy AL can skip
        ("600K", 600.0, 0.0, 0, 30),
        ("900K", 900.0, 0.0, 0, 12),
        ("1500K", 1500.0, 0.0, 0, 8),
        ("strain+4%", 600.0, 0.04, 0, 8),
        ("strain-3%", 600.0, -0.03, 0, 8),
        ("vacancy", 900.0, 0.0, 1, 8),
    ])
    n_test_per_condition: int = 6
    burn_in: int = 150
    sample_every: int = 15


@dataclass
class BenchSettings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    n_init: int = 8
    budget: int = 8
    iterations: int = 7  # labels: n_init, n_init + budget, ..., n_init + (iterations - 1) * budget
    n_models: int = 2
    hyperparameters: dict[str, Any] = field(default_factory=lambda: {
        "num_channels": 8, "radial_mlp": [16, 16], "epochs": 40, "warm_start_epochs": 20, "batch_size": 4,
        "eval_every": 5, "lr": 0.01})
    pool: PoolSpec = field(default_factory=PoolSpec)
    target: float | None = None  # eV/Å; None: the worst final RMSE of the random runs
    jobs: int = 2  # runs in parallel (processes, 1 torch thread each)
    learner: str = "mace"  # learner kind of the committee (mace or deepmd)

    @classmethod
    def quick(cls) -> "BenchSettings":
        spec = PoolSpec(conditions=[
            ("300K", 300.0, 0.0, 0, 24), ("900K", 900.0, 0.0, 0, 6), ("1500K", 1500.0, 0.0, 0, 4),
            ("strain+4%", 600.0, 0.04, 0, 4), ("vacancy", 900.0, 0.0, 1, 4),
        ], n_test_per_condition=3, burn_in=60, sample_every=10)
        return cls(seeds=[0, 1], n_init=6, budget=6, iterations=3,
                   hyperparameters={"num_channels": 8, "radial_mlp": [16, 16], "epochs": 12,
                                    "warm_start_epochs": 6, "batch_size": 4, "eval_every": 4},
                   pool=spec)


# -- data ----------------------------------------------------------------------------------------


def _cell(strain: float, vacancies: int, rng: np.random.Generator):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms
    if strain:
        atoms.set_cell(atoms.cell * (1.0 + strain), scale_atoms=True)
    if vacancies:
        del atoms[[int(i) for i in rng.choice(len(atoms), vacancies, replace=False)]]
    return atoms


def md_frames(temperature: float, strain: float, vacancies: int, n_frames: int, seed: int, burn_in: int,
              sample_every: int):
    """``n_frames`` frames of EMT Langevin MD (2 fs), one every ``sample_every`` steps after ``burn_in``."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    rng = np.random.default_rng(seed)
    atoms = _cell(strain, vacancies, rng)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, rng=rng)  # fixcm default: the measured results
    dyn.run(burn_in)
    frames = []
    for _ in range(n_frames):
        dyn.run(sample_every)
        a = atoms.copy()
        a.info["temperature"] = temperature
        frames.append(a)
    return frames


def build_data(spec: PoolSpec, log: Callable[[str], None] = print):
    """The pool (unlabelled frames, with their condition) and the labelled held-out test set."""
    from ase.calculators.emt import EMT

    pool, test, where = [], [], []
    for k, (name, temp, strain, vac, n) in enumerate(spec.conditions):
        frames = md_frames(temp, strain, vac, n, 1000 + k, spec.burn_in, spec.sample_every)
        for a in frames:
            a.calc = None
            a.info["condition"] = name
        pool += frames
        where += [name] * len(frames)
        # independent MD: other seeds, several short runs
        for r in range(spec.n_test_per_condition):
            (frame,) = md_frames(temp, strain, vac, 1, 5000 + 37 * k + r, spec.burn_in, spec.sample_every)
            frame.info["condition"] = name
            test.append(frame)
    test = calculator_oracle(EMT)(test)
    log(f"pool: {len(pool)} frames ({', '.join(f'{c[0]} {c[4]}' for c in spec.conditions)}); "
        f"held-out: {len(test)} frames from independent MD ({spec.n_test_per_condition} per condition)")
    return pool, test


# -- the pool loop in process: the pool explorer's functions, an ASE calculator as oracle, an external test set --


def calculator_oracle(make_calculator: Callable[[], Any]) -> Callable[[Sequence[Atoms]], list[Atoms | None]]:
    """An oracle function for :func:`run_pool_loop` from an ASE calculator factory (``EMT``, ...).

    Each frame comes back as a copy carrying energy and forces as SinglePointCalculator results;
    a frame whose calculation fails or is not finite comes back as ``None``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    def oracle(frames: Sequence[Atoms]) -> list[Atoms | None]:
        out: list[Atoms | None] = []
        calc = make_calculator()
        for atoms in frames:
            a = atoms.copy()
            a.calc = calc
            try:
                e, f = float(a.get_potential_energy()), np.asarray(a.get_forces(), dtype=float)
                if not (math.isfinite(e) and np.isfinite(f).all()):
                    raise FloatingPointError("non-finite energy or forces")
            except Exception as exc:  # noqa: BLE001 - a failed label must not stop the loop
                logger.warning("oracle failed: %s: %s", type(exc).__name__, exc)
                out.append(None)
                continue
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
            out.append(a)
        return out

    return oracle


#: DeePMD's settings here (``--learner deepmd``): the default and the quick run
DEEPMD_HP = {"numb_steps": 2000, "warm_start_steps": 800, "rcut": 5.0, "rcut_smth": 2.0, "neuron": [10, 20, 40],
             "axis_neuron": 8, "fitting_neuron": [64, 64], "start_pref_e": 0.02, "limit_pref_e": 1.0}
DEEPMD_QUICK_HP = {**DEEPMD_HP, "numb_steps": 400, "warm_start_steps": 150, "neuron": [8, 16], "axis_neuron": 4,
                   "fitting_neuron": [32, 32]}


def learner_committee_trainer(kind: str, hyperparameters=None, n_models: int = 2, base_seed: int = 0,
                              warm_start: bool = True):
    """A train function for :func:`run_pool_loop` with any registered learner kind (``Learner.train``), seeded
    as ``TrainCommitteeMaker`` seeds its members; member k continues from the previous member k."""
    from almat.learner.committee import Committee
    from almat.learner.registry import load_learner

    if n_models < 2:
        raise ValueError(f"a committee needs at least 2 models, got n_models={n_models}")
    learner = load_learner(kind)
    hp = learner.validate(hyperparameters or {})

    def train(frames: Sequence[Atoms], iteration: int, previous=None) -> Committee:
        ids = [str(i) for i in range(len(frames))]
        models = []
        for k in range(n_models):
            init = previous.models[k] if (warm_start and previous is not None and k < len(previous.models)) else None
            models.append(learner.train(list(frames), ids, hp, seed=base_seed + 1000 * iteration + k,
                                        init_model=init).model)
        return Committee(models, [f"it{iteration}-m{k}" for k in range(n_models)])

    return train


def mace_committee_trainer(hyperparameters=None, n_models: int = 2, base_seed: int = 0, warm_start: bool = True):
    """A train function for :func:`run_pool_loop`: ``n_models`` MACE models, as ``TrainCommitteeMaker``
    trains them (seed ``base_seed + 1000 * iteration + k``; member k continues from the previous
    member k with ``warm_start``)."""
    from almat.learner.committee import Committee
    from almat.learner.mace import MaceHyperParameters, train_mace

    if n_models < 2:
        raise ValueError(f"a committee needs at least 2 models, got n_models={n_models}")
    hp = hyperparameters if isinstance(hyperparameters, MaceHyperParameters) else MaceHyperParameters(
        **(hyperparameters or {}))

    def train(frames: Sequence[Atoms], iteration: int, previous=None) -> Committee:
        ids = [str(i) for i in range(len(frames))]
        models = []
        for k in range(n_models):
            init = previous.models[k] if (warm_start and previous is not None and k < len(previous.models)) else None
            result = train_mace(list(frames), ids, hp, seed=base_seed + 1000 * iteration + k, init_model=init)
            models.append(result.model)
        return Committee(models, [f"it{iteration}-m{k}" for k in range(n_models)], device=hp.device)

    return train


# -- the loop ---------------------------------------------------------------------------------------


@dataclass
class PoolRunResult:
    """The records of a pool run (one ``PoolIterationDoc`` per iteration) and its final state."""

    records: list
    state: PoolState
    committee: Any = None
    oracle_calls: int = 0
    wall_time: float = 0.0

    @property
    def stop_reason(self) -> str | None:
        return self.records[-1].stop_reason if self.records else None


def _held_out(frames, oracle_fn, n_init, test_fraction, n_test, test_set, seed):
    """The pool's state, the labelled test frames and the oracle calls they cost: ``test_set`` as given (no
    frame of the pool held out), else ``n_test`` or ``test_fraction`` of the pool held out and labelled."""
    if test_set is not None:
        state = PoolState.create(len(frames), n_init, n_test=0, seed=seed)
        return state, [a for a in test_set if a is not None], 0
    state = PoolState.create(len(frames), n_init, test_fraction=test_fraction, n_test=n_test, seed=seed)
    test_labels = [a for a in oracle_fn([frames[i] for i in state.test_indices]) if a is not None]
    return state, test_labels, len(state.test_indices)


def _label(frames, new, oracle_fn, state, labels: dict) -> list:
    """Label the pool frames ``new`` (failures marked in ``state``, ok labels added to ``labels``) and return
    the training set; fewer than 2 ok labels is an error."""
    labelled = oracle_fn([frames[i] for i in new])
    failed = [i for i, lab in zip(new, labelled) if lab is None]
    state.add(new, failed)
    labels.update({i: lab for i, lab in zip(new, labelled) if lab is not None})
    train = [labels[i] for i in state.trained_on]
    if len(train) < 2:
        raise RuntimeError(f"only {len(train)} ok label(s) to train on; the oracle failed on {len(failed)}")
    return train


def _iteration_record(name, iteration, acquisition, state, new, train, acquired, committee, errors, stop,
                      wall_time) -> PoolIterationDoc:
    """One iteration of ``run_pool_loop`` as a ``PoolIterationDoc``."""
    return PoolIterationDoc(
        campaign=name,
        iteration=iteration,
        acquisition=acquisition,
        pool_size=state.n_pool,
        test_indices=list(state.test_indices),
        new_indices=list(new),
        labelled_indices=list(state.labelled),
        failed_indices=list(state.failed),
        acquired_indices=acquired.indices,
        acquired_deviation=[None if not math.isfinite(d) else d for d in acquired.model_deviation],
        n_labels=len(state.labelled),
        n_train_labels=len(train),
        n_unlabelled=len(state.unlabelled),
        model_ids=list(getattr(committee, "model_ids", [])),
        test_errors=errors,
        stop_reason=stop,
        wall_time=wall_time,
    )


def run_pool_loop(
    pool: Sequence[Atoms],
    oracle_fn: Callable[[Sequence[Atoms]], list[Atoms | None]],
    train_fn: Callable[..., Any],
    *,
    n_init: int = 8,
    budget: int = 8,
    total_budget: int | None = None,
    acquisition: str = "committee",
    acquisition_options: dict[str, Any] | None = None,
    test_fraction: float = 0.2,
    n_test: int | None = None,
    test_set: Sequence[Atoms] | None = None,
    max_iterations: int = 10,
    target_force_rmse: float | None = None,
    seed: int = 0,
    name: str = "pool",
    on_iteration: Callable[[Any], None] | None = None,
) -> PoolRunResult:
    """Run pool-based active learning in process: label ``n_init`` random structures, then repeat
    train → score on the held-out part → (stop?) → acquire ``budget`` → label.

    ``oracle_fn(frames)`` returns labelled copies (``None`` for a failure); ``train_fn(frames,
    iteration, previous_committee)`` returns a committee (see :func:`mace_committee_trainer`).
    ``test_set`` (labelled frames) replaces the held-out part of the pool; otherwise ``n_test`` or
    ``test_fraction`` of the pool is held out and labelled once. Returns one
    :class:`~almat.schemas.PoolIterationDoc` per iteration.
    """
    start = time.perf_counter()
    frames = list(pool)
    if not frames:
        raise ValueError("the pool is empty: give at least one structure")
    policy = acquisition_policy(acquisition, acquisition_options)
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    state, test_labels, calls = _held_out(frames, oracle_fn, n_init, test_fraction, n_test, test_set, seed)
    rng = np.random.default_rng(seed)
    labels: dict[int, Atoms] = {}
    new = list(state.init)
    committee = None
    records = []
    iteration = 0
    while True:
        train = _label(frames, new, oracle_fn, state, labels)
        calls += len(new)
        t0 = time.perf_counter()
        committee = train_fn(train, iteration, committee)
        errors = test_errors(committee, test_labels)
        _, stop, n_next = decide_stop(state, iteration, errors, budget, total_budget, max_iterations,
                                   target_force_rmse)
        acquired = Acquired([], [], 0)
        if stop is None:
            acquired = acquire(frames, state, policy, n_next, committee, iteration, rng, training_frames=train)
            stop = None if acquired.indices else f"acquisition {acquisition!r} picked nothing new"
        record = _iteration_record(name, iteration, acquisition, state, new, train, acquired, committee, errors,
                                   stop, time.perf_counter() - t0)
        records.append(record)
        logger.info("pool %s iteration %d: %d labels, test force RMSE %s%s", name, iteration, record.n_labels,
                    "n/a" if errors.force_rmse is None else f"{errors.force_rmse:.4f} eV/Å",
                    f"; stop: {stop}" if stop else "")
        if on_iteration is not None:
            on_iteration(record)
        if stop is not None:
            break
        new = acquired.indices
        iteration += 1
    return PoolRunResult(records, state, committee, calls, time.perf_counter() - start)


# -- the figure -------------------------------------------------------------------------------


def plot_method_comparison(curves: dict[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
                           path: str | Path, title: str = "", target: float | None = None,
                           xlabel: str = "training labels (oracle calls)") -> Path:
    """Several seeds per method: the geometric mean of the held-out force RMSE (line) and the
    min-max over seeds (band) against the number of labels, log y.

    ``curves[method]`` is a list of ``(n_labels, force_rmse)`` pairs of sequences, one per seed.
    """
    path = Path(path)
    plt = _pyplot()

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k, (method, runs) in enumerate(curves.items()):
            xs = sorted({float(x) for xr, _ in runs for x in xr})
            table = np.full((len(runs), len(xs)), np.nan)
            for r, (xr, yr) in enumerate(runs):
                for x, y in zip(xr, yr):
                    if y is not None:
                        table[r, xs.index(float(x))] = y
            with np.errstate(all="ignore"):
                logs = np.log(table)
                mean = np.exp(np.nanmean(logs, axis=0))
                lo, hi = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
            color = COLORS[k % len(COLORS)]
            ax.plot(xs, mean, "o-", color=color, lw=2, ms=5, label=f"{method} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
        if target is not None:
            ax.axhline(target, color="0.4", ls=":", lw=1.5, label=f"target {target:.3g} eV/Å")
        ax.set_yscale("log")
        ax.locator_params(axis="x", integer=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out force RMSE (eV/Å)")
        ax.legend(frameon=False)
        ax.set_title(title or "label efficiency")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# -- runs ----------------------------------------------------------------------------------------


def run_one(method: str, seed: int, pool, test, settings: BenchSettings, threads: int | None = 1) -> dict[str, Any]:
    """One method, one seed, on the pool core; returns its learning curve and timings."""
    import torch
    from ase.calculators.emt import EMT


    if threads:
        torch.set_num_threads(threads)
    spec = METHODS[method]
    options = dict(spec["options"])
    if spec["acquisition"] == "weighted":
        options.setdefault("n_iterations", max(settings.iterations - 2, 1))  # w1 at the last acquisition
    start = time.perf_counter()
    calls = {"n": 0}
    emt = calculator_oracle(EMT)

    def oracle(frames):
        calls["n"] += len(frames)
        return emt(frames)

    def progress(rec):
        f = rec.test_errors.force_rmse
        print(f"  [{method:9s} seed {seed}] iteration {rec.iteration}: {rec.n_labels:3d} labels, "
              f"held-out force RMSE {f:.4f} eV/Å ({time.perf_counter() - start:.0f} s)", flush=True)

    trainer = (mace_committee_trainer(settings.hyperparameters, settings.n_models, base_seed=100 * seed)
               if settings.learner == "mace" else
               learner_committee_trainer(settings.learner, settings.hyperparameters, settings.n_models,
                                         base_seed=100 * seed))
    result = run_pool_loop(
        pool, oracle, trainer, n_init=settings.n_init, budget=settings.budget, acquisition=spec["acquisition"],
        acquisition_options=options, test_set=test, max_iterations=settings.iterations, seed=seed,
        name=f"{method}-s{seed}", on_iteration=progress,
    )
    picked = [pool[i].info.get("condition") for i in result.state.labelled]
    return {
        "method": method,
        "seed": seed,
        "n_labels": [r.n_labels for r in result.records],
        "force_rmse": [r.test_errors.force_rmse for r in result.records],
        "energy_rmse_per_atom": [r.test_errors.energy_rmse_per_atom for r in result.records],
        "oracle_calls": calls["n"],
        "labelled_conditions": {c: picked.count(c) for c in dict.fromkeys(picked)},
        "stop_reason": result.stop_reason,
        "wall_time": time.perf_counter() - start,
    }


def _worker(args):
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    method, seed, pool, test, settings = args
    return run_one(method, seed, pool, test, settings, threads=1)


def labels_to_target(n_labels: list[int], rmse: list[float], target: float, interpolate: bool = True) -> float | None:
    """Training labels at which a learning curve first reaches the target RMSE (None: never).

    With ``interpolate`` the crossing is located between the two iterations around it, linearly in
    log(RMSE) against labels (the budget grid is coarse); otherwise it is the first grid point.
    """
    prev = None
    for n, f in zip(n_labels, rmse):
        if f is not None and f <= target:
            if not interpolate or prev is None or prev[1] is None or prev[1] <= 0 or f <= 0:
                return float(n)
            (n0, f0), (n1, f1) = prev, (n, f)
            t = (np.log(f0) - np.log(target)) / (np.log(f0) - np.log(f1)) if f0 != f1 else 1.0
            return float(n0 + t * (n1 - n0))
        prev = (n, f)
    return None


def summarise(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Target, labels to target per run, per-method means, and the mean ratio random / AL."""
    random_final = [r["force_rmse"][-1] for r in runs if r["method"] == "random"]
    if target is None:
        if not random_final:
            raise ValueError("no random runs to set the target from: pass --target")
        target = float(max(random_final))
        target_rule = "worst final RMSE of the random runs (every random seed reaches it at its largest budget)"
    else:
        target_rule = "fixed (--target)"
    for r in runs:
        r["labels_to_target"] = labels_to_target(r["n_labels"], r["force_rmse"], target)
        r["labels_to_target_grid"] = labels_to_target(r["n_labels"], r["force_rmse"], target, interpolate=False)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    per_method = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        reached = [r["labels_to_target"] for r in mine if r["labels_to_target"] is not None]
        per_method[m] = {
            "seeds": len(mine),
            "reached": len(reached),
            "mean_labels_to_target": float(np.mean(reached)) if reached else None,
            "mean_final_force_rmse": float(np.mean([r["force_rmse"][-1] for r in mine])),
        }
    ratios = {}
    base = per_method.get("random", {}).get("mean_labels_to_target")
    for m in methods:
        if m == "random" or base is None:
            continue
        mean = per_method[m]["mean_labels_to_target"]
        ok = per_method[m]["reached"] == per_method[m]["seeds"]
        ratios[m] = {"ratio_random_over_al": None if mean is None else base / mean, "all_seeds_reached": ok}
    return {"target_force_rmse": target, "target_rule": target_rule, "per_method": per_method,
            "ratios": ratios}


def run_benchmark(settings: BenchSettings, out: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Build the data, run every method and seed, summarise; writes JSON and PNG to ``out``."""
    t0 = time.perf_counter()
    pool, test = build_data(settings.pool, log)
    tasks = [(m, s) for s in settings.seeds for m in settings.methods]
    log(f"{len(tasks)} runs ({', '.join(settings.methods)} x seeds {settings.seeds}), labels "
        f"{settings.n_init} + {settings.iterations - 1} x {settings.budget}, {settings.jobs} in parallel")
    if settings.jobs > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(settings.jobs, mp_context=mp.get_context("spawn")) as ex:
            runs = list(ex.map(_worker, [(m, s, pool, test, settings) for m, s in tasks]))
    else:
        runs = [run_one(m, s, pool, test, settings, threads=None) for m, s in tasks]
    summary = summarise(runs, settings.target)
    result = {"settings": asdict(settings), "pool_size": len(pool), "test_size": len(test), "runs": runs,
              **summary, "wall_time": time.perf_counter() - t0}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "label_efficiency.json").write_text(json.dumps(result, indent=1))

        curves = {m: [(r["n_labels"], r["force_rmse"]) for r in runs if r["method"] == m] for m in settings.methods}
        plot_method_comparison(curves, out / "label_efficiency.png", target=summary["target_force_rmse"],
                               title=f"EMT Cu, pool {len(pool)}, held-out {len(test)}")
        result["files"] = [str(out / "label_efficiency.json"), str(out / "label_efficiency.png")]
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = [f"target held-out force RMSE: {result['target_force_rmse']:.4f} eV/Å ({result['target_rule']})",
            f"{'method':10s} {'seed':>4s} {'labels to target':>17s} {'final RMSE (eV/Å)':>18s} {'oracle calls':>13s}"]
    for r in sorted(result["runs"], key=lambda r: (r["method"], r["seed"])):
        ltt = r["labels_to_target"]
        rows.append(f"{r['method']:10s} {r['seed']:4d} {('> ' + str(r['n_labels'][-1])) if ltt is None else f'{ltt:.1f}':>17} "
                    f"{r['force_rmse'][-1]:18.4f} {r['oracle_calls']:13d}")
    rows.append("")
    for m, s in result["per_method"].items():
        mean = s["mean_labels_to_target"]
        rows.append(f"{m:10s} mean labels to target {'n/a' if mean is None else f'{mean:.1f}'} "
                    f"({s['reached']}/{s['seeds']} seeds reached), mean final RMSE {s['mean_final_force_rmse']:.4f}")
    for m, r in result["ratios"].items():
        ratio = r["ratio_random_over_al"]
        note = "" if r["all_seeds_reached"] else " (not every seed reached the target: optimistic)"
        rows.append(f"mean labels random / {m}: {'n/a' if ratio is None else f'{ratio:.2f}'}{note}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (~2 min)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--target", type=float, default=None, help="target held-out force RMSE (eV/Å)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (default 2)")
    parser.add_argument("--common-frames", type=int, default=None,
                        help="frames of the common condition (300 K) in the pool: the pool's redundancy "
                             "(default 400; the rare conditions keep their counts)")
    parser.add_argument("--learner", choices=["mace", "deepmd"], default="mace",
                        help="learner.kind of the committee (deepmd: pip install almat[deepmd])")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmark_results/label_efficiency (deepmd: label_efficiency_deepmd)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("benchmark_results/label_efficiency" + ("" if args.learner == "mace" else f"_{args.learner}"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # also in the worker processes
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    if args.seeds is not None:
        settings.seeds = list(range(args.seeds))
    if args.methods:
        unknown = [m for m in args.methods.split(",") if m not in METHODS]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
        settings.methods = args.methods.split(",")
    if args.iterations is not None:
        settings.iterations = args.iterations
    if args.jobs is not None:
        settings.jobs = args.jobs
    if args.learner == "deepmd":
        settings.learner = "deepmd"
        settings.hyperparameters = dict(DEEPMD_QUICK_HP if args.quick else DEEPMD_HP)
    settings.target = args.target
    if args.common_frames is not None:
        if args.common_frames < 1:
            parser.error("--common-frames must be >= 1")
        first = settings.pool.conditions[0]
        settings.pool.conditions[0] = (*first[:4], args.common_frames)
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    result = run_benchmark(settings, args.out)
    print()
    print(format_table(result))
    print(f"\nwall time {result['wall_time']:.0f} s; wrote {', '.join(result.get('files', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
