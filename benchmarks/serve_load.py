"""Page-load times of ``almat serve`` for one campaign of ``--iterations`` iterations and ``--labels`` labels.

Fills a fresh embedded store in a temp folder with synthetic but schema-valid documents (a
``CampaignDoc``, ``IterationDoc``s with deviation histograms and calibrations, ``ModelDoc``s and
``LabelDoc``s of rattled Cu8 cells, 2 % of them failed with a reason, all written through
``CampaignDB.upsert``), serves it with uvicorn on a free port and times each page and JSON
endpoint over ``--repeat`` requests (the first request, cold, is reported on its own).

    python benchmarks/serve_load.py                       # 20 iterations, 2,000 labels
    python benchmarks/serve_load.py --iterations 50 --labels 10000 --repeat 3
    python benchmarks/serve_load.py --quick               # 5 iterations, 300 labels, 2 warm requests

Writes ``benchmark_results/serve_load/results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "benchmark_results" / "serve_load"


def fill_store(db, name: str = "bench", n_iterations: int = 20, n_labels: int = 2000, n_models: int = 4,
               seed: int = 0, failed_fraction: float = 0.02) -> dict:
    """Write one md campaign's documents; returns what was written (counts and the iteration docs)."""
    from ase.build import bulk

    from almat.schemas import (CalibrationDoc, CampaignDoc, DeviationHistogram, IterationDoc, LabelDoc, ModelDoc,
                               TestErrors, to_structure)

    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    per_it = n_labels // (n_iterations + 1)
    labels = []
    for i in range(n_labels):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        iteration = min(i // per_it, n_iterations) - 1  # -1: initial data
        common = dict(structure=to_structure(atoms), campaign=name, iteration=iteration,
                      source="init" if iteration < 0 else "md", oracle="ase:ase.calculators.emt.EMT",
                      oracle_fingerprint="emt-bench")
        if rng.random() < failed_fraction:
            labels.append(LabelDoc(**common, status="failed", reason="SCF did not converge in 100 steps"))
        else:
            labels.append(LabelDoc(**common, energy=float(rng.normal(-3.0, 0.1)),
                                   forces=rng.normal(0, 0.3, (len(atoms), 3)).tolist(), wall_time=0.01))
    its, models = [], []
    edges = [0.0] + list(np.geomspace(0.005, 2.0, 24)) + [1e6]
    for it in range(n_iterations):
        ids = [f"{name}-m{it}-{k}" for k in range(n_models)]
        models += [ModelDoc(model_id=m, campaign=name, iteration=it, committee_index=k, seed=k,
                            weights_blob_id=f"blob-{m}", epochs_trained=40, n_parameters=12345,
                            validation_metrics={"rmse_f": float(0.3 / (it + 1)), "rmse_e_per_atom": 0.01},
                            wall_time=30.0) for k, m in enumerate(ids)]
        dev = rng.lognormal(np.log(0.3 / (it + 1)), 0.6, 300)
        counts = np.histogram(dev, bins=edges)[0].tolist()
        pred = rng.lognormal(np.log(0.2 / (it + 1)), 0.4, 40)
        obs = pred * rng.lognormal(np.log(2.0), 0.3, 40)
        cal = CalibrationDoc(campaign=name, iteration=it, factor=2.0, quantile=1.4, coverage=0.9,
                             empirical_coverage=0.9, spearman=0.7, n_samples=40, predicted=pred.tolist(),
                             observed=obs.tolist())
        its.append(IterationDoc(campaign=name, iteration=it, n_frames_explored=300, trust_lo=0.05, trust_hi=0.5,
                                accurate_ratio=float(np.mean(dev < 0.05)), candidate_ratio=float(
                                    np.mean((dev >= 0.05) & (dev < 0.5))), failed_ratio=float(np.mean(dev >= 0.5)),
                                n_selected=per_it, n_labelled=per_it, n_train_labels=per_it * (it + 1),
                                test_errors=TestErrors(n_structures=per_it, force_rmse=float(0.3 / (it + 1)),
                                                       energy_rmse_per_atom=0.01),
                                deviation_histogram=DeviationHistogram(bin_edges=edges, counts=counts),
                                model_ids=ids, calibration=cal, calibrated_fraction=float(np.mean(2 * dev < 0.1))))
    campaign = CampaignDoc(name=name, config={"kind": "md", "convergence": {"force_tolerance": 0.1}},
                           config_fingerprint="bench", status="running", elements=["Cu"], chemsys="Cu",
                           oracle="ase:ase.calculators.emt.EMT", oracle_fingerprint="emt-bench",
                           n_iterations=n_iterations, n_labels=sum(lab.ok for lab in labels))
    for start in range(0, len(labels), 500):
        db.upsert("labels", labels[start:start + 500])
    db.upsert("models", models)
    db.upsert("iterations", its)
    db.upsert("campaigns", [campaign])
    return {"campaign": campaign, "iterations": its, "labels": labels, "models": models}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings, launchpad=None, refresh_s: float = 2.0):
    """uvicorn on a free localhost port in a daemon thread; returns (base_url, server)."""
    import uvicorn

    from almat.serve import bind, create_app

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, launchpad=launchpad, refresh_s=refresh_s),
                                           log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def _get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="5 iterations, 300 labels, 2 warm requests")
    ap.add_argument("--out", type=Path, default=OUT / "results.json", help="the figures as JSON")
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.labels, args.repeat = 5, 300, 2

    from almat.settings import AlmatSettings
    from almat.stores import CampaignDB

    tmp = Path(tempfile.mkdtemp(prefix="almat-serve-bench-"))
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    t = time.perf_counter()
    with CampaignDB.from_settings(settings).connect(indexes=True) as db:  # as almat run makes them
        fill_store(db, n_iterations=args.iterations, n_labels=args.labels)
    fill_s = time.perf_counter() - t
    base, server = start_server(settings)
    endpoints = {"campaign list (/)": "/", "campaign page": "/campaigns/bench",
                 "campaign live part (?partial=1)": "/campaigns/bench?partial=1",
                 "campaign JSON (/api/campaigns/bench)": "/api/campaigns/bench",
                 "stamp (/api/stamp?campaign=bench)": "/api/stamp?campaign=bench",
                 "labels download (extxyz)": "/campaigns/bench/labels.extxyz"}
    results = {}
    for title, path in endpoints.items():
        cold, size = _get(base + path)
        warm = [_get(base + path)[0] for _ in range(args.repeat)]
        results[title] = {"cold_s": cold, "median_s": statistics.median(warm), "min_s": min(warm), "bytes": size}
    server.should_exit = True
    print(f"store: embedded ({settings.describe()}); {args.iterations} iterations, {args.labels} labels "
          f"(filled in {fill_s:.1f} s); {args.repeat} warm requests each")
    print(f"{'endpoint':40s} {'cold (s)':>9s} {'median (s)':>11s} {'min (s)':>8s} {'KiB':>7s}")
    for title, r in results.items():
        print(f"{title:40s} {r['cold_s']:9.3f} {r['median_s']:11.3f} {r['min_s']:8.3f} {r['bytes'] / 1024:7.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"iterations": args.iterations, "labels": args.labels, "results": results},
                                       indent=2))


if __name__ == "__main__":
    main()
