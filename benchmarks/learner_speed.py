"""Cost of one committee MD step for every installed learner, on Cu32 (EMT labels) and a 13-atom Li6PS5Cl cell
(the enumerated argyrodite of ``tests/test_data/structures``, GFN1-xTB labels).

For each learner kind that loads here (``almat.learner.registry.LEARNERS``; ``mace-finetune`` is left out:
it needs a foundation file) it trains a committee of ``--members`` members the way the learner builds one
(its own ``train``, a few epochs on a handful of labelled frames: the weights do not change the cost), then
times Langevin MD driven by the committee's mean through almat's sampler (``almat.sampler.run_walkers``, one
walker, a frame recorded every 10 steps, every member's forces and stresses at every step, as in a
campaign's exploration): milliseconds per MD step after a warm-up.

    python benchmarks/learner_speed.py              # 4 members, Cu32 and Li6PS5Cl, 20 steps each (1 thread)
    python benchmarks/learner_speed.py --quick      # 2 members, Cu32 only, 5 steps
    python benchmarks/learner_speed.py --learners mace sevennet-finetune --systems lpsc --threads 2

Writes ``learner_speed.json`` to ``--out`` (default ``benchmark_results/learner_speed[_quick]``) and prints a
table (ms per committee MD step; per member in brackets).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark_results"
#: a tiny training per learner kind: enough for a committee of distinct members
TRAINING = {
    "mace": {"epochs": 2, "batch_size": 2, "eval_every": 1},
    "chgnet-finetune": {"epochs": 1, "batch_size": 2},
    "sevennet-finetune": {"epochs": 1, "batch_size": 2},
    "deepmd": {"numb_steps": 20},
}
SKIPPED = {"mace-finetune": "needs a foundation .model file"}


def start_structure(system: str):
    from ase.build import bulk
    from ase.io import read

    if system == "lpsc":
        return read(ROOT / "tests" / "test_data" / "structures" / "Li6PS5Cl_enumerated_rank0.cif")
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


def labelled(system: str, n: int, seed: int = 0) -> list:
    """``n`` rattled, strained copies of the start structure, labelled by the system's oracle."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from almat.oracle.xtb import xtb_spec

    rng = np.random.default_rng(seed)
    calc = xtb_spec().load() if system == "lpsc" else EMT()
    frames = []
    for _ in range(n):
        atoms = start_structure(system)
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = calc
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        frames.append(atoms)
    return frames


def committee_of(kind: str, frames: list, members: int):
    from almat.learner.committee import Committee
    from almat.learner.registry import load_learner

    learner = load_learner(kind)
    ids = [str(i) for i in range(len(frames))]
    hp = learner.validate(TRAINING.get(kind, {}))
    models = [learner.train(frames, ids, hp, seed=k).model for k in range(members)]
    return Committee(models, [f"m{k}" for k in range(members)])


def ms_per_step(committee, atoms, steps: int) -> float:
    from almat.sampler import ExplorationSettings, Walker, run_walkers
    from almat.uncertainty import TrustLevels

    def walker(n):
        settings = ExplorationSettings(temperature=600.0, steps=n, sample_every=min(10, n), seed=0)
        return Walker(atoms.copy(), settings, TrustLevels(lo=1e3, hi=2e3), name="w")

    run_walkers([walker(2)], committee)  # warm-up
    t0 = time.perf_counter()
    trajs, _ = run_walkers([walker(steps)], committee)
    return 1000 * (time.perf_counter() - t0) / max(trajs[0].frames[-1].step, 1)


def run(learners: list[str], systems: list[str], members: int, steps: int, n_train: int) -> dict[str, Any]:
    from almat.learner.registry import load_learner

    result: dict[str, Any] = {"members": members, "steps": steps, "rows": [], "skipped": {}}
    for kind in learners:
        if kind in SKIPPED:
            result["skipped"][kind] = SKIPPED[kind]
            continue
        try:
            load_learner(kind)
        except ValueError as exc:
            result["skipped"][kind] = str(exc)
            print(f"{kind}: skipped ({exc})", flush=True)
            continue
        for system in systems:
            t0 = time.perf_counter()
            committee = committee_of(kind, labelled(system, n_train), members)
            train_s = time.perf_counter() - t0
            ms = ms_per_step(committee, start_structure(system), steps)
            row = {"learner": kind, "system": system, "n_atoms": len(start_structure(system)),
                   "members": committee.n_members, "ms_per_step": ms, "ms_per_member": ms / committee.n_members,
                   "train_s": train_s}
            result["rows"].append(row)
            print(f"{kind} {system}: {ms:.0f} ms per committee MD step ({ms / committee.n_members:.0f} per member; "
                  f"committee trained in {train_s:.0f} s)", flush=True)
    return result


def table(result: dict[str, Any]) -> str:
    systems = sorted({r["system"] for r in result["rows"]}, key=["cu", "lpsc"].index)
    names = {"cu": "Cu32", "lpsc": "Li6PS5Cl (13 atoms)"}
    rows = ["| learner | " + " | ".join(f"{names[s]}, ms per step (per member)" for s in systems) + " |",
            "|---" * (len(systems) + 1) + "|"]
    for kind in dict.fromkeys(r["learner"] for r in result["rows"]):
        cells = []
        for s in systems:
            r = next((r for r in result["rows"] if r["learner"] == kind and r["system"] == s), None)
            cells.append(f"{r['ms_per_step']:.0f} ({r['ms_per_member']:.0f})" if r else "-")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    rows += [f"| {kind} | skipped: {why} |" for kind, why in result["skipped"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from almat.learner.registry import LEARNERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--learners", nargs="+", default=None, help="default: every registered learner kind")
    parser.add_argument("--systems", nargs="+", default=None, choices=["cu", "lpsc"])
    parser.add_argument("--members", type=int, default=None, help="committee members (default 4; 2 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed MD steps (default 20; 5 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = args.out or OUT / ("learner_speed_quick" if args.quick else "learner_speed")
    result = run(args.learners or list(LEARNERS), args.systems or (["cu"] if args.quick else ["cu", "lpsc"]),
                 args.members or (2 if args.quick else 4), args.steps or (5 if args.quick else 20), 3)
    result.update(threads=args.threads, python=sys.version.split()[0], torch=torch.__version__)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learner_speed.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"{out / 'learner_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
