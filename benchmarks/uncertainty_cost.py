"""Uncertainty at the cost of one model: a committee of 4 MACE models against a shallow ensemble of 4 heads and
one model's LLPR.

On the same data (Cu32 with EMT, or the 13-atom ordered Li6PS5Cl cell with GFN1-xTB: ``--system lpsc``) it
measures, for the committee (4 seeds), the shallow ensemble (``almat.learner.shallow``, 4 heads, trained
with ``head_forces: all``, the default, and ``rotate``; ``shallow-nll``: ``all`` then ``--nll-epochs`` of the
force NLL) and LLPR (``almat.learner.llpr``: one model, its last layer's covariance; ``llpr-r4``: the 4 leading
covariance directions only):

- training time of one iteration (all members), from scratch;
- on held-out frames (MD with the oracle at several temperatures, plus rattled copies: a spread of errors):
  the force RMSE of the mean, Spearman rho between the model deviation (max atomic force deviation) and the
  true max atomic force error, the calibration factor k and the split-conformal coverage (k and q fitted on
  one half with ``almat.uncertainty.calibration.calibrate``, the coverage of q k u measured on the other half;
  target 90 %);
- the MD step cost (ms per Langevin step, one walker, ``almat.sampler.run_walkers``, a frame recorded every
  ``--sample-every`` steps) against one model; the committee also batched (``Committee(batched=True)``, one
  vmapped pass), the shallow ensemble and LLPR also with their uncertainty at every step (``sample_every`` 1);
- with ``--campaign [FILE]``: the same campaign (default: the Cu/EMT demo, ``workflows/cu_emt.yaml``) run with
  each uncertainty kind (only ``learner.uncertainty`` and ``head_forces`` change): status, iterations, labels,
  wall time, training time, and the final committee's force RMSE on the held-out frames.

    OMP_NUM_THREADS=1 python benchmarks/uncertainty_cost.py                 # Cu32, about 5 min on 2 cores
    python benchmarks/uncertainty_cost.py --md-repeat 1 2 --campaign --json out.json  # + Cu256 MD, the demo
    python benchmarks/uncertainty_cost.py --system lpsc --n-train 24 --n-test 24     # argyrodite, xTB
    python benchmarks/uncertainty_cost.py --quick     # 8 training frames, 16 held out, 5 epochs, 10 MD steps
    python benchmarks/uncertainty_cost.py --kinds committee llpr shallow-nll   # only these

Writes ``benchmark_results/uncertainty_cost/results.json`` (``--json``).
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


def oracle(system: str):
    if system == "lpsc":
        from almat.oracle.xtb import GFN1_XTB

        return GFN1_XTB.load()
    from ase.calculators.emt import EMT

    return EMT()


def start_structure(system: str, repeat: int = 1):
    from ase.build import bulk
    from ase.io import read

    if system == "lpsc":
        atoms = read(ROOT / "tests" / "test_data" / "structures" / "Li6PS5Cl_enumerated_rank0.cif")
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    return atoms.repeat(repeat) if repeat > 1 else atoms


def label(atoms, calc):
    from ase.calculators.singlepoint import SinglePointCalculator

    a = atoms.copy()
    a.calc = calc
    e, f = a.get_potential_energy(), a.get_forces()
    a.calc = SinglePointCalculator(a, energy=e, forces=f)
    return a


def training_frames(system: str, n: int, seed: int):
    """Strained and rattled copies of the start structure (what a campaign's initial data look like)."""
    rng = np.random.default_rng(seed)
    base, calc, out = start_structure(system), oracle(system), []
    for _ in range(n):
        a = base.copy()
        a.set_cell(a.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        out.append(label(a, calc))
    return out


def held_out_frames(system: str, n: int, seed: int):
    """Frames of oracle MD at 300-1000 K and rattled copies (0.02-0.1 Å): easy and hard frames."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    base, calc = start_structure(system), oracle(system)
    out = []
    temperatures = [300.0, 600.0, 1000.0]
    per_t = max(1, n // (2 * len(temperatures)))
    for t in temperatures:
        a = base.copy()
        a.calc = calc
        MaxwellBoltzmannDistribution(a, temperature_K=t, rng=rng)
        dyn = Langevin(a, 2 * units.fs, temperature_K=t, friction=0.02, rng=rng)
        for _ in range(per_t):
            dyn.run(10)
            out.append(label(a, calc))
    while len(out) < n:
        a = base.copy()
        a.positions += rng.normal(0, rng.uniform(0.02, 0.1), a.positions.shape)
        out.append(label(a, calc))
    return out[:n]


#: what the benchmark compares
KINDS = ("committee", "shallow-all", "shallow-rotate", "shallow-nll", "llpr", "llpr-r4")


def train(kind: str, frames, hp, n: int, seed: int = 0, nll_epochs: int = 10):
    from almat.learner.committee import Committee
    from almat.learner.mace import train_mace
    from almat.learner.registry import load_learner
    from almat.learner.shallow import train_shallow_mace

    ids = [str(i) for i in range(len(frames))]
    t0 = time.perf_counter()
    if kind == "committee":
        models = [train_mace(frames, ids, hp, seed=seed + k).model for k in range(n)]
    elif kind.startswith("llpr"):
        rank = 4 if kind == "llpr-r4" else None
        models = [load_learner("mace", "llpr").train(frames, ids, hp, seed=seed, rank=rank).model]
    else:
        models = [train_shallow_mace(frames, ids, hp, seed=seed, n_heads=n, rotate=kind == "shallow-rotate",
                                     nll_epochs=nll_epochs if kind == "shallow-nll" else 0).model]
    return Committee(models), time.perf_counter() - t0


def quality(committee, frames, coverage: float, seed: int) -> dict:
    from almat.uncertainty.calibration import calibrate, committee_errors, empirical_coverage, spearman

    u, e = committee_errors(committee, frames)
    pred = committee.predict(frames)
    df = np.concatenate([pred.mean_forces(i) - f.get_forces() for i, f in enumerate(frames)])
    order = np.random.default_rng(seed).permutation(len(frames))
    cal, ev = order[: len(order) // 2], order[len(order) // 2:]
    c = calibrate(u[cal], e[cal], coverage=coverage)
    return {"force_rmse": float(np.sqrt(np.mean(df ** 2))), "spearman": float(spearman(u, e)), "k": c.factor,
            "q": c.quantile, "coverage": float(empirical_coverage(u[ev], e[ev], c.quantile * c.factor)),
            "mean_deviation": float(u.mean()), "mean_error": float(e.mean())}


class OneModel:
    """One MACE model as a (one-member) committee for the sampler: the reference cost."""

    shallow = False

    def __init__(self, model):
        self.model = model

    def evaluate(self, atoms_list, compute_stress: bool = False):
        from mace.tools.torch_geometric import Batch

        from almat.learner.committee import CommitteePrediction
        from almat.learner.mace import model_inputs

        batch = Batch.from_data_list(model_inputs([self.model], atoms_list))
        out = self.model(batch.to_dict(), training=False, compute_force=True)
        f, ptr = out["forces"].detach().numpy().astype(float)[None], batch.ptr.numpy()
        return CommitteePrediction(out["energy"].detach().numpy().astype(float)[None],
                                   [f[:, ptr[i]:ptr[i + 1]] for i in range(len(atoms_list))])


def md_ms_per_step(committee, atoms, steps: int, sample_every: int, seed: int = 0) -> float:
    from almat.sampler import ExplorationSettings, Walker, run_walkers
    from almat.uncertainty import TrustLevels

    def walker(n):
        return Walker(atoms, ExplorationSettings(temperature=600.0, steps=n, sample_every=min(sample_every, n),
                                                 seed=seed), TrustLevels(lo=1e3, hi=2e3), name="w")

    run_walkers([walker(2)], committee)  # warm up
    t0 = time.perf_counter()
    trajs, _ = run_walkers([walker(steps)], committee)
    done = trajs[0].frames[-1].step
    return 1000 * (time.perf_counter() - t0) / max(done, 1)


def campaign(kind: str, path: Path, test) -> dict:
    """The campaign of ``path`` (the Cu/EMT demo by default) with the committee or, changed to
    ``learner.uncertainty: shallow`` with ``n_heads = n_models``, the shallow ensemble (or ``llpr``); nothing
    else changes."""
    import tempfile

    import yaml

    from almat.campaign import load_config, run_campaign
    from almat.learner.committee import Committee
    from almat.settings import AlmatSettings
    from almat.stores import CampaignDB

    config = yaml.safe_load(path.read_text())
    config["name"] = f"{config['name']}-{kind}"
    config["base_dir"] = str(path.parent.resolve())
    if kind.startswith("llpr"):
        config["learner"] = {**config.get("learner", {}), "uncertainty": "llpr",
                             "llpr_rank": 4 if kind == "llpr-r4" else None}
    elif kind != "committee":
        config["learner"] = {**config.get("learner", {}), "uncertainty": "shallow",
                             "n_heads": config.get("learner", {}).get("n_models", 4),
                             "head_forces": "rotate" if kind == "shallow-rotate" else "all",
                             "nll_epochs": 10 if kind == "shallow-nll" else 0}
    tmp = Path(tempfile.mkdtemp(prefix="almat-bench-"))
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    t0 = time.perf_counter()
    result = run_campaign(load_config(config), settings)
    wall = time.perf_counter() - t0
    with CampaignDB.from_settings(settings) as db:
        final = Committee.from_store(db, result.iterations[-1].model_ids)
        train_s = sum(d.get("wall_time") or 0.0 for d in db.models.query({"campaign": config["name"]}))
    pred = final.predict(test)
    df = np.concatenate([pred.mean_forces(i) - f.get_forces() for i, f in enumerate(test)])
    return {"status": result.campaign.status.value, "iterations": len(result.iterations),
            "labels": result.campaign.n_labels, "wall_s": wall, "train_s": train_s,
            "force_rmse": float(np.sqrt(np.mean(df ** 2)))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=["cu", "lpsc"], default="cu")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--members", type=int, default=4, help="committee models = shallow heads")
    parser.add_argument("--md-steps", type=int, default=40)
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--md-repeat", type=int, nargs="+", default=[1],
                        help="MD cells: the start structure repeated (1: Cu32 / 13 atoms; 2: Cu256 / 104 atoms)")
    parser.add_argument("--campaign", type=Path, nargs="?", const=ROOT / "workflows" / "cu_emt.yaml", default=None,
                        help="also run this campaign (default: the Cu/EMT demo) with each uncertainty kind")
    parser.add_argument("--campaign-only", action="store_true", help="only the campaigns (with --campaign)")
    parser.add_argument("--skip", nargs="*", default=[], help="campaigns not to run (committee, shallow, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="uncertainty kinds to compare")
    parser.add_argument("--nll-epochs", type=int, default=10, help="shallow-nll: epochs of the force NLL")
    parser.add_argument("--quick", action="store_true", help="8 training frames, 16 held out, 5 epochs, 10 MD steps")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmark_results" / "uncertainty_cost" / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.md_steps, args.sample_every = 8, 16, 5, 10, 5
    from almat.threads import torch_threads

    with torch_threads():  # the free cores, as almat's jobs take them (ALMAT_NUM_THREADS fixes it)
        run(args)


def run(args) -> None:
    import torch

    from almat.learner.mace import MaceHyperParameters

    hp = MaceHyperParameters(num_channels=args.channels, epochs=args.epochs, batch_size=4, eval_every=5)
    t0 = time.perf_counter()
    frames, test = training_frames(args.system, args.n_train, args.seed), held_out_frames(args.system, args.n_test,
                                                                                          args.seed + 1)
    print(f"data: {len(frames)} training and {len(test)} held-out frames of {len(frames[0])} atoms "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    kinds = [k for k in KINDS if k in args.kinds or k == "committee"]  # (the committee: the MD reference)
    if args.campaign_only:
        kinds, args.md_repeat = [], []
    rows = {}
    for kind in kinds:
        committee, wall = train(kind, frames, hp, args.members, args.seed, args.nll_epochs)
        rows[kind] = {"train_s": wall, "committee": committee, **quality(committee, test, 0.9, args.seed)}
        r = rows[kind]
        print(f"{kind:12s} trained in {wall:6.1f} s; force RMSE {r['force_rmse']:.3f} eV/Å, Spearman "
              f"{r['spearman']:.3f}, k {r['k']:.2f}, coverage {100 * r['coverage']:.0f} %", flush=True)
    md = []
    for repeat in args.md_repeat:
        one = OneModel(rows["committee"]["committee"].models[0])
        atoms = start_structure(args.system, repeat)
        row = {"atoms": len(atoms), "one": md_ms_per_step(one, atoms, args.md_steps, args.sample_every)}
        c = rows["committee"]["committee"]
        c.batched = False
        row["committee"] = md_ms_per_step(c, atoms, args.md_steps, args.sample_every)
        c.batched = True
        row["committee batched"] = md_ms_per_step(c, atoms, args.md_steps, args.sample_every)
        c.batched = False
        for kind, name in (("shallow-all", "shallow"), ("llpr", "llpr"), ("llpr-r4", "llpr-r4")):
            if kind in rows:
                s = rows[kind]["committee"]
                row[name] = md_ms_per_step(s, atoms, args.md_steps, args.sample_every)
                row[f"{name}, every step"] = md_ms_per_step(s, atoms, args.md_steps, 1)
        md.append(row)
        print(f"MD {len(atoms)} atoms: " + ", ".join(f"{k} {v:.1f} ms/step" for k, v in row.items() if k != "atoms"),
              flush=True)
    campaigns = {}
    if args.campaign:
        for kind in KINDS:
            if kind not in args.skip and kind in args.kinds:
                campaigns[kind] = campaign(kind, args.campaign, test)
                print(f"campaign {kind}: {campaigns[kind]}", flush=True)

    info = {"system": args.system, "campaign": str(args.campaign) if args.campaign else None,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "python": sys.version.split()[0], **{k: v for k, v in vars(args).items() if k not in ("json", "campaign")}}
    print(f"\n{args.system}: {len(frames)} training frames, {len(test)} held-out; MACE {args.channels} channels, "
          f"{args.epochs} epochs; {args.members} members; load average {info['load_average'][0]:.1f}\n")
    if rows:
        print("| | train (s) | force RMSE (eV/Å) | Spearman ρ | k | coverage (90 % target) |"
              "\n|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['train_s']:.1f} | {r['force_rmse']:.3f} | {r['spearman']:.3f} | {r['k']:.2f} | "
              f"{100 * r['coverage']:.0f} % |")
    if md:
        print("\n| atoms | " + " | ".join(k for k in md[0] if k != "atoms") + " |\n" + "|---" * len(md[0]) + "|")
    for row in md:
        print(f"| {row['atoms']} | " + " | ".join(f"{v:.1f} ms ({v / row['one']:.2f}×)" for k, v in row.items()
                                                  if k != "atoms") + " |")
    if campaigns:
        print(f"\n{args.campaign.name}:\n\n| uncertainty | status | iterations | labels | wall (s) | training (s) | "
              "held-out force RMSE (eV/Å) |\n|---|---|---|---|---|---|---|")
        for kind, c in campaigns.items():
            print(f"| {kind} | {c['status']} | {c['iterations']} | {c['labels']} | {c['wall_s']:.0f} | "
                  f"{c['train_s']:.0f} | {c['force_rmse']:.3f} |")
    if args.json:
        for r in rows.values():
            r.pop("committee")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "quality": rows, "md": md, "campaigns": campaigns}, indent=1))


if __name__ == "__main__":
    main()
