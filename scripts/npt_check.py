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
    python scripts/npt_check.py li6ps5cl-npt --ps 5 --oracle-ps 1 --config workflows/li6ps5cl_npt.yaml

Reads the store of almat's settings (``ALMAT_DB_PATH`` / ``ALMAT_MONGO_URI``). Exits 1 if a run exploded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign")
    parser.add_argument("--temperature", type=float, default=900.0, help="K")
    parser.add_argument("--pressure", type=float, default=1.0, help="bar")
    parser.add_argument("--ps", type=float, default=5.0, help="picoseconds of NPT")
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this file too")
    parser.add_argument("--oracle-ps", type=float, default=0.0,
                        help="picoseconds of NPT with the oracle too (needs --config; GFN1-xTB: ~0.4 s a step)")
    parser.add_argument("--config", help="the campaign file, whose oracle --oracle-ps runs")
    args = parser.parse_args(argv)
    oracle = None
    if args.oracle_ps > 0:
        if not args.config:
            print("error: --oracle-ps needs --config (the campaign file, for its oracle)", file=sys.stderr)
            return 2
        from almat.campaign.config import load_config

        oracle = load_config(args.config).oracle.calculator.spec()

    with CampaignDB.from_settings(AlmatSettings()) as db:
        records = sorted(db.iterations.query({"campaign": args.campaign}), key=lambda d: d["iteration"])
        if not records:
            print(f"error: campaign {args.campaign!r} has no iteration", file=sys.stderr)
            return 2
        last = records[-1]
        committee = Committee.from_store(db, last["model_ids"])
        starts = relaxed_starts(db, args.campaign)
    if not starts:
        print(f"error: campaign {args.campaign!r} has no pre-relaxed start structures", file=sys.stderr)
        return 2
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    print(f"campaign {args.campaign}: committee of iteration {last['iteration']} ({len(last['model_ids'])} "
          f"members); NPT {args.temperature:.0f} K, {args.pressure:g} bar, {args.ps:g} ps ({steps} steps)")
    rows, exploded = [], False
    for index, structure in enumerate(starts):
        oracle_relaxed = to_atoms(structure)
        committee_relaxed = relax_with(oracle_relaxed, committee.calculator(stress=True))
        settings = ExplorationSettings(temperature=args.temperature, steps=steps, timestep_fs=args.timestep_fs,
                                       sample_every=50, ensemble="npt", pressure_bar=args.pressure,
                                       seed=args.seed + index)
        t0 = time.perf_counter()
        traj = run_exploration(oracle_relaxed, committee.calculator(stress=True), TrustLevels(lo=1e-6, hi=1e9),
                               settings)
        wall = time.perf_counter() - t0
        md_density = second_half_densities(oracle_relaxed, traj)
        row = {
            "start": index, "formula": oracle_relaxed.get_chemical_formula(), "atoms": len(oracle_relaxed),
            "oracle_relaxed_density": density(oracle_relaxed),
            "committee_relaxed_density": density(committee_relaxed),
            "md_density_mean": float(np.mean(md_density)), "md_density_std": float(np.std(md_density)),
            "md_steps_done": int(traj.frames[-1].step) if traj.frames else 0,
            "exploded": bool(traj.exploded), "stop_reason": traj.stop_reason,
            "max_model_deviation": float(max(f.model_deviation for f in traj.frames)),
            "mean_temperature": float(np.mean([f.temperature for f in traj.frames[len(traj.frames) // 2:]])),
            "wall_s": wall,
        }
        if oracle is not None:
            oracle_steps = int(round(args.oracle_ps * 1000 / args.timestep_fs))
            t0 = time.perf_counter()
            oracle_traj = run_exploration(oracle_relaxed, SingleCalculatorCommittee(oracle.load()),
                                          TrustLevels(lo=1e-6, hi=1e9),
                                          dataclasses.replace(settings, steps=oracle_steps, sample_every=10))
            oracle_density = second_half_densities(oracle_relaxed, oracle_traj)
            row.update({"oracle_md_ps": args.oracle_ps, "oracle_md_density_mean": float(np.mean(oracle_density)),
                        "oracle_md_density_std": float(np.std(oracle_density)),
                        "oracle_md_exploded": bool(oracle_traj.exploded),
                        "oracle_md_wall_s": time.perf_counter() - t0})
        exploded |= row["exploded"]
        rows.append(row)
        print(f"start {index} ({row['formula']}, {row['atoms']} atoms): "
              f"oracle relaxed {row['oracle_relaxed_density']:.3f} g/cm³, committee relaxed "
              f"{row['committee_relaxed_density']:.3f} g/cm³ "
              f"({100 * (row['committee_relaxed_density'] / row['oracle_relaxed_density'] - 1):+.1f} %); "
              f"NPT {row['md_steps_done']}/{steps} steps in {wall:.0f} s, <T> {row['mean_temperature']:.0f} K, "
              f"density {row['md_density_mean']:.3f} ± {row['md_density_std']:.3f} g/cm³ "
              f"({100 * (row['md_density_mean'] / row['oracle_relaxed_density'] - 1):+.1f} % against the oracle's "
              f"0 K), max model deviation {row['max_model_deviation']:.3f} eV/Å"
              + (f"; EXPLODED: {row['stop_reason']}" if row["exploded"] else ""))
        if oracle is not None:
            print(f"  oracle NPT {args.oracle_ps:g} ps in {row['oracle_md_wall_s']:.0f} s: density "
                  f"{row['oracle_md_density_mean']:.3f} ± {row['oracle_md_density_std']:.3f} g/cm³; the committee's "
                  f"is {100 * (row['md_density_mean'] / row['oracle_md_density_mean'] - 1):+.1f} % off"
                  + (" (the oracle run exploded)" if row["oracle_md_exploded"] else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"campaign": args.campaign, "iteration": last["iteration"], "temperature": args.temperature,
                       "pressure_bar": args.pressure, "ps": args.ps, "runs": rows}, fh, indent=1)
    return 1 if exploded else 0


if __name__ == "__main__":
    sys.exit(main())
