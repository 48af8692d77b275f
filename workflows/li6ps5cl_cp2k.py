"""Li6PS5Cl argyrodite on real DFT: CP2K (PBE) labels, a CHGNet start, NVT then NPT, on a cluster.

The campaign is built here in Python and run by FireWorks workers on SLURM against the MongoDB of
``~/.fireworks/my_launchpad.yaml`` (docs/argyrodite.md has the whole recipe and the measured run):

1. read the CIF (F-43m, Li+ at 0.56 on 48h), set the Li occupancy to 0.5, reduce to the primitive cell and
   keep the lowest-Ewald ordered derivatives (13 atoms each);
2. pre-relax them with atomate2's CP2K cell optimisation (a few steps; the steps are labels too);
3. start from CHGNet's bundled weights: MD with the pretrained model gives the first frames
   (``initial.method: foundation-md``), and the committee is CHGNet fine-tuned;
4. explore with the committee, NVT at 300 and 600 K, then NPT at 900 K; label the selected frames with CP2K;
5. stop when the calibrated force error is below the tolerance, or at the label budget (``LABEL_BUDGET``);
6. train the production model with ``mace_run_train`` on all the labels (``finish:``).

Commands (the yaml is what ``almat submit`` takes; ``--submit`` does the same from Python):

    python workflows/li6ps5cl_cp2k.py --cp2k-data ~/.cache/almat/cp2k-pmg-li6ps5cl   # then point the cpu
    #   workers' PMG_CP2K_DATA_DIR there: pymatgen then writes each input in 0.2 s instead of 9-20 s
    python workflows/li6ps5cl_cp2k.py --write li6ps5cl_cp2k.yaml && almat submit li6ps5cl_cp2k.yaml
    qlaunch -w ~/.fireworks/my_fworker_gpu.yaml -q ~/.fireworks/my_qadapter_gpu.yaml rapidfire --nlaunches infinite &
    qlaunch -w ~/.fireworks/my_fworker_cpu.yaml -q ~/.fireworks/my_qadapter_cpu.yaml rapidfire --nlaunches infinite &
    almat status li6ps5cl-cp2k

    python workflows/li6ps5cl_cp2k.py --test-set 8          # independent 600 K frames labelled by CP2K
    python workflows/li6ps5cl_cp2k.py --check-settings 2    # the chosen CP2K settings against tighter ones
    python scripts/evaluate_campaign.py li6ps5cl-cp2k --test-file almat_runs/li6ps5cl-cp2k-test/test_600K.extxyz

``--tiny`` makes the smoke-test version (minimal basis, 100 Ry, 2 iterations, a tiny production model) that
``tests/launch/test_cp2k_cluster.py`` runs through SLURM.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from li6ps5cl_argyrodite import start_structures  # noqa: E402  (the enumeration, shared with the xTB campaign)

from almat.campaign import CampaignConfig, load_config  # noqa: E402

#: GTH pseudopotential valences
VALENCE = {"Li": 3, "P": 5, "S": 6, "Cl": 7}


def cp2k_settings(basis: str = "DZVP-MOLOPT-SR-GTH", cutoff: int = 200, rel_cutoff: int = 30,
                  kpoints="gamma", eps_default: float = 1e-8, eps_scf: float = 1e-5) -> dict:
    """``oracle.cp2k`` for PBE with one basis for every element; the other keys are pymatgen DftSet's."""
    return {"basis_and_potential": {el: {"basis": basis, "potential": f"GTH-PBE-q{q}"} for el, q in VALENCE.items()},
            "cutoff": cutoff, "rel_cutoff": rel_cutoff, "ngrids": 3, "eps_default": eps_default,
            "eps_pgf_orb": None, "eps_scf": eps_scf, "ot": False, "alpha": 0.3, "kpoints": kpoints}


#: the labels of the measured run: DZVP, 200 Ry, Gamma (54 s a label on 2 idle cores); mixing 0.3 halves the
#: SCF steps of the set's 0.05. Its forces are 0.26 eV/Å RMSE from TIGHT's, nearly all from the single k-point
#: (docs/argyrodite.md): within the 60 s asked of a label, but not converged
LABEL = cp2k_settings()
#: what the settings check recommends instead (``--kpoints``): 2x2x2 k-points, about twice LABEL's time
LABEL_K = cp2k_settings(kpoints={"reciprocal_density": 8})
#: the check of LABEL: 400 Ry, 2x2x2 k-points, tighter SCF
TIGHT = cp2k_settings(cutoff=400, rel_cutoff=50, kpoints={"reciprocal_density": 8}, eps_default=1e-10,
                      eps_scf=1e-6)
