"""Benchmark the label query API on the embedded SQLite store.

Fills a fresh embedded store in a temp folder with ``--n`` synthetic but valid label documents
(30-atom cells over several chemical systems, campaigns, iterations, sources and two oracle
settings; every document validates as a ``LabelDoc``), then times the typical queries:

- a Python scan (``use_index=False``: every label decoded and filtered with mongomock's matcher);
- the query API, whose filters run as SQL on the store's own indexes: each query's ``ids()`` and
  ``count()``, reading the first 1,000 documents, and a count after 1,000 new labels arrive.

Target: each typical query returns its ids in <= 1 s on the embedded store. ``store_scaling.py``
times writes and key look-ups at several sizes, on the embedded store and on MongoDB.

    python benchmarks/query_benchmark.py            # 100,000 labels (a few minutes on 2 cores)
    python benchmarks/query_benchmark.py --quick    # 5,000 labels

Writes ``benchmark_results/query_benchmark/results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "benchmark_results" / "query_benchmark"

CHEMSYS = ["Cu", "Cu-Zr", "Al-Cu", "Al-Cu-Zr", "Li-P-S", "Cl-Li-P-S", "Ni-Ti", "Fe-Ni-Cr"]
ORACLES = [("ase:ase.calculators.emt.EMT", "emt-fp-0000001"), ("vasp:PBE", "pbe-fp-0000002")]
SOURCES = ["init", "perturbed", "md", "md", "md", "relaxed"]


def _campaigns(n_campaigns: int) -> list[tuple[str, str, tuple[str, str]]]:
    """(name, chemsys, oracle) per campaign; chemsys and oracles cycle."""
    return [(f"camp{i:02d}", CHEMSYS[i % len(CHEMSYS)], ORACLES[(i // len(CHEMSYS)) % len(ORACLES)])
            for i in range(n_campaigns)]


def _templates(natoms: int, seed: int):
    """One template label per chemical system: a LabelDoc's stored dict and its grid positions."""
    from pymatgen.core import Lattice, Structure

    from almat.schemas import LabelDoc

    rng = np.random.default_rng(seed)
    nx, ny, nz = 2, 3, int(np.ceil(natoms / 6))
    grid = np.array([(i, j, k) for i in range(nx) for j in range(ny) for k in range(nz)], float)[:natoms]
    spacing = 2.6
    lattice = np.diag([nx * spacing, ny * spacing, nz * spacing])
    out = {}
    for chemsys in CHEMSYS:
        elements = chemsys.split("-")
        species = [elements[i % len(elements)] for i in range(natoms)]
        rng.shuffle(species)
        cart = grid * spacing
        s = Structure(Lattice(lattice), species, cart, coords_are_cartesian=True)
        doc = LabelDoc(structure=s, oracle="x", oracle_fingerprint="x", energy=0.0,
                       forces=np.zeros((natoms, 3)).tolist(), stress=np.zeros((3, 3)).tolist()).to_store()
        out[chemsys] = (doc, cart, species, lattice)
    return out


_CELL_STRINGS: dict[bytes, bytes] = {}


def _fast_structure_hash(lattice: np.ndarray, species: list[str], pos: np.ndarray) -> str:
    """``almat.schemas.structure.structure_hash`` for a fixed cell, without rebuilding Atoms and
    without numpy's slow array2string on every call (the benchmark checks it equals the real one)."""
    from almat.schemas.structure import FRAC_DECIMALS, LATTICE_DECIMALS

    key = lattice.tobytes()
    if key not in _CELL_STRINGS:
        cell = np.round(lattice, LATTICE_DECIMALS) + 0.0
        _CELL_STRINGS[key] = np.array2string(cell.ravel(), precision=LATTICE_DECIMALS, separator=",").encode()
    frac = np.linalg.solve(lattice.T, pos.T).T % 1.0 % 1.0
    frac = np.round(frac, FRAC_DECIMALS) % 1.0
    frac = np.round(frac, FRAC_DECIMALS) + 0.0
    h = hashlib.sha256(_CELL_STRINGS[key])
    for symbol, (a, b, c) in sorted(zip(species, map(tuple, frac.tolist()))):
        h.update(f"{symbol}:{a:.{FRAC_DECIMALS}f},{b:.{FRAC_DECIMALS}f},{c:.{FRAC_DECIMALS}f};".encode())
    return h.hexdigest()[:24]


