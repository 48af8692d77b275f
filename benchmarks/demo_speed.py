"""Where the demo's time goes: train / explore / label / bookkeeping seconds per iteration of a finished
campaign, read from the stored records, so that the next slowdown shows up as a number.

The JobStore keeps every job's document with its ``completed_at`` and its role (``metadata.almat_role``);
``almat run`` runs the jobs one after another, so a job took the time from the previous job's completion to
its own. The jobs of a campaign are those of the flows (``hosts``) whose jobs write the campaign's records;
a resumed campaign has one flow per run, and the first job of each run counts no time. Roles: ``train``
(the committee), ``explore`` (the MD), ``label`` (label and oracle jobs), the rest (register, initial
structures, select, decide) is bookkeeping. Iteration -1 is the initial data.

    python benchmarks/demo_speed.py --run                 # run the demo (workflows/cu_emt.yaml) into a temporary store
    python benchmarks/demo_speed.py --run --quick         # a short demo (4 epochs, 40 MD steps, 2 iterations)
    python benchmarks/demo_speed.py cu-emt                # a finished campaign of almat's store (ALMAT_DB_PATH, ...)
    python benchmarks/demo_speed.py cu-emt --db /tmp/demo1/db

Writes ``benchmark_results/demo_speed/<campaign>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark_results" / "demo_speed"
DEMO = ROOT / "workflows" / "cu_emt.yaml"
PHASES = ("train", "explore", "label", "bookkeeping")
#: job role -> phase (other roles: bookkeeping)
ROLE_PHASE = {"train": "train", "explore": "explore", "label": "label", "oracle": "label"}
#: what --quick changes in the demo's campaign file
QUICK = {"learner": {"hyperparameters": {"epochs": 4, "warm_start_epochs": 2}}, "sampler": {"steps": 40},
         "convergence": {"max_iterations": 2}}


def _campaign_of(output: Any) -> tuple[str | None, int | None]:
    """(campaign, iteration) a job's output names (a document, or a list of them), else (None, None)."""
    first = output[0] if isinstance(output, list) and output else output
    if not isinstance(first, dict):
        return None, None
    return first.get("campaign") or first.get("name"), first.get("iteration")


def campaign_jobs(docs: list[dict], campaign: str) -> list[dict]:
    """The JobStore documents of ``campaign``'s flows, in the order they completed."""
    roots = {d["hosts"][-1] for d in docs if d.get("hosts") and _campaign_of(d.get("output"))[0] == campaign}
    mine = [d for d in docs if d.get("hosts") and d["hosts"][-1] in roots and d.get("completed_at")]
    return sorted(mine, key=lambda d: d["completed_at"])


def phase_table(docs: list[dict], campaign: str) -> dict[str, Any]:
    """Seconds per iteration and phase (``PHASES``) of ``campaign`` from its JobStore documents; each job
    took the time since the previous job of its run completed."""
    rows: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    jobs: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(PHASES, 0))
    previous: dict[str, datetime] = {}
    iteration = -1
    for doc in campaign_jobs(docs, campaign):
        done = datetime.fromisoformat(doc["completed_at"])
        root = doc["hosts"][-1]
        seconds = (done - previous[root]).total_seconds() if root in previous else 0.0
        previous[root] = done
        _, it = _campaign_of(doc.get("output"))
        iteration = it if it is not None else iteration
        phase = ROLE_PHASE.get((doc.get("metadata") or {}).get("almat_role"), "bookkeeping")
        rows[iteration][phase] += seconds
        jobs[iteration][phase] += 1
    table = {it: {**rows[it], "total": sum(rows[it].values()), "jobs": jobs[it]} for it in sorted(rows)}
    totals = {p: sum(r[p] for r in table.values()) for p in (*PHASES, "total")}
    return {"campaign": campaign, "iterations": table, "totals": totals}


def format_table(result: dict[str, Any]) -> str:
    """The phase table as markdown: one row per iteration (-1: the initial data) and the totals."""
    lines = ["| iteration | " + " | ".join(PHASES) + " | total (s) |", "|---:|" + "---:|" * (len(PHASES) + 1)]
    for it, row in result["iterations"].items():
        name = "initial" if int(it) < 0 else str(it)
        lines.append(f"| {name} | " + " | ".join(f"{row[p]:.1f}" for p in (*PHASES, "total")) + " |")
    totals = result["totals"]
    lines.append("| **all** | " + " | ".join(f"**{totals[p]:.1f}**" for p in (*PHASES, "total")) + " |")
    return "\n".join(lines)


def read_store(campaign: str, db_path: Path | None = None) -> dict[str, Any]:
    """The phase table of ``campaign`` in almat's store (``db_path``: an embedded store folder instead)."""
    from almat.settings import AlmatSettings, get_settings
    from almat.stores import CampaignDB, build_job_store

    settings = AlmatSettings(db_path=db_path) if db_path else get_settings()
    store = build_job_store(settings)
    store.connect()
    try:
        docs = list(store.docs_store.query({}, properties=["uuid", "index", "name", "completed_at", "hosts",
                                                           "metadata", "output"]))
    finally:
        store.close()
    result = phase_table(docs, campaign)
    with CampaignDB.from_settings(settings) as db:
        doc = db.campaigns.query_one({"name": campaign}) or {}
        result.update(status=doc.get("status"), n_iterations=doc.get("n_iterations"), n_labels=doc.get("n_labels"))
    return result


def run_demo(file: Path, db_path: Path, quick: bool) -> float:
    """``almat run`` of ``file`` (with ``QUICK``'s changes) into ``db_path``; its wall time (s)."""
    if quick:
        import yaml

        data = yaml.safe_load(file.read_text())
        for section, values in QUICK.items():
            for key, value in values.items():
                data.setdefault(section, {})
                data[section][key] = {**data[section].get(key, {}), **value} if isinstance(value, dict) else value
        file = db_path.parent / "quick.yaml"
        file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "ALMAT_DB_PATH": str(db_path), "ALMAT_RUN_DIR": str(db_path.parent / "runs")}
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("almat")), "run", str(file)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign", nargs="?", default=None, help="a finished campaign (default with --run: the demo's)")
    parser.add_argument("--run", action="store_true", help="run the demo first, into a temporary store")
    parser.add_argument("--file", type=Path, default=DEMO, help="the campaign file --run runs (default: the demo)")
    parser.add_argument("--quick", action="store_true", help="with --run: " + json.dumps(QUICK))
    parser.add_argument("--db", type=Path, default=None, help="an embedded store folder (default: almat's settings)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmark_results/demo_speed/)")
    args = parser.parse_args(argv)
    wall = None
    if args.run:
        import yaml

        args.campaign = args.campaign or yaml.safe_load(args.file.read_text())["name"]
        args.db = Path(tempfile.mkdtemp(prefix="almat-demo-speed-")) / "db"
        wall = run_demo(args.file, args.db, args.quick)
    if not args.campaign:
        parser.error("name a campaign, or --run")
    result = read_store(args.campaign, args.db)
    result.update(wall_time=wall, quick=args.quick, load_average=os.getloadavg(), cpus=os.cpu_count(),
                  store=str(args.db) if args.db else None)
    print(format_table(result))
    print(f"{result['campaign']}: {result['status']}, {result['n_iterations']} iterations, {result['n_labels']} labels"
          + (f"; almat run took {wall:.0f} s ({wall - result['totals']['total']:.0f} s before the first job "
             "and after the last)" if wall is not None else "")
          + f"; load average {result['load_average'][0]:.2f}")
    out = args.out or OUT / f"{args.campaign}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