#: the smoke test's: minimal basis, 100 Ry, EPS_DEFAULT 1e-6 (a 13-atom label 3x faster than at 1e-8; forces within
#: 0.06 eV/Å of it)
TINY = cp2k_settings(basis="SZV-MOLOPT-SR-GTH", cutoff=100, rel_cutoff=20, eps_default=1e-6)

#: the most labels the campaign may use, stated before it ran: 2 cells x (4 initial + up to 2 relaxation
#: labels) + 3 iterations x (5 selected + 3 calibration)
LABEL_BUDGET = 2 * (4 + 2) + 3 * (5 + 3)


def build_config(tiny: bool = False, name: str | None = None, n_start: int = 2, kpoints: bool = False
                 ) -> CampaignConfig:
    """The campaign: CP2K labels, CHGNet committee, NVT (300, 600 K) then NPT (900 K), production model.
    ``kpoints``: label with LABEL_K (2x2x2 k-points) instead of LABEL (Gamma only)."""
    nvt_steps, npt_steps = (10, 10) if tiny else (200, 300)
    return load_config({
        "name": name or ("li6ps5cl-cp2k-tiny" if tiny else "li6ps5cl-cp2k"),
        "description": "Li6PS5Cl argyrodite, lowest-Ewald orderings of Li at 0.5, CP2K PBE labels",
        "structures": [{"structure": s.as_dict()} for s in start_structures(n_start)],
        "oracle": {"kind": "cp2k", "cp2k": TINY if tiny else LABEL_K if kpoints else LABEL},
        "prerelax": {"enabled": True, "fmax": 0.2, "steps": 1 if tiny else 4, "relax_cell": True,
                     "trajectory_stride": 2},
        "initial": {"method": "foundation-md", "n_per_structure": 2 if tiny else 4, "md_temperature": 600,
                    "md_steps": 20 if tiny else 200},
        "learner": {"kind": "chgnet-finetune", "n_models": 2,
                    "hyperparameters": {"epochs": 1 if tiny else 8, "warm_start_epochs": 1 if tiny else 4,
                                        "batch_size": 4}},
        "sampler": {
            "steps": nvt_steps, "timestep_fs": 1.0, "sample_every": 5 if tiny else 10,
            "trust_units": "calibrated", "trust_lo": 0.1, "trust_hi": 1.0,
            "stages": [
                {"name": "nvt", "ensemble": "nvt", "temperatures": [300] if tiny else [300, 600],
                 "convergence": {"max_iterations": 1 if tiny else 2}},
                {"name": "npt", "ensemble": "npt", "temperatures": [900], "pressures": [1.0],
                 "pressure_unit": "bar", "steps": npt_steps, "sample_every": 2 if tiny else 15,
                 "convergence": {"max_iterations": 1}},
            ],
        },
        "selection": {"policy": "diverse", "max_select": 2 if tiny else 5},
        "convergence": {"rule": "calibrated", "calibration_samples": 2 if tiny else 3, "force_tolerance": 0.25,
                        "conv_accuracy": 0.9, "max_iterations": 2 if tiny else 3},
        "finish": {"trainer": "mace_run_train",
                   "options": {"num_channels": 8, "max_L": 0, "max_num_epochs": 4, "swa": False}
                   if tiny else {"num_channels": 32, "max_L": 1, "max_num_epochs": 150}},
    })


