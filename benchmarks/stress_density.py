"""What training on stresses does to a committee's density: two committees trained from scratch on the same
labels of a finished campaign, with ``stress_weight`` 0 and with the given weight, relax the campaign's
oracle-relaxed start cells (cell included); their densities against the oracle's.

    python benchmarks/stress_density.py li6ps5cl-npt                      # stress_weight 0 vs 0.1
    python benchmarks/stress_density.py li6ps5cl-npt --stress-weight 0.3 --n-models 2 --epochs 30 --json out.json
    python benchmarks/stress_density.py li6ps5cl-npt --quick              # 2 members, 5 epochs, 2 starts

Reads the store of almat's settings (``ALMAT_DB_PATH`` / ``ALMAT_MONGO_URI``) and the campaign's learner
hyperparameters from its last model; trains ``--n-models`` members per committee (seeds 0, 1, ...). Writes
``benchmark_results/stress_density/<campaign>.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    from npt_check import density, relax_with

    from almat.campaign.md import relaxed_starts
    from almat.learner.committee import Committee
    from almat.learner.hyperparameters import MaceHyperParameters
    from almat.learner.mace import train_mace
    from almat.schemas import LabelDoc, to_atoms
    from almat.settings import AlmatSettings
    from almat.stores import CampaignDB

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign")
    parser.add_argument("--stress-weight", type=float, default=0.1, help="GPa² (default 0.1)")
    parser.add_argument("--n-models", type=int, default=4)
    parser.add_argument("--epochs", type=int, help="epochs from scratch (default: the campaign's)")
    parser.add_argument("--quick", action="store_true", help="2 members, 5 epochs, the first 2 starts")
    parser.add_argument("--json", type=Path, help="results JSON (default: benchmark_results/stress_density/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_models, args.epochs = 2, 5

    with CampaignDB.from_settings(AlmatSettings()) as db:
        labels = [LabelDoc.model_validate(d) for d in db.labels.query({"campaign": args.campaign, "status": "ok"})]
        records = sorted(db.iterations.query({"campaign": args.campaign}), key=lambda d: d["iteration"])
        model_doc = db.models.query_one({"model_id": records[-1]["model_ids"][0]}) if records else None
        starts = relaxed_starts(db, args.campaign)[:2 if args.quick else None]
    if not labels or not starts or model_doc is None:
        print(f"error: campaign {args.campaign!r} has no labels, models or pre-relaxed starts", file=sys.stderr)
        return 2
    labels.sort(key=lambda label: label.label_id)  # the same order, so the same splits, on any store
    hp = MaceHyperParameters(**{k: v for k, v in (model_doc.get("hyperparameters") or {}).items()
                                if k in MaceHyperParameters.model_fields})
    if args.epochs:
        hp = hp.model_copy(update={"epochs": args.epochs})
    atoms_list, ids = [label.to_atoms() for label in labels], [label.label_id for label in labels]
    with_stress = sum(label.stress is not None for label in labels)
    print(f"campaign {args.campaign}: {len(labels)} ok labels ({with_stress} with a stress), {len(starts)} starts; "
          f"{args.n_models} members of {hp.num_channels} channels, {hp.epochs} epochs")
    rows = []
    for weight in (0.0, args.stress_weight):
        settings = hp.model_copy(update={"stress_weight": weight})
        t0 = time.perf_counter()
        results = [train_mace(atoms_list, ids, settings, seed=s) for s in range(args.n_models)]
        committee = Committee([r.model for r in results])
        wall = time.perf_counter() - t0
        for index, structure in enumerate(starts):
            oracle = to_atoms(structure)
            relaxed = relax_with(oracle, committee.calculator(stress=True))
            row = {"stress_weight": weight, "start": index, "oracle_density": density(oracle),
                   "committee_density": density(relaxed), "train_s": wall,
                   "valid_force_rmse": float(np.mean([r.metrics["force_rmse"] for r in results])),
                   "valid_stress_rmse_gpa": (float(np.mean([r.metrics["stress_rmse_gpa"] for r in results]))
                                             if weight > 0 else None)}
            row["error_percent"] = 100 * (row["committee_density"] / row["oracle_density"] - 1)
            rows.append(row)
            print(f"stress_weight {weight:g}: start {index}: committee {row['committee_density']:.3f} g/cm³ "
                  f"vs oracle {row['oracle_density']:.3f} ({row['error_percent']:+.1f} %); validation force RMSE "
                  f"{row['valid_force_rmse']:.3f} eV/Å" + (f", stress RMSE {row['valid_stress_rmse_gpa']:.2f} GPa"
                                                          if weight > 0 else "") + f" (trained in {wall:.0f} s)",
                  flush=True)
    print("\n| stress_weight | start | oracle g/cm³ | committee g/cm³ | error | validation F RMSE (eV/Å) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stress_weight']:g} | {r['start']} | {r['oracle_density']:.3f} | {r['committee_density']:.3f} | "
              f"{r['error_percent']:+.1f} % | {r['valid_force_rmse']:.3f} |")
    out = args.json or ROOT / "benchmark_results" / "stress_density" / f"{args.campaign}{'-quick' * args.quick}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"campaign": args.campaign, "quick": args.quick, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
