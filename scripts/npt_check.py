"""Run NPT MD with a campaign's final committee and compare its density with the oracle's relaxed density.

For each pre-relaxed start structure of the campaign (the oracle's relaxation, 0 K), the script:
- relaxes the same start, cell included, with the committee (0 K density: a like-for-like comparison);
- runs ``--ps`` picoseconds of NPT (ASE's isotropic MTK barostat) at ``--temperature`` and ``--pressure``
  bar with the committee, with the sampler's explosion checks;
- prints the densities, the mean density over the second half of the MD, and the largest model deviation;
- with ``--oracle-ps`` and the campaign file (``--config``), also runs that much NPT with the oracle itself
  from the same start and seed: the oracle's density at that temperature, like for like with the committee's.

    python scripts/npt_check.py li6ps5cl-npt --temperature 900 --ps 5
    python scripts/npt_check.py li6ps5cl-npt --json npt_check.json
    python scripts/npt_check.py li6ps5cl-npt --ps 5 --oracle-ps 2 --config workflows/li6ps5cl_npt.yaml \
        --oracle-cache benchmark_results/npt_oracle

The oracle's NPT is the expensive part (GFN1-xTB, 13 atoms: about 0.6 s a step, so 20 min a start for 2 ps),
and it does not depend on the committee: ``--oracle-cache DIR`` keeps each start's oracle run there (a JSON
file named by a hash of the structure, temperature, pressure, steps, timestep and seed) and reuses it.
``--oracle-only`` runs just that part (e.g. while the campaign still runs; its starts are relaxed first), and
``--starts 0`` picks start structures, so that two processes can each take one.

Reads the store of almat's settings (``ALMAT_DB_PATH`` / ``ALMAT_MONGO_URI``). Exits 1 if a run exploded.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import _amu

from almat.campaign.md import relaxed_starts
from almat.learner.committee import Committee
from almat.sampler.md import ExplorationSettings, run_exploration
from almat.schemas import to_atoms
from almat.settings import AlmatSettings
from almat.stores import CampaignDB
from almat.uncertainty.deviation import TrustLevels


def density(atoms: Atoms, volume: float | None = None) -> float:
    """g/cm³."""
    return float(atoms.get_masses().sum() * _amu * 1e3 / ((volume or atoms.get_volume()) * 1e-24))


def second_half_densities(atoms: Atoms, traj) -> list[float]:
    """g/cm³ of the second half of a trajectory's recorded frames (the first half is equilibration)."""
    volumes = np.array([abs(np.linalg.det(f.cell)) for f in traj.frames])
    return [density(atoms, v) for v in volumes[len(volumes) // 2:]]


class SingleCalculatorCommittee(Calculator):
    """An ASE calculator (the oracle) in the place of a committee calculator: its results, zero deviation."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, calculator):
        super().__init__()
        self.inner = calculator

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.inner
        forces = work.get_forces()
        self.results = {"energy": work.get_potential_energy(), "free_energy": work.get_potential_energy(),
                        "forces": forces, "stress": work.get_stress(), "model_deviation": 0.0,
                        "atomic_deviation": np.zeros(len(work)), "energy_deviation": 0.0}


def relax_with(atoms: Atoms, calculator, fmax: float = 0.02, steps: int = 400) -> Atoms:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = calculator
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=fmax, steps=steps)
    return atoms


def oracle_reference(oracle, start: Atoms, settings: ExplorationSettings, steps: int,
                     cache: Path | None = None) -> dict:
    """NPT with the oracle itself from ``start`` (``settings`` with ``steps``): its mean density over the second
    half, read from / written to ``cache`` (one JSON per structure and MD settings) when given."""
    key = hashlib.sha1(json.dumps({
        "numbers": start.numbers.tolist(), "positions": np.round(start.positions, 6).tolist(),
        "cell": np.round(start.cell[:], 6).tolist(), "temperature": settings.temperature,
        "pressure_bar": settings.pressure_bar, "steps": steps, "timestep_fs": settings.timestep_fs,
        "seed": settings.seed}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{start.get_chemical_formula()}_{key}.json" if cache is not None else None
    if path is not None and path.exists():
        return {**json.loads(path.read_text()), "oracle_md_cached": str(path)}
    t0 = time.perf_counter()
    traj = run_exploration(start, SingleCalculatorCommittee(oracle.load()), TrustLevels(lo=1e-6, hi=1e9),
                           dataclasses.replace(settings, steps=steps, sample_every=10))
    densities = second_half_densities(start, traj)
    row = {"oracle_md_ps": steps * settings.timestep_fs / 1000, "oracle_md_density_mean": float(np.mean(densities)),
           "oracle_md_density_std": float(np.std(densities)), "oracle_md_exploded": bool(traj.exploded),
           "oracle_md_steps_done": int(traj.frames[-1].step) if traj.frames else 0,
           "oracle_md_wall_s": time.perf_counter() - t0}
    if path is not None and not traj.exploded:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(row, indent=1))
        path.with_suffix(".tmp").replace(path)
    return row


def committee_run(committee, start: Atoms, settings: ExplorationSettings, index: int) -> dict:
    """The committee's 0 K density (its own relaxation of the oracle's start) and its NPT run."""
    committee_relaxed = relax_with(start, committee.calculator(stress=True))
    t0 = time.perf_counter()
    traj = run_exploration(start, committee.calculator(stress=True), TrustLevels(lo=1e-6, hi=1e9), settings)
    wall = time.perf_counter() - t0
    md_density = second_half_densities(start, traj)
    return {
        "start": index, "formula": start.get_chemical_formula(), "atoms": len(start),
        "oracle_relaxed_density": density(start), "committee_relaxed_density": density(committee_relaxed),
        "md_density_mean": float(np.mean(md_density)), "md_density_std": float(np.std(md_density)),
        "md_steps_done": int(traj.frames[-1].step) if traj.frames else 0,
        "exploded": bool(traj.exploded), "stop_reason": traj.stop_reason,
        "max_model_deviation": float(max(f.model_deviation for f in traj.frames)),
        "mean_temperature": float(np.mean([f.temperature for f in traj.frames[len(traj.frames) // 2:]])),
        "wall_s": wall,
    }


def report(row: dict, steps: int) -> None:
    if "md_density_mean" in row:
        print(f"start {row['start']} ({row['formula']}, {row['atoms']} atoms): "
              f"oracle relaxed {row['oracle_relaxed_density']:.3f} g/cm³, committee relaxed "
              f"{row['committee_relaxed_density']:.3f} g/cm³ "
              f"({100 * (row['committee_relaxed_density'] / row['oracle_relaxed_density'] - 1):+.1f} %); "
              f"NPT {row['md_steps_done']}/{steps} steps in {row['wall_s']:.0f} s, "
              f"<T> {row['mean_temperature']:.0f} K, "
              f"density {row['md_density_mean']:.3f} ± {row['md_density_std']:.3f} g/cm³ "
              f"({100 * (row['md_density_mean'] / row['oracle_relaxed_density'] - 1):+.1f} % against the oracle's "
              f"0 K), max model deviation {row['max_model_deviation']:.3f} eV/Å"
              + (f"; EXPLODED: {row['stop_reason']}" if row["exploded"] else ""))
    if "oracle_md_density_mean" in row:
        off = (f"; the committee's is {100 * (row['md_density_mean'] / row['oracle_md_density_mean'] - 1):+.1f} % off"
               if "md_density_mean" in row else "")
        print(f"  start {row['start']}: oracle NPT {row['oracle_md_ps']:g} ps in {row['oracle_md_wall_s']:.0f} s"
              f"{' (cached)' if row.get('oracle_md_cached') else ''}: density {row['oracle_md_density_mean']:.3f} ± "
              f"{row['oracle_md_density_std']:.3f} g/cm³{off}"
              + (" (the oracle run exploded)" if row["oracle_md_exploded"] else ""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign")
    parser.add_argument("--temperature", type=float, default=900.0, help="K")
    parser.add_argument("--pressure", type=float, default=1.0, help="bar")
    parser.add_argument("--ps", type=float, default=5.0, help="picoseconds of NPT")
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this file too")
    parser.add_argument("--oracle-ps", type=float, default=0.0,
                        help="picoseconds of NPT with the oracle too (needs --config; GFN1-xTB: ~0.6 s a step)")
    parser.add_argument("--config", help="the campaign file, whose oracle --oracle-ps runs")
    parser.add_argument("--oracle-cache", type=Path, help="folder that keeps (and gives back) the oracle's NPT runs")
    parser.add_argument("--oracle-only", action="store_true", help="run only the oracle's NPT (needs --oracle-ps)")
    parser.add_argument("--starts", help="comma-separated start indices (default: every start)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    oracle = None
    if args.oracle_ps > 0:
        if not args.config:
            print("error: --oracle-ps needs --config (the campaign file, for its oracle)", file=sys.stderr)
            return 2
        from almat.campaign.config import load_config

        oracle = load_config(args.config).oracle.calculator.spec()
    elif args.oracle_only:
        print("error: --oracle-only needs --oracle-ps and --config", file=sys.stderr)
        return 2
    with CampaignDB.from_settings(AlmatSettings()) as db:
        records = sorted(db.iterations.query({"campaign": args.campaign}), key=lambda d: d["iteration"])
        if not records and not args.oracle_only:
            print(f"error: campaign {args.campaign!r} has no iteration", file=sys.stderr)
            return 2
        committee = None if args.oracle_only else Committee.from_store(db, records[-1]["model_ids"])
        starts = relaxed_starts(db, args.campaign)
    if not starts:
        print(f"error: campaign {args.campaign!r} has no pre-relaxed start structures", file=sys.stderr)
        return 2
    try:
        picked = range(len(starts)) if not args.starts else [int(i) for i in args.starts.split(",")]
    except ValueError:
        picked = None
    if picked is None or any(not 0 <= i < len(starts) for i in picked):
        print(f"error: --starts {args.starts!r}: give indices between 0 and {len(starts) - 1}, comma-separated",
              file=sys.stderr)
        return 2
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    if committee is not None:
        print(f"campaign {args.campaign}: committee of iteration {records[-1]['iteration']} "
              f"({len(records[-1]['model_ids'])} members); NPT {args.temperature:.0f} K, {args.pressure:g} bar, "
              f"{args.ps:g} ps ({steps} steps)")
    rows = []
    for index in picked:
        start = to_atoms(starts[index])
        settings = ExplorationSettings(temperature=args.temperature, steps=steps, timestep_fs=args.timestep_fs,
                                       sample_every=50, ensemble="npt", pressure_bar=args.pressure,
                                       seed=args.seed + index)
        row = {"start": index} if committee is None else committee_run(committee, start, settings, index)
        if oracle is not None:
            row.update(oracle_reference(oracle, start, settings, int(round(args.oracle_ps * 1000 / args.timestep_fs)),
                                        args.oracle_cache))
        rows.append(row)
        report(row, steps)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"campaign": args.campaign, "iteration": records[-1]["iteration"] if records else None,
                       "temperature": args.temperature, "pressure_bar": args.pressure, "ps": args.ps,
                       "runs": rows}, fh, indent=1)
    return 1 if any(r.get("exploded") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