def md_frames(n_per_cell: int, temperature: float = 600.0, steps: int = 800, seed: int = 600):
    """``n_per_cell`` frames per start cell from GFN1-xTB Langevin MD (1 fs), evenly spaced after half the run:
    MD that no committee drove, so no frame of it was ever a candidate."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tblite.ase import TBLite

    from almat.schemas import to_atoms

    rng, frames = np.random.default_rng(seed), []
    for cell in start_structures(2):
        atoms = to_atoms(cell)
        atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=rng)
        dyn.run(steps // 2)
        for _ in range(n_per_cell):
            dyn.run(steps // (2 * n_per_cell))
            frames.append(atoms.copy())
    return frames


def cp2k_label(frames, settings: dict, tag: str, folder: Path):
    """CP2K labels of ``frames`` with ``settings`` through almat's CP2K oracle, run here (not on the cluster);
    they are recorded under the campaign name ``tag``, never a campaign's own. Labelled ASE frames (failed
    labels dropped, with a message)."""
    from jobflow import run_locally

    from almat.oracle.cp2k import Cp2kStaticOracleMaker, cp2k_environment, cp2k_static_maker
    from almat.schemas import LabelDoc, to_structure
    from almat.stores import build_job_store

    cp2k_environment()
    oracle = Cp2kStaticOracleMaker(cp2k_maker=cp2k_static_maker(**settings))
    out = []
    for i, atoms in enumerate(frames):
        flow = oracle.make(to_structure(atoms), campaign=tag, iteration=0)
        start = time.perf_counter()
        responses = run_locally(flow, store=build_job_store(), root_dir=folder, create_folders=True, log=False)
        label = next(r[1].output for r in responses.values() if isinstance(r[1].output, LabelDoc))
        print(f"  {tag} frame {i}: {label.status.value} in {time.perf_counter() - start:.0f} s"
              + (f" ({label.reason})" if label.reason else ""), flush=True)
        if label.ok:
            out.append(label.to_atoms())
    return out


def write_test_set(n_per_cell: int, out: Path) -> None:
    frames = md_frames(n_per_cell)
    labelled = cp2k_label(frames, LABEL, "li6ps5cl-cp2k-test", out.parent)
    from ase.io import write

    write(out, labelled, format="extxyz")
    print(f"{len(labelled)} CP2K-labelled 600 K frames -> {out}")


def check_settings(n_frames: int, folder: Path) -> dict:
    """Energies and forces of the chosen settings (LABEL, from the test set) against TIGHT on ``n_frames`` of
    the test set's frames, taken evenly over both cells."""
    from ase.io import read

    test = read(folder / "test_600K.extxyz", index=":")
    chosen = [test[i] for i in np.linspace(0, len(test) - 1, n_frames).round().astype(int)]
    tight = cp2k_label(chosen, TIGHT, "li6ps5cl-cp2k-settings-tight", folder)
    df = np.concatenate([(a.get_forces() - b.get_forces()).ravel() for a, b in zip(chosen, tight)])
    de = [(a.get_potential_energy() - b.get_potential_energy()) / len(a) for a, b in zip(chosen, tight)]
    result = {"n_frames": len(tight), "force_rmse": float(np.sqrt(np.mean(df**2))),
              "force_max": float(np.abs(df).max()), "force_rms": float(np.sqrt(np.mean(np.concatenate(
                  [a.get_forces().ravel() for a in tight]) ** 2))),
              "energy_per_atom_offsets": [float(x) for x in de], "energy_per_atom_spread": float(np.ptp(de))}
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the smoke-test version")
    parser.add_argument("--name", help="campaign name (default li6ps5cl-cp2k, or li6ps5cl-cp2k-tiny)")
    parser.add_argument("--kpoints", action="store_true", help="label with 2x2x2 k-points (LABEL_K), not Gamma only")
    parser.add_argument("--write", type=Path, metavar="YAML", help="write the campaign file for almat submit")
    parser.add_argument("--submit", action="store_true", help="add it to the FireWorks LaunchPad")
    parser.add_argument("--resume", action="store_true", help="with --submit: continue the campaign")
    parser.add_argument("--test-set", type=int, metavar="N", help="N frames per cell of 600 K xTB MD, CP2K-labelled")
    parser.add_argument("--check-settings", type=int, metavar="N", help="LABEL against TIGHT on N test-set frames")
    parser.add_argument("--cp2k-data", type=Path, metavar="DIR", help="write pymatgen's CP2K data cut down to the "
                        "campaign's basis sets and potentials to DIR (point PMG_CP2K_DATA_DIR there on the workers)")
    parser.add_argument("--out", type=Path, default=Path("almat_runs/li6ps5cl-cp2k-test"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("jobflow", "maggma", "pymatgen", "custodian"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.cp2k_data:
        from almat.oracle.cp2k import cp2k_data_subset, cp2k_environment

        source = cp2k_environment()["PMG_CP2K_DATA_DIR"]
        dest = cp2k_data_subset(TINY if args.tiny else LABEL, source, args.cp2k_data)  # LABEL_K: the same bases
        print(f"{dest}: export PMG_CP2K_DATA_DIR={dest} on the cpu workers")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.test_set:
        return write_test_set(args.test_set, args.out / "test_600K.extxyz")
    if args.check_settings:
        result = check_settings(args.check_settings, args.out)
        (args.out / "settings_check.json").write_text(json.dumps(result, indent=2))
        return
    config = build_config(args.tiny, args.name, kpoints=args.kpoints)
    if args.write:
        import yaml

        args.write.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
        print(f"{config.name} -> {args.write} (label budget {LABEL_BUDGET}); next: almat submit {args.write}")
    if args.submit:
        from almat.launch import submit_campaign

        print(submit_campaign(config, resume=args.resume))


if __name__ == "__main__":
    main()
