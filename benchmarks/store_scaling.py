"""How the stores scale with the number of labels: writes, key look-ups, query filters, imports.

For each size (1k, 10k, 100k labels; ``--quick``: 1k, 5k) a fresh store is filled with realistic
label documents (32-atom cells with forces and stress, several chemical systems, campaigns and
oracles; see ``query_benchmark.py``) through ``CampaignDB.upsert`` in batches of 1,000, as
``almat import`` writes them, then timed:

- upsert: one new label per ``db.upsert("labels", [label])`` call (median of 100);
- find_one by key: ``db.labels.query_one({"label_id": ...})`` (median of 200);
- query filters: the slowest of the typical ``query_labels`` filters, ``ids()`` and ``count()``.

The embedded SQLite store always; a MongoDB server too when ``ALMAT_TEST_MONGO_URI`` is set.
Targets at 100k labels: upsert <= 5 ms, find_one <= 5 ms, filters <= 1 s, importing 100,000
labels <= 2 min.

    python benchmarks/store_scaling.py            # 1k, 10k, 100k (about 10 min on 2 cores)
    python benchmarks/store_scaling.py --quick    # 1k, 5k

Writes ``benchmark_results/store_scaling/results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from query_benchmark import _campaigns, _make_docs, _templates, fill, typical_queries  # noqa: E402

NATOMS = 32
OUT = Path(__file__).resolve().parents[1] / "benchmark_results" / "store_scaling"
TARGETS = {"import": 120.0, "upsert": 5.0, "find_one": 5.0, "filter": 1.0}


def _median_ms(fn, args) -> float:
    times = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(settings, n: int) -> dict[str, float]:
    from almat.query import query_labels
    from almat.stores import CampaignDB

    db = CampaignDB.from_settings(settings).connect(indexes=True)  # as almat run makes them
    campaigns = _campaigns(16)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    _, t_import = fill(db, n, NATOMS, campaigns, t0)
    ids = [d["label_id"] for d in db.labels.query({"iteration": 1}, properties=["label_id"], limit=200)]
    extra = _make_docs(n, n + 100, _templates(NATOMS, 0), campaigns, np.random.default_rng(1), t0)
    row = {
        "import": t_import,
        "upsert": _median_ms(lambda doc: db.upsert("labels", [doc]), extra),
        "find_one": _median_ms(lambda i: db.labels.query_one({"label_id": i}), ids),
        "filter": 0.0,
    }
    for kw in typical_queries(campaigns, t0, n).values():
        q = query_labels(db, **kw)
        for fn in (q.ids, q.count):
            t = time.perf_counter()
            fn()
            row["filter"] = max(row["filter"], time.perf_counter() - t)
    db.close()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 5k labels only")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="label counts (default 1000 10000 100000)")
    parser.add_argument("--out", type=Path, default=OUT / "results.json", help="results JSON")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1000, 5000] if args.quick else [1000, 10_000, 100_000])

    from almat.settings import AlmatSettings

    backends = [("embedded SQLite", None)]
    if os.environ.get("ALMAT_TEST_MONGO_URI"):
        backends.append(("MongoDB", os.environ["ALMAT_TEST_MONGO_URI"]))
    print(f"# store scaling: labels of {NATOMS} atoms (python {sys.version.split()[0]}, {os.cpu_count()} cpu)")
    print("| store | labels | import all (s) | upsert (ms) | find_one by key (ms) | slowest query filter (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    missed, rows = [], []
    for name, uri in backends:
        for n in sizes:
            root = Path(tempfile.mkdtemp(prefix="almat-scaling-"))
            if uri is None:
                settings = AlmatSettings(db_path=root / "db", run_dir=root / "runs")
            else:
                settings = AlmatSettings(mongo_uri=uri, database=f"almat_scaling_{uuid.uuid4().hex[:8]}")
            try:
                row = measure(settings, n)
            finally:
                shutil.rmtree(root, ignore_errors=True)
                if uri is not None:
                    from pymongo import MongoClient

                    MongoClient(uri).drop_database(settings.database)
            print(f"| {name} | {n} | {row['import']:.1f} | {row['upsert']:.2f} | {row['find_one']:.2f} | "
                  f"{row['filter']:.3f} |", flush=True)
            rows.append({"store": name, "labels": n, **row})
            if n >= 100_000:
                scale = {"import": n / 100_000, "upsert": 1, "find_one": 1, "filter": 1}
                missed += [f"{name} {k}" for k, v in TARGETS.items() if row[k] > v * scale[k]]
    if sizes[-1] >= 100_000:
        print(f"\ntargets at 100k labels: {'all met' if not missed else 'NOT met: ' + ', '.join(missed)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"natoms": NATOMS, "rows": rows, "missed": missed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
