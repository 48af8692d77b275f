"""OpenMP wait policy and torch threads, side by side: the demo's training and one exploration job, on a
free machine and with CPU hogs beside them.

Each measurement is a fresh process (the wait policy is read when torch starts its OpenMP threads):

- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, torch's default threads (what ``almat`` set before issue 24);
- ``default``: the policy unset, torch's default threads;
- ``job``: the policy unset, ``almat.threads.job_threads()`` (the cores free at the job's start).

Workloads: one MACE training of the demo's size (24 EMT labels of Cu32, the hyperparameters of
workflows/cu_emt.yaml, 50 epochs) and one exploration job of the demo (2 walkers at 300 and 800 K, 250 steps,
a frame every 5, a 4-model committee, ``run_walkers``). ``--hogs N`` runs N busy Python loops beside each
measurement. The load average and the free cores are recorded with every figure; the order of the policies
changes from one repeat to the next.

    python benchmarks/thread_policy.py --hogs 0 2 --repeats 2
    python benchmarks/thread_policy.py --quick      # 10 epochs, 50 steps, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark_results" / "thread_policy"
POLICIES = ("passive", "default", "job")
#: the demo's hyperparameters (workflows/cu_emt.yaml)
DEMO_HP = {"r_max": 4.5, "num_channels": 16, "max_L": 0, "epochs": 50, "warm_start_epochs": 25, "batch_size": 4,
           "dtype": "float32", "device": "cpu"}


def demo_labels(n: int = 24, seed: int = 0):
    """``n`` strained and rattled Cu32 cells labelled by EMT (as the demo's initial data)."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    out = []
    for _ in range(n):
        a = base.copy()
        a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def committee_file(epochs: int) -> Path:
    """A 4-model committee of the demo's size on the demo's labels (trained once, kept in ``OUT``)."""
    from almat.learner.mace import train_mace
    from almat.learner.models import model_to_bytes

    path = OUT / f"committee_{epochs}.json"
    if not path.exists():
        import base64

        labels = demo_labels()
        ids = [str(i) for i in range(len(labels))]
        hp = {**DEMO_HP, "epochs": epochs}
        blobs = [base64.b64encode(model_to_bytes(train_mace(labels, ids, hp, seed=s).model)).decode() for s in range(4)]
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(blobs))
    return path


def work_train(epochs: int) -> dict:
    from almat.learner.mace import train_mace

    labels = demo_labels()
    t0 = time.perf_counter()
    result = train_mace(labels, [str(i) for i in range(len(labels))], {**DEMO_HP, "epochs": epochs}, seed=0)
    return {"seconds": time.perf_counter() - t0, "force_rmse": result.metrics["force_rmse"]}


def work_explore(steps: int, committee_path: Path) -> dict:
    import base64

    from ase.build import bulk

    from almat.learner.committee import Committee
    from almat.learner.models import model_from_bytes
    from almat.sampler import ExplorationSettings, Walker, run_walkers
    from almat.uncertainty import TrustLevels

    committee = Committee([model_from_bytes(base64.b64decode(b)) for b in json.loads(committee_path.read_text())])
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    walkers = [Walker(atoms, ExplorationSettings(temperature=t, steps=steps, sample_every=5, seed=k),
                      TrustLevels(lo=1e-3, hi=1e3), name=f"w{k}") for k, t in enumerate((300.0, 800.0))]
    t0 = time.perf_counter()
    trajs, info = run_walkers(walkers, committee)
    return {"seconds": time.perf_counter() - t0, "batched_calls": info["batched_calls"],
            "frames": sum(len(t.frames) for t in trajs)}


def worker(args) -> None:
    """One measurement in this process (``--worker``): prints one JSON line."""
    import torch

    from almat.threads import free_cores, job_threads

    free = free_cores()
    if args.policy == "job":
        torch.set_num_threads(job_threads())
    threads = torch.get_num_threads()
    if args.worker == "train":
        out = work_train(args.epochs)
    else:
        out = work_explore(args.steps, Path(args.committee))
    print(json.dumps({**out, "threads": threads, "free_cores_at_start": round(free, 2)}))


def measure(kind: str, policy: str, hogs: int, args, committee: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "ALMAT_NUM_THREADS")}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    hog_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(1.0 if hogs else 0.0)
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--worker", kind, "--policy", policy, "--epochs", str(args.epochs),
               "--steps", str(args.steps)] + (["--committee", str(committee)] if committee else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        for p in hog_procs:
            p.kill()
            p.wait()
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"workload": kind, "policy": policy, "hogs": hogs, "load_1min": round(load, 2), **row}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 2], help="busy loops beside the measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--workloads", nargs="+", default=["train", "explore"], choices=["train", "explore"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--quick", action="store_true", help="10 epochs, 50 steps, 1 repeat")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    parser.add_argument("--worker", choices=["train", "explore"], help=argparse.SUPPRESS)
    parser.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--committee", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.epochs, args.steps, args.repeats = 10, 50, 1
    committee = committee_file(20) if "explore" in args.workloads else None
    rows = []
    for repeat in range(args.repeats):
        for hogs in args.hogs:
            for kind in args.workloads:
                order = args.policies[repeat % len(args.policies):] + args.policies[:repeat % len(args.policies)]
                for policy in order:
                    row = {"repeat": repeat, **measure(kind, policy, hogs, args, committee)}
                    rows.append(row)
                    print(f"{kind:8s} hogs={hogs} {policy:8s} {row['seconds']:7.1f} s  threads={row['threads']} "
                          f"free={row['free_cores_at_start']} load={row['load_1min']}", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"epochs": args.epochs, "steps": args.steps, "rows": rows}, indent=1))
    print("\n| workload | hogs | policy | seconds | threads | load (1 min) |\n|---|---:|---|---|---|---|")
    for kind in args.workloads:
        for hogs in args.hogs:
            for policy in args.policies:
                sel = [r for r in rows if (r["workload"], r["hogs"], r["policy"]) == (kind, hogs, policy)]
                seconds = " / ".join(f"{r['seconds']:.1f}" for r in sel)
                threads = " / ".join(str(r["threads"]) for r in sel)
                print(f"| {kind} | {hogs} | {policy} | {seconds} | {threads} | "
                      + " / ".join(str(r["load_1min"]) for r in sel) + " |")


if __name__ == "__main__":
    main()
