"""Held-out errors of a campaign's final committee on frames from oracle-driven MD.

Frames come from *independent* MD driven by the oracle itself (not by the committee), at the campaign's
temperatures, so they were never candidates for labelling. For MD campaigns; pool and NFT campaigns
record their own held-out errors per iteration (``almat status NAME``).

    python scripts/evaluate_campaign.py cu-emt --frames 20

With an oracle that is not an ASE calculator (CP2K, VASP), pass frames labelled beforehand by the campaign's
oracle, from MD that no committee drove (e.g. ``workflows/li6ps5cl_cp2k.py --test-set``):

    python scripts/evaluate_campaign.py li6ps5cl-cp2k --test-file test_600K.extxyz

The production model of ``finish:`` (if the campaign has one) is scored on the same frames.
"""

import argparse
import contextlib
import io
import json
import warnings

warnings.filterwarnings("ignore")
with contextlib.redirect_stdout(io.StringIO()):  # mace prints "cuequivariance ... not available" on its first import
    try:
        import mace.modules  # noqa: F401
    except ImportError:  # (the committee's learner says what is missing, where it is used)
        pass

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary  # noqa: E402

from almat.campaign.config import CampaignConfig  # noqa: E402
from almat.learner.committee import Committee, load_model  # noqa: E402
from almat.schemas import to_atoms  # noqa: E402
from almat.stores import CampaignDB  # noqa: E402


def oracle_md_frames(config: CampaignConfig, n_frames: int, steps: int = 400, seed: int = 12345):
    """``n_frames`` random frames (with oracle energies and forces) from oracle-driven MD."""
    rng = np.random.default_rng(seed)
    spec = config.oracle.calculator.spec()
    pool = []
    for structure in config.load_structures():
        for temperature in config.sampler.temperatures:
            atoms = to_atoms(structure)
            atoms.calc = spec.load()
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            Stationary(atoms)
            dyn = Langevin(atoms, config.sampler.timestep_fs * units.fs, temperature_K=temperature,
                           friction=config.sampler.friction_per_fs / units.fs, fixcm=False, rng=rng)
            for _ in range(steps // 10):
                dyn.run(10)
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                                   forces=atoms.get_forces())
                pool.append(frame)
    picks = rng.choice(len(pool), size=min(n_frames, len(pool)), replace=False)
    return [pool[i] for i in picks]


def errors(pred_energies, pred_forces, frames) -> dict:
    """Force RMSE/MAE (eV/Å), energy RMSE per atom after removing the mean offset and raw, mean worst-atom error."""
    ref_f = np.concatenate([a.get_forces() for a in frames])
    df = np.concatenate(pred_forces) - ref_f
    de = np.array([(e - a.get_potential_energy()) / len(a) for e, a in zip(pred_energies, frames)])
    worst = [float(np.linalg.norm(f - a.get_forces(), axis=1).max()) for f, a in zip(pred_forces, frames)]
    return {"force_rmse": float(np.sqrt(np.mean(df**2))), "force_mae": float(np.mean(np.abs(df))),
            "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2))),
            "energy_rmse_per_atom_offset_removed": float(np.std(de)), "mean_max_force_error": float(np.mean(worst)),
            "force_rms_reference": float(np.sqrt(np.mean(ref_f**2)))}


def production_errors(db: CampaignDB, campaign: str, frames) -> dict | None:
    """Errors of the campaign's production model (``finish:``) on ``frames``; None without one."""
    from almat.learner.production import held_out_errors
    from almat.schemas import ModelDoc

    camp = db.campaigns.query_one({"name": campaign}) or {}
    raw = camp.get("production_model_id") and db.models.query_one({"model_id": camp["production_model_id"]})
    if not raw:
        return None
    doc = ModelDoc.from_store(raw)
    model = load_model(db.data, doc)
    one = held_out_errors(model, frames)
    return {"model_id": doc.model_id, "n_training_labels": len(doc.training_label_ids),
            "force_rmse": one["force_rmse"], "energy_rmse_per_atom": one["energy_rmse_per_atom"],
            "max_force_error": one["max_force_error"]}


def holdout_errors(db: CampaignDB, campaign: str, n_frames: int = 20, steps: int = 400, seed: int = 12345,
                   frames=None) -> dict:
    """Force/energy errors of the last committee of ``campaign`` on oracle-MD frames (``frames``, labelled, or
    ``n_frames`` drawn from new MD with the campaign's ASE oracle)."""
    doc = db.campaigns.query_one({"name": campaign})
    if doc is None:
        raise KeyError(f"no campaign {campaign!r}")
    kind = (doc.get("config") or {}).get("kind", "md")
    if kind != "md":
        raise ValueError(f"campaign {campaign!r} is a {kind} campaign; holdout_errors evaluates MD campaigns "
                         f"(a {kind} campaign records its own test errors per iteration: almat status {campaign})")
    config = CampaignConfig.model_validate(doc["config"])
    iterations = sorted(db.iterations.query({"campaign": campaign}), key=lambda d: d["iteration"])
    if not iterations:
        raise ValueError(f"campaign {campaign!r} has no finished iteration yet")
    committee = Committee.from_store(db, iterations[-1]["model_ids"])
    if frames is None:
        frames = oracle_md_frames(config, n_frames, steps=steps, seed=seed)
    pred = committee.predict(frames)
    result = errors(pred.mean_energy, [pred.mean_forces(i) for i in range(len(frames))], frames)
    return {"campaign": campaign, "iteration": iterations[-1]["iteration"], "n_frames": len(frames),
            "n_labels": db.labels.count({"campaign": campaign, "status": "ok"}), **result,
            "mean_model_deviation": float(np.mean(pred.model_deviation)),
            "production": production_errors(db, campaign, frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--steps", type=int, default=400, help="oracle MD steps per start structure and temperature")
    parser.add_argument("--test-file", help="labelled frames (extxyz with energies and forces) instead of new MD")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = None
    if args.test_file:
        from ase.io import read

        frames = read(args.test_file, index=":")
    with CampaignDB.from_settings() as db:
        result = holdout_errors(db, args.campaign, n_frames=args.frames, steps=args.steps, frames=frames)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"campaign {result['campaign']}: committee of iteration {result['iteration']}, {result['n_labels']} labels")
    print(f"held-out: {result['n_frames']} frames of oracle MD" + (f" ({args.test_file})" if args.test_file else ""))
    print(f"  force RMSE   {result['force_rmse']:.4f} eV/Å  (reference force RMS {result['force_rms_reference']:.3f} eV/Å)")
    print(f"  force MAE    {result['force_mae']:.4f} eV/Å")
    print(f"  energy RMSE  {1000 * result['energy_rmse_per_atom']:.2f} meV/atom")
    print(f"  mean model deviation {result['mean_model_deviation']:.4f} eV/Å vs mean max force error "
          f"{result['mean_max_force_error']:.4f} eV/Å")
    prod = result["production"]
    if prod:
        print(f"production model {prod['model_id']} ({prod['n_training_labels']} labels): force RMSE "
              f"{prod['force_rmse']:.4f} eV/Å, energy RMSE {1000 * prod['energy_rmse_per_atom']:.2f} meV/atom, "
              f"worst atom {prod['max_force_error']:.3f} eV/Å")


if __name__ == "__main__":
    main()
