"""Li6PS5Cl argyrodite: from the disordered CIF to an active-learning campaign.

The steps:

1. read the CIF (F-43m, Li+ at 0.56 occupancy on 48h);
2. set the Li occupancy to 0.5 and reduce to the primitive cell;
3. enumerate the ordered derivatives (48 distinct structures) and keep the lowest in Ewald energy;
4. pre-relax them with the oracle;
5. build the initial data (strain + rattle);
6. run the active-learning loop with MD at several temperatures.

Locally, with the xTB oracle and the embedded store (a few minutes on a laptop):

    python workflows/li6ps5cl_argyrodite.py

On a cluster, with VASP (MPRelaxSet pre-relaxation, MPStaticSet labels) through FireWorks:

    python workflows/li6ps5cl_argyrodite.py --oracle vasp --submit
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from almat.campaign import CampaignConfig, load_config
from almat.enumeration import enumerate_derivatives, set_occupancy
from almat.enumeration.cli import read_structure

CIF = Path(__file__).parent / "data" / "Li6PS5Cl_argyrodite.cif"


def start_structures(n: int = 2):
    """The ``n`` lowest-Ewald ordered Li6PS5Cl cells (13 atoms), without oxidation states."""
    disordered = set_occupancy(read_structure(CIF), "Li+", 0.5).get_primitive_structure()
    ordered = enumerate_derivatives(disordered, n_structures=n)
    structures = []
    for result in ordered:
        s = result.structure.copy()
        s.remove_oxidation_states()
        structures.append(s)
    return structures


def build_config(oracle: str = "xtb", n_start: int = 2, quick: bool = False, name: str | None = None) -> CampaignConfig:
    """The campaign for this chemistry. ``quick`` shrinks everything for a smoke test."""
    if oracle == "xtb":
        oracle_section = {"kind": "ase", "calculator": {"module": "tblite.ase", "class": "TBLite",
                                                        "kwargs": {"method": "GFN1-xTB", "verbosity": 0}}}
    elif oracle == "vasp":
        oracle_section = {"kind": "vasp"}
    else:
        raise ValueError(f"unknown oracle {oracle!r}; use 'xtb' or 'vasp'")
    gpu = oracle == "vasp"  # on a cluster: train and explore on the GPU queue
    return load_config({
        "name": name or f"li6ps5cl-{oracle}" + ("-quick" if quick else ""),
        "description": "Li6PS5Cl argyrodite, ordered derivatives of the Li 0.5 occupancy",
        "structures": [{"structure": s.as_dict()} for s in start_structures(n_start)],
        "oracle": oracle_section,
        "prerelax": {"enabled": True, "fmax": 0.1, "steps": 15 if quick else 150, "trajectory_stride": 5},
        "initial": {"n_per_structure": 4 if quick else 10, "rattle_std": 0.05, "max_strain": 0.02},
        "learner": {
            "n_models": 2 if quick else 4,
            "hyperparameters": {"num_channels": 8 if quick else 16, "epochs": 4 if quick else 60,
                                "warm_start_epochs": 2 if quick else 25, "batch_size": 4,
                                "device": "cuda" if gpu else "cpu"},
        },
        "sampler": {"temperatures": [300, 600] if quick else [300, 600, 900], "steps": 10 if quick else 300,
                    "sample_every": 5 if quick else 10, "trust_lo": 0.08, "trust_hi": 0.5},
        "selection": {"policy": "max_deviation", "max_select": 3 if quick else 10},
        # calibrated stopping: held-out frames per iteration, 95 % of the explored frames with k·σ < 0.15 eV/Å
        "convergence": {"rule": "calibrated", "calibration_samples": 3 if quick else 8, "force_tolerance": 0.15,
                        "conv_accuracy": 0.95, "max_iterations": 1 if quick else 8},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle", choices=["xtb", "vasp"], default="xtb")
    parser.add_argument("--n-start", type=int, default=2, help="how many enumerated structures start the MD")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test in about a minute")
    parser.add_argument("--submit", action="store_true", help="add to the FireWorks LaunchPad instead of running")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("jobflow", "maggma", "pymatgen"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = build_config(args.oracle, args.n_start, args.quick)
    if args.submit:
        from almat.launch import submit_campaign

        print(submit_campaign(config))
        return
    from almat.campaign import run_campaign

    result = run_campaign(config, resume=args.resume)
    c = result.campaign
    print(f"{c.name}: {c.status.value} after {c.n_iterations} iteration(s), {c.n_labels} labels, "
          f"{result.wall_time:.0f} s ({c.stop_reason})")


if __name__ == "__main__":
    main()
