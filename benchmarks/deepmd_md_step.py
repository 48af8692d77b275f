"""Committee MD step on Cu32: a 4-member DeePMD committee against a 4-member MACE committee (issue 22's target:
DeePMD's step costs at most MACE's).

Both committees have the campaign defaults (MACE: ``MaceHyperParameters()``, 16 channels, max_L 0, float32;
DeePMD: ``DeepmdHyperParameters()``, se_e2_a [10, 20, 40] x 8, fitting [64, 64], float64, ``sel`` from the
labels) and are trained briefly on EMT frames (only the speed matters). A step is what the sampler does
with ``drive: committee``: every member's energy, forces (and with ``--stress`` the stress) of the frame
(``Committee.evaluate``), then a Langevin step; the first steps are warm-up and not timed.

    python benchmarks/deepmd_md_step.py            # 50 timed steps, 1 thread
    python benchmarks/deepmd_md_step.py --quick    # 10 timed steps

Writes ``benchmark_results/deepmd_md_step/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def committees(n_models: int, deepmd_steps: int):
    from emt_cu import emt_cu_atoms

    from almat.learner.committee import Committee
    from almat.learner.registry import load_learner

    frames = emt_cu_atoms(12, seed=0, cubic=True)  # Cu32
    ids = [str(i) for i in range(len(frames))]
    out, train_s = {}, {}
    for kind, hp in (("mace", {"epochs": 1, "batch_size": 4}), ("deepmd", {"numb_steps": deepmd_steps})):
        learner = load_learner(kind)
        start = time.perf_counter()
        out[kind] = Committee([learner.train(frames, ids, hp, seed=s).model for s in range(n_models)])
        train_s[kind] = time.perf_counter() - start
    return frames[0], out, train_s


def md_step_time(atoms, committee, steps: int, warmup: int, stress: bool) -> float:
    """Seconds per Langevin step with the committee calculator (every member, every step)."""
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin

    atoms = atoms.copy()
    atoms.calc = committee.calculator(stress=stress)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=600, friction=0.02, rng=np.random.default_rng(0))
    dyn.run(warmup)
    start = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 timed steps")
    parser.add_argument("--steps", type=int, default=None, help="timed MD steps (default 50)")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--stress", action="store_true", help="also the stress every step (NPT)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark_results" / "deepmd_md_step")
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 50)
    threads = os.environ.get("ALMAT_NUM_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "TF_INTRA_OP_PARALLELISM_THREADS"):
        os.environ.setdefault(var, threads)
    import torch

    torch.set_num_threads(int(threads))
    atoms, found, train_s = committees(args.models, 50 if args.quick else 200)
    result = {"system": "Cu32 (fcc, 2x2x2 cubic)", "n_models": args.models, "threads": int(threads),
              "timed_steps": steps, "stress": args.stress, "train_s": train_s, "step_ms": {}}
    for kind, committee in found.items():
        result["step_ms"][kind] = 1000 * md_step_time(atoms, committee, steps, warmup=3, stress=args.stress)
        print(f"{kind:7s} committee of {args.models}: {result['step_ms'][kind]:.1f} ms per MD step on Cu32 "
              f"({threads} thread(s))")
    result["deepmd_over_mace"] = result["step_ms"]["deepmd"] / result["step_ms"]["mace"]
    print(f"DeePMD / MACE: {result['deepmd_over_mace']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