def _make_docs(start: int, stop: int, templates, campaigns, rng, t0: datetime, check: int = 0):
    """Documents ``start..stop``: the template of the campaign's chemsys with jittered positions.

    The first ``check`` documents are validated as ``LabelDoc`` (including their structure hash).
    """
    from almat.schemas import LabelDoc, structure_hash

    docs = []
    for i in range(start, stop):
        name, chemsys, (oracle, fp) = campaigns[i % len(campaigns)]
        tdoc, cart, species, lattice = templates[chemsys]
        pos = cart + rng.normal(0.0, 0.08, cart.shape)
        frac = pos @ np.linalg.inv(lattice)
        shash = _fast_structure_hash(lattice, species, pos)
        sites = [{"species": [{"element": el, "occu": 1}], "abc": f.tolist(), "properties": {}, "label": el,
                  "xyz": p.tolist()} for el, f, p in zip(species, frac, pos)]
        doc = dict(tdoc)
        doc["structure"] = {**tdoc["structure"], "sites": sites}
        iteration = (i // len(campaigns)) % 10
        doc.update(
            structure_hash=shash,
            campaign=name,
            iteration=iteration,
            source=SOURCES[i % len(SOURCES)],
            oracle=oracle,
            oracle_fingerprint=fp,
            energy=float(-3.5 * len(species) + rng.normal()),
            forces=rng.normal(0, 0.3, (len(species), 3)).tolist(),
            stress=(np.eye(3) * rng.normal(0, 0.01)).tolist(),
            wall_time=float(rng.uniform(10, 100)),
            job_uuid=f"job-{i}",
            run_dir=f"/runs/{name}/{i}",
            created_at=t0 + timedelta(seconds=i),
            label_id=hashlib.sha256(f"{name}|{shash}|{fp}".encode()).hexdigest()[:24],
        )
        if i - start < check:
            label = LabelDoc.from_store(doc)
            assert label.structure_hash == structure_hash(label.structure), "synthetic hash differs"
        docs.append(doc)
    return docs


def typical_queries(campaigns, t0: datetime, n: int) -> dict[str, dict]:
    """Name -> ``query_labels`` filters of the typical queries."""
    name0, chemsys0, (_, fp0) = campaigns[1]
    return {
        "by chemsys": dict(chemsys=chemsys0, allow_mixed_oracles=True),
        "by elements (contains)": dict(elements="Zr", allow_mixed_oracles=True),
        "by campaign": dict(campaign=name0),
        "oracle fingerprint + chemsys": dict(oracle_fingerprint=fp0, chemsys=chemsys0),
        "campaign + iteration + source": dict(campaign=name0, iteration=3, source="md"),
        "natoms range + date": dict(natoms=(20, 40), since=t0 + timedelta(seconds=n // 2), oracle_fingerprint=fp0),
    }


def fill(db, n: int, natoms: int, campaigns, t0: datetime, seed: int = 0, batch: int = 5000,
         start: int = 0) -> tuple[float, float]:
    """Generate and upsert ``n`` labels in batches; returns (generation, import) seconds."""
    rng = np.random.default_rng(seed + start)
    templates = _templates(natoms, seed)
    t_gen = t_ins = 0.0
    for lo in range(start, start + n, batch):
        t = time.perf_counter()
        # the first 20 documents of each batch are checked to be valid LabelDocs, hash included
        docs = _make_docs(lo, min(start + n, lo + batch), templates, campaigns, rng, t0, check=20)
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(0, len(docs), 1000):  # the batches `almat import` writes
            db.upsert("labels", docs[i:i + 1000])
        t_ins += time.perf_counter() - t
    return t_gen, t_ins


def _timed(fn, repeat: int = 3):
    """Best of ``repeat`` wall times (s) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of label documents (default 100000)")
    parser.add_argument("--natoms", type=int, default=30, help="atoms per structure (default 30)")
    parser.add_argument("--campaigns", type=int, default=16, help="number of campaigns (default 16)")
    parser.add_argument("--batch", type=int, default=5000, help="documents generated per batch")
    parser.add_argument("--dir", type=Path, default=None, help="store folder (default: a temp folder, removed)")
    parser.add_argument("--no-scan", action="store_true", help="skip timing the Python scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5,000 labels")
    parser.add_argument("--out", type=Path, default=OUT / "results.json", help="results JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 5000

    from almat.query import query_labels
    from almat.settings import AlmatSettings
    from almat.stores import CampaignDB

    root = args.dir or Path(tempfile.mkdtemp(prefix="almat-qbench-"))
    settings = AlmatSettings(db_path=root / "db", run_dir=root / "runs")
    db = CampaignDB.from_settings(settings).connect(indexes=True)  # as almat run makes them
    campaigns = _campaigns(args.campaigns)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

    print(f"# almat query benchmark: {args.n} labels of {args.natoms} atoms, {len(campaigns)} campaigns, "
          f"{len(CHEMSYS)} chemical systems, {len(ORACLES)} oracle settings")
    print(f"# store: {settings.describe()}  (python {sys.version.split()[0]}, {os.cpu_count()} cpu)")
    t_gen, t_ins = fill(db, args.n, args.natoms, campaigns, t0, args.seed, args.batch)
    size = Path(db.labels.database_path).stat().st_size / 2**20
    print(f"# generated in {t_gen:.1f} s, imported in {t_ins:.1f} s ({args.n / max(t_ins, 1e-9):.0f} labels/s); "
          f"store file {size:.0f} MiB")
    queries = typical_queries(campaigns, t0, args.n)

    rows = []
    if not args.no_scan:
        q = query_labels(db, use_index=False, **queries["by chemsys"])
        t, ids = _timed(q.ids, repeat=1)
        rows.append(("Python scan: by chemsys", "ids", len(ids), t, "none (use_index=False)"))

    for label, kw in queries.items():
        q = query_labels(db, **kw)
        t_ids, ids = _timed(q.ids)
        t_count, n = _timed(q.count)
        assert n == len(ids)
        plan = q.explain()
        rows.append((label, "ids", len(ids), t_ids, ", ".join(plan["indexed_fields"])))
        rows.append((label, "count", n, t_count, ""))
        t1000, got = _timed(lambda: sum(1 for _, _d in zip(range(1000), q.dicts())), repeat=1)
        rows.append((label, "first 1000 docs", got, t1000, "by primary key"))

    # the Python scan must agree with SQL on one query
    if not args.no_scan:
        assert sorted(query_labels(db, use_index=False, **queries["by chemsys"]).ids()) == \
            sorted(query_labels(db, **queries["by chemsys"]).ids())

    fill(db, 1000, args.natoms, campaigns, t0, args.seed, start=args.n)
    t, n_new = _timed(lambda: query_labels(db, **queries["by campaign"]).count())
    rows.append(("after +1000 labels: by campaign", "count", n_new, t, ""))

    print()
    print("| query | result | n | time (s) | fields run in SQL |")
    print("|---|---|---:|---:|---|")
    for label, what, n, t, idx in rows:
        print(f"| {label} | {what} | {n} | {t:.3f} | {idx} |")
    worst = max(t for label, what, n, t, idx in rows if what == "ids" and not label.startswith("Python"))
    print()
    print(f"worst typical ids() query: {worst:.3f} s -> target <= 1 s: {'met' if worst <= 1.0 else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "natoms": args.natoms, "worst_ids_s": worst, "rows": [
        {"query": label, "result": what, "n": n, "seconds": t, "sql_fields": idx} for label, what, n, t, idx in rows]},
        indent=1))
    db.close()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
