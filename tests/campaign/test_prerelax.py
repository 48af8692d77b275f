"""Pre-relaxation with the oracle feeds the initial data and the MD starts (EMT, tiny settings)."""

import numpy as np
import pytest
from ase.build import bulk

from almat.campaign import load_config, run_campaign
from almat.oracle import CalculatorSpec
from almat.oracle.relax import AseRelaxMaker
from almat.schemas import StructureDoc, to_structure
from almat.stores import CampaignDB


def test_relax_maker_relaxes_and_labels(job_store, db):
    from jobflow import run_locally

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)  # 4 % too large for EMT (a0 ~ 3.59)
    atoms.rattle(0.05, seed=0)
    job = AseRelaxMaker(calculator=CalculatorSpec("ase.calculators.emt", "EMT"), trajectory_stride=2).make(
        to_structure(atoms), campaign="r", start_index=0)
    out = run_locally(job, store=job_store, log=False, ensure_success=True)[job.uuid][1].output
    assert out.converged and out.structure.lattice.a < 3.65
    assert len(out.labels) >= 2 and all(lab.ok for lab in out.labels)
    assert np.abs(np.array(out.labels[-1].forces)).max() < 0.05
    relaxed = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "r", "source": "relaxed"})]
    assert len(relaxed) == 1 and relaxed[0].metadata["start_index"] == 0
    assert db.labels.count({"campaign": "r", "source": "relaxed"}) == len(out.labels)
    # a resumed campaign starts its MD from the stored relaxed structures
    from almat.campaign.md import relaxed_starts

    (start,) = relaxed_starts(db, "r")
    assert start == out.structure


@pytest.mark.slow
def test_campaign_with_prerelax(settings):
    cfg = load_config({
        "name": "cu-relax",
        "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.75}, "supercell": [2, 2, 2]}],
        "prerelax": {"enabled": True, "trajectory_stride": 3},
        "initial": {"n_per_structure": 6},
        "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 5}},
        "sampler": {"temperatures": [300], "steps": 20, "sample_every": 10},
        "convergence": {"max_iterations": 1},
    })
    result = run_campaign(cfg, settings)
    assert len(result.iterations) == 1
    with CampaignDB.from_settings(settings) as db:
        (relaxed,) = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "cu-relax", "source": "relaxed"})]
        assert relaxed.structure.lattice.a < 3.65 * 2 / 2 ** 0.5  # relaxed primitive supercell
        perturbed = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "cu-relax", "source": "perturbed"})]
        assert len(perturbed) == 5
        assert {p.parent for p in perturbed} == {relaxed.structure_hash}  # initial data start from the relaxed cell
        n_relax_labels = db.labels.count({"campaign": "cu-relax", "source": "relaxed"})
        assert n_relax_labels >= 2
        # the relaxation's labels train the first committee too (the relaxed cell itself is labelled once)
        assert result.iterations[0].n_train_labels == db.labels.count(
            {"campaign": "cu-relax", "status": "ok", "iteration": -1})
        assert result.iterations[0].n_train_labels >= 6 + n_relax_labels - 1
