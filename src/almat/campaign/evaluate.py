"""Held-out evaluation of a campaign's final committee against its oracle.

Frames come from *independent* MD driven by the oracle itself (not by the committee), at the
campaign's temperatures, so they were never candidates for labelling.
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from almat.campaign.config import CampaignConfig
from almat.learner.committee import Committee
from almat.schemas import to_atoms
from almat.stores import CampaignDB

__all__ = ["holdout_errors", "oracle_md_frames"]


def oracle_md_frames(config: CampaignConfig, n_frames: int, steps: int = 400, seed: int = 12345):
    """``n_frames`` random frames (with oracle energies and forces) from oracle-driven MD."""
    from ase.calculators.singlepoint import SinglePointCalculator

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


def holdout_errors(db: CampaignDB, campaign: str, n_frames: int = 20, steps: int = 400, seed: int = 12345) -> dict:
    """Force/energy errors of the last committee of ``campaign`` on oracle-MD frames."""
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
    frames = oracle_md_frames(config, n_frames, steps=steps, seed=seed)
    pred = committee.predict(frames)
    ref_f = np.concatenate([a.get_forces() for a in frames])
    mean_f = np.concatenate([pred.mean_forces(i) for i in range(len(frames))])
    de = [(pred.mean_energy[i] - a.get_potential_energy()) / len(a) for i, a in enumerate(frames)]
    true_max = [float(np.linalg.norm(pred.mean_forces(i) - a.get_forces(), axis=1).max()) for i, a in enumerate(frames)]
    return {
        "campaign": campaign,
        "iteration": iterations[-1]["iteration"],
        "n_frames": len(frames),
        "n_labels": db.labels.count({"campaign": campaign, "status": "ok"}),
        "force_rmse": float(np.sqrt(np.mean((mean_f - ref_f) ** 2))),
        "force_mae": float(np.mean(np.abs(mean_f - ref_f))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(np.square(de)))),
        "force_rms_reference": float(np.sqrt(np.mean(ref_f ** 2))),
        "mean_model_deviation": float(np.mean(pred.model_deviation)),
        "mean_max_force_error": float(np.mean(true_max)),
    }
