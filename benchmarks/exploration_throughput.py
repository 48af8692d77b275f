"""Exploration throughput: many walkers in one batched committee forward against the same walkers one
after another.

Systems: fcc Cu32 (EMT-labelled training data) and a 13-atom ordered Li6PS5Cl cell (the lowest-Ewald
enumerated argyrodite cell, tests/test_data/structures; synthetic labels: only the speed matters here).
The committee: 4 MACE models of the campaign default size (16 channels, max_L 0, float32), trained for
one epoch. For 1, 4 and 16 walkers (NVT Langevin, temperatures 300-900 K, each its own seed) it measures
atom-steps per second of ``almat.sampler.run_walkers`` on all walkers (one batched forward per model per
MD step for all of them) and of the same walkers run one after another (``run_walkers`` on one walker at a
time: the same code, threads and torch settings, without the batching), and, for reference, of
``run_exploration`` with the committee calculator in the main thread (a single walker's
path). torch takes the cores that are free at the start (``almat.threads.job_threads``), as the explore job does.

    python benchmarks/exploration_throughput.py                 # 20 MD steps per walker
    python benchmarks/exploration_throughput.py --steps 50 --walkers 1 4 16 64 --json out.json
    python benchmarks/exploration_throughput.py --quick         # 5 steps, 1 and 4 walkers

Writes ``benchmark_results/exploration_throughput/results.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def committee_for(frames, n_models: int = 4):
    from almat.learner.committee import Committee
    from almat.learner.mace import MaceHyperParameters, train_mace

    hp = MaceHyperParameters(epochs=1, batch_size=8)
    ids = [str(i) for i in range(len(frames))]
    return Committee([train_mace(frames, ids, hp, seed=s).model for s in range(n_models)])


def labelled(atoms, n: int, calc=None, seed: int = 0):
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        if calc is not None:
            a.calc = calc
            e, f = a.get_potential_energy(), a.get_forces()
        else:  # synthetic labels
            e, f = float(rng.normal(-4.0 * len(a), 1.0)), rng.normal(0, 0.5, (len(a), 3))
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def systems():
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import read

    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    lpsc = read(ROOT / "tests" / "test_data" / "structures" / "Li6PS5Cl_enumerated_rank0.cif")
    return {"Cu32": (cu, labelled(cu, 8, EMT())), f"Li6PS5Cl ({len(lpsc)} atoms)": (lpsc, labelled(lpsc, 8))}


def walkers(atoms, n: int, steps: int):
    from almat.sampler import ExplorationSettings, Walker
    from almat.uncertainty import TrustLevels

    temps = np.linspace(300, 900, n) if n > 1 else [300.0]
    return [Walker(atoms, ExplorationSettings(temperature=float(t), steps=steps, sample_every=10, seed=k),
                   TrustLevels(lo=1e-3, hi=1e3), name=f"w{k}") for k, t in enumerate(temps)]


def measure(committee, atoms, n: int, steps: int) -> dict:
    from almat.sampler import run_exploration, run_walkers

    ws = walkers(atoms, n, steps)
    t0 = time.perf_counter()
    batched, _ = run_walkers(ws, committee)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for w in ws:
        run_walkers([w], committee)
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    for w in ws[:4]:  # at most 4: slow
        run_exploration(w.atoms, committee.calculator(), w.trust, w.settings)
    t_main = (time.perf_counter() - t0) * len(ws) / min(len(ws), 4)
    atom_steps = sum(len(atoms) * t.frames[-1].step for t in batched)
    return {"walkers": n, "atom_steps": atom_steps, "batched_s": t_batched, "sequential_s": t_seq,
            "batched_atom_steps_per_s": atom_steps / t_batched, "sequential_atom_steps_per_s": atom_steps / t_seq,
            "main_thread_atom_steps_per_s": atom_steps / t_main, "speedup": t_seq / t_batched}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--walkers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--quick", action="store_true", help="5 steps, 1 and 4 walkers")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmark_results" / "exploration_throughput" / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.walkers = 5, [1, 4]
    import torch

    from almat.threads import job_threads

    torch.set_num_threads(job_threads())  # the free cores, as almat's jobs take them (ALMAT_NUM_THREADS fixes it)

    rows = []
    for name, (atoms, frames) in systems().items():
        committee = committee_for(frames)
        committee.evaluate([atoms])  # warm up
        for n in args.walkers:
            row = {"system": name, **measure(committee, atoms, n, args.steps)}
            rows.append(row)
            print(f"{name:24s} {n:3d} walkers: batched {row['batched_atom_steps_per_s']:8.0f} atom-steps/s, "
                  f"sequential {row['sequential_atom_steps_per_s']:8.0f} atom-steps/s (main thread "
                  f"{row['main_thread_atom_steps_per_s']:.0f}), speed-up "
                  f"{row['speedup']:.1f}x", flush=True)
    info = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "steps": args.steps,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "python": sys.version.split()[0]}
    print("\n| system | walkers | batched atom-steps/s | sequential atom-steps/s | speed-up | main-thread ASE path |"
          "\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['walkers']} | {r['batched_atom_steps_per_s']:.0f} | "
              f"{r['sequential_atom_steps_per_s']:.0f} | {r['speedup']:.1f}x | {r['main_thread_atom_steps_per_s']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
