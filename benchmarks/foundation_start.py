"""Foundation start: labels needed to reach a held-out force RMSE, from scratch (MACE) against committees
fine-tuned from a foundation model (CHGNet's bundled weights; SevenNet-0's, where sevenn is installed), with the
same oracle, pool and acquisition.

Two systems:
- ``cu``: fcc Cu32 frames of EMT MD (the pool of ``label_efficiency.py``), EMT oracle;
- ``lpsc``: Li6PS5Cl cells enumerated from the argyrodite (``tests/test_data/structures``), strained and
  rattled, GFN1-xTB oracle (tblite, about 0.4 s a label).

Both learners run ``run_pool_loop`` of ``label_efficiency.py``: ``n_init`` random labels, then ``budget``
per iteration picked by the committee's max force deviation, 2-member committees, several seeds. The
target is the worst final RMSE of the from-scratch runs (a value every scratch seed reaches); ``labels to
target`` interpolates each learning curve in log(RMSE). The ratio is scratch / foundation, per foundation.

    python benchmarks/foundation_start.py            # 2 seeds, both systems, every foundation installed
    python benchmarks/foundation_start.py --quick    # 1 seed, tiny pools, 1-epoch fine-tuning
    python benchmarks/foundation_start.py --systems cu --learners scratch sevennet --out benchmark_results/fs_cu

Writes ``foundation_start.json`` and ``foundation_start.png`` (learning curves) to ``--out`` (default
``benchmark_results/foundation_start``, or ``foundation_start_quick``). torch takes the cores that are free
(``almat.threads.job_threads``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms

sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import (  # noqa: E402
    PoolSpec, build_data, calculator_oracle, labels_to_target, mace_committee_trainer, run_pool_loop,
)

STRUCTURES = Path(__file__).parents[1] / "tests" / "test_data" / "structures"
OUT = Path(__file__).resolve().parents[1] / "benchmark_results"


def chgnet_committee_trainer(hyperparameters: dict[str, Any], n_models: int = 2, warm_start: bool = True):
    """A train function for ``run_pool_loop``: CHGNet members fine-tuned from the bundled weights."""
    from almat.learner.chgnet import finetune_chgnet
    from almat.learner.committee import Committee
    from almat.learner.hyperparameters import ChgnetHyperParameters

    hp = ChgnetHyperParameters(**hyperparameters)

    def train(frames: Sequence[Atoms], iteration: int, previous=None) -> Committee:
        ids = [str(i) for i in range(len(frames))]
        models = []
        for k in range(n_models):
            init = previous.models[k] if (warm_start and previous is not None) else None
            models.append(finetune_chgnet(list(frames), ids, hp, seed=1000 * iteration + k, init_model=init).model)
        return Committee(models, [f"it{iteration}-m{k}" for k in range(n_models)])

    return train


def sevennet_committee_trainer(hyperparameters: dict[str, Any], n_models: int = 2, warm_start: bool = True):
    """A train function for ``run_pool_loop``: SevenNet-0 members fine-tuned from the bundled weights."""
    from almat.learner.committee import Committee
    from almat.learner.hyperparameters import SevennetHyperParameters
    from almat.learner.sevennet import finetune_sevennet

    hp = SevennetHyperParameters(**hyperparameters)

    def train(frames: Sequence[Atoms], iteration: int, previous=None) -> Committee:
        ids = [str(i) for i in range(len(frames))]
        models = []
        for k in range(n_models):
            init = previous.models[k] if (warm_start and previous is not None) else None
            models.append(finetune_sevennet(list(frames), ids, hp, seed=1000 * iteration + k, init_model=init).model)
        return Committee(models, [f"it{iteration}-m{k}" for k in range(n_models)])

    return train


#: foundation learner -> its committee trainer (the scratch committee is MACE's)
FOUNDATIONS = {"chgnet": chgnet_committee_trainer, "sevennet": sevennet_committee_trainer}


def installed_learners() -> list[str]:
    """scratch, chgnet, and sevennet where sevenn is installed."""
    import importlib.util

    return ["scratch", "chgnet"] + (["sevennet"] if importlib.util.find_spec("sevenn") else [])


def lpsc_data(n_pool: int, n_test: int, seed: int = 0):
    """Strained, rattled copies of the enumerated Li6PS5Cl cells: a pool and an xTB-labelled test set."""
    from ase.io import read

    from almat.oracle.xtb import xtb_spec

    cells = [read(p) for p in sorted(STRUCTURES.glob("Li6PS5Cl_enumerated_rank*.cif"))]
    rng = np.random.default_rng(seed)

    def frame():
        a = cells[rng.integers(len(cells))].copy()
        a.set_cell(a.cell @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(0, rng.choice([0.05, 0.1, 0.2]), a.positions.shape)
        return a

    oracle = calculator_oracle(lambda: xtb_spec().load())
    pool = [frame() for _ in range(n_pool)]
    test = [a for a in oracle([frame() for _ in range(n_test)]) if a is not None]
    return pool, test, oracle


def cu_data(quick: bool):
    from ase.calculators.emt import EMT

    n = (6, 2, 2, 2) if quick else (24, 8, 6, 6)
    spec = PoolSpec(conditions=[("300K", 300.0, 0.0, 0, n[0]), ("900K", 900.0, 0.0, 0, n[1]),
                                ("strain+4%", 600.0, 0.04, 0, n[2]), ("vacancy", 900.0, 0.0, 1, n[3])],
                    n_test_per_condition=1 if quick else 4, burn_in=60, sample_every=10)
    pool, test = build_data(spec, log=lambda m: None)
    return pool, test, calculator_oracle(EMT)


SETTINGS = {
    "full": {"seeds": [0, 1], "n_init": 4, "budget": 4, "iterations": 4, "lpsc_pool": 60, "lpsc_test": 12,
             "mace": {"num_channels": 8, "radial_mlp": [16, 16], "epochs": 40, "warm_start_epochs": 20,
                      "batch_size": 4, "eval_every": 5},
             "chgnet": {"epochs": 6, "warm_start_epochs": 3, "batch_size": 4},
             "sevennet": {"epochs": 6, "warm_start_epochs": 3, "batch_size": 4}},
    "quick": {"seeds": [0], "n_init": 3, "budget": 2, "iterations": 2, "lpsc_pool": 8, "lpsc_test": 3,
              "mace": {"num_channels": 8, "radial_mlp": [16, 16], "epochs": 8, "warm_start_epochs": 4,
                       "batch_size": 4, "eval_every": 4},
              "chgnet": {"epochs": 1, "warm_start_epochs": 1, "batch_size": 4},
              "sevennet": {"epochs": 1, "warm_start_epochs": 1, "batch_size": 4}},
}


def run(systems: list[str], quick: bool, out: Path, learners: Sequence[str] = ("scratch", "chgnet"),
        seeds: Sequence[int] | None = None) -> dict[str, Any]:
    import torch

    from almat.threads import job_threads

    torch.set_num_threads(job_threads())
    cfg = {**SETTINGS["quick" if quick else "full"]}
    cfg["seeds"] = list(seeds) if seeds is not None else cfg["seeds"]
    result: dict[str, Any] = {"settings": cfg, "learners": list(learners), "systems": {}}
    for system in systems:
        t0 = time.perf_counter()
        pool, test, oracle = cu_data(quick) if system == "cu" else lpsc_data(cfg["lpsc_pool"], cfg["lpsc_test"])
        runs = []
        for learner in learners:
            train = (mace_committee_trainer(cfg["mace"]) if learner == "scratch"
                     else FOUNDATIONS[learner](cfg[learner]))
            for seed in cfg["seeds"]:
                res = run_pool_loop(pool, oracle, train, n_init=cfg["n_init"], budget=cfg["budget"],
                                    max_iterations=cfg["iterations"], test_set=test, seed=seed, name=system)
                runs.append({"learner": learner, "seed": seed, "labels": [r.n_train_labels for r in res.records],
                             "rmse": [r.test_errors.force_rmse for r in res.records], "wall_time": res.wall_time})
                print(f"{system} {learner} seed {seed}: " + ", ".join(
                    f"{n}: {f:.3f}" for n, f in zip(runs[-1]["labels"], runs[-1]["rmse"])) + f" ({res.wall_time:.0f} s)",
                    flush=True)
        result["systems"][system] = {**summary(runs, [k for k in learners if k != "scratch"]),
                                     "wall_time": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation_start.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out / "foundation_start.png")
    return result


def summary(runs: list[dict[str, Any]], foundations: Sequence[str]) -> dict[str, Any]:
    """Labels to the scratch target per learner, the ratio scratch / foundation for each foundation, and the
    other way round: when (if ever, within the budget) the scratch committees reach each foundation's first
    error."""
    scratch = [r for r in runs if r["learner"] == "scratch"]
    target = max(r["rmse"][-1] for r in scratch)
    for r in runs:
        r["labels_to_target"] = labels_to_target(r["labels"], r["rmse"], target)
    mean = {k: float(np.mean([r["labels_to_target"] for r in runs if r["learner"] == k
                              and r["labels_to_target"] is not None] or [np.nan])) for k in ("scratch", *foundations)}
    per_foundation = {}
    for k in foundations:
        reach = max(r["rmse"][0] for r in runs if r["learner"] == k)
        hits = [labels_to_target(r["labels"], r["rmse"], reach) for r in scratch]
        per_foundation[k] = {"ratio": mean["scratch"] / mean[k], "first_rmse": reach,
                             "scratch_reaches_first_rmse": None if None in hits else float(np.mean(hits))}
    return {"target": target, "runs": runs, "labels_to_target": mean, "foundations": per_foundation,
            "max_labels": max(r["labels"][-1] for r in runs)}


def plot(result: dict[str, Any], path: Path) -> None:
    from almat.report.plots import _pyplot

    plt = _pyplot()
    systems = result["systems"]
    colours = {"scratch": "C0", "chgnet": "C1", "sevennet": "C2"}
    fig, axes = plt.subplots(1, len(systems), figsize=(5 * len(systems), 3.6), squeeze=False)
    for ax, (system, data) in zip(axes[0], systems.items()):
        for r in data["runs"]:
            ax.plot(r["labels"], r["rmse"], "s--" if r["learner"] == "scratch" else "o-",
                    color=colours.get(r["learner"], "C3"), alpha=0.8, label=f"{r['learner']} (seed {r['seed']})")
        ax.axhline(data["target"], color="grey", lw=0.8, ls=":", label="target")
        ax.set(xlabel="training labels", ylabel="held-out force RMSE (eV/Å)", yscale="log", title=system)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict[str, Any]) -> str:
    rows = ["| system | foundation | target (eV/Å) | labels, scratch | labels, foundation | ratio "
            "| first RMSE scratch → foundation | scratch labels to the foundation's first RMSE |",
            "|---|---|---|---|---|---|---|---|"]
    for system, d in result["systems"].items():
        lt = d["labels_to_target"]
        first_scratch = np.mean([r["rmse"][0] for r in d["runs"] if r["learner"] == "scratch"])
        for k, f in d["foundations"].items():
            first = np.mean([r["rmse"][0] for r in d["runs"] if r["learner"] == k])
            reach = f["scratch_reaches_first_rmse"]
            rows.append(f"| {system} | {k} | {d['target']:.3f} | {lt['scratch']:.1f} | {lt[k]:.1f} | {f['ratio']:.1f}× "
                        f"| {first_scratch:.3f} → {first:.3f} | "
                        + (f"{reach:.1f}" if reach else f"> {d['max_labels']} (never within the budget)") + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems", nargs="+", default=["cu", "lpsc"], choices=["cu", "lpsc"])
    parser.add_argument("--learners", nargs="+", default=None, choices=["scratch", *FOUNDATIONS],
                        help="default: scratch and every foundation installed (scratch is always run: it sets the target)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 (0 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmark_results/foundation_start[_quick]")
    args = parser.parse_args(argv)
    args.out = args.out or OUT / ("foundation_start_quick" if args.quick else "foundation_start")
    start = time.perf_counter()
    learners = ["scratch", *[k for k in (args.learners or installed_learners()) if k != "scratch"]]
    result = run(args.systems, args.quick, args.out, learners, args.seeds)
    print(table(result))
    print(f"total {time.perf_counter() - start:.0f} s; {args.out / 'foundation_start.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
