"""Pool sources and configs, and a 2-iteration pool campaign end to end through jobflow on the
embedded store (EMT Cu, 40-structure pool, 2-model tiny MACE committee)."""

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from almat.campaign.config import ConfigError
from almat.pool import (
    PoolCampaignConfig,
    load_pool_config,
    load_pool_iterations,
    plot_learning_curve,
    run_pool_campaign,
)
from almat.schemas import CampaignStatus, StructureDoc
from almat.stores import CampaignDB

ROOT = Path(__file__).resolve().parents[2]

HP = {"num_channels": 8, "epochs": 10, "warm_start_epochs": 5, "batch_size": 4, "eval_every": 5}


def _config(name, acquisition):
    return {
        "name": name,
        "pool": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2],
                  "perturb": {"n": 40, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
        "learner": {"n_models": 2, "hyperparameters": HP},
        "acquisition": acquisition,
        "n_init": 6, "budget": 4, "n_test": 8, "max_iterations": 2, "seed": 5,
    }


def test_pool_sources_extxyz_python_list_and_perturbations(tmp_path):
    frames = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.positions += np.random.default_rng(k).normal(0, 0.05, a.positions.shape)
        a.info["temperature"] = 300.0 + 100 * k
        frames.append(a)
    write(tmp_path / "md.extxyz", frames, format="extxyz")
    cfg = load_pool_config({
        "name": "src", "base_dir": str(tmp_path),
        "pool": [{"file": "md.extxyz"}, {"file": "md.extxyz", "index": "::2", "supercell": [2, 1, 1]},
                 {"bulk": {"name": "Cu", "cubic": True}, "perturb": {"n": 3, "seed": 0}}],
    })
    pool = cfg.load_pool()
    assert len(pool) == 6 + 3 + 3
    assert pool[0].info["temperature"] == 300.0 and pool[0].info["pool_origin"] == "md.extxyz#0"
    assert len(pool[6]) == 8 and pool[-1].info["perturbation"] == 2
    # duplicates are dropped with a warning
    dup = PoolCampaignConfig(name="dup", pool=[{"file": tmp_path / "md.extxyz"}, {"file": tmp_path / "md.extxyz"}])
    with pytest.warns(UserWarning, match="6 duplicate structure"):
        assert len(dup.load_pool()) == 6
    # a plain Python list of Atoms is one source
    py = PoolCampaignConfig(name="py", pool=frames[:4])
    assert len(py.pool) == 1 and len(py.load_pool()) == 4
    with pytest.raises(ConfigError, match="pool file not found"):
        PoolCampaignConfig(name="nofile", pool=[{"file": tmp_path / "nope.xyz"}]).load_pool()
    with pytest.raises(ConfigError, match="give exactly one of"):
        load_pool_config({"name": "x", "pool": [{"bulk": {"name": "Cu"}, "file": "a.xyz"}]})


def test_pool_from_a_labels_query(db):
    from almat.oracle.calculators import CalculatorSpec
    from almat.oracle.jobs import label_with_calculator
    from almat.schemas import to_structure

    spec = CalculatorSpec("ase.calculators.emt", "EMT")
    labels = []
    for k in range(3):
        a = bulk("Cu", "fcc", a=3.6 + 0.01 * k, cubic=True)
        labels.append(label_with_calculator(to_structure(a), spec, campaign="other"))
    db.upsert("labels", labels)
    cfg = PoolCampaignConfig(name="q", pool=[{"query": {"collection": "labels", "filters": {"campaign": "other"}}}])
    assert len(cfg.load_pool(db)) == 3
    with pytest.raises(ConfigError, match="needs the store"):
        cfg.load_pool()


def test_example_workflow_loads():
    cfg = load_pool_config(ROOT / "workflows" / "cu_pool_emt.yaml")
    assert cfg.kind == "pool" and cfg.acquisition.name == "committee"
    assert len(cfg.load_pool()) >= 50


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    from almat.settings import AlmatSettings

    tmp = tmp_path_factory.mktemp("pool")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    results = {acq: run_pool_campaign(load_pool_config(_config(f"cu-pool-{acq}", acq)), settings)
               for acq in ("committee", "random")}
    return settings, results, tmp


@pytest.mark.slow
def test_pool_campaign_records(campaigns):
    settings, results, _ = campaigns
    result = results["committee"]
    assert result.campaign.status == CampaignStatus.max_iterations
    recs = result.iterations
    assert [r.iteration for r in recs] == [0, 1]
    assert [r.n_labels for r in recs] == [6, 10]  # n_init + budget
    assert recs[1].new_indices == recs[0].acquired_indices and len(recs[0].acquired_indices) == 4
    assert recs[1].labelled_indices == recs[0].labelled_indices + recs[1].new_indices
    assert recs[-1].stop_reason == "max_iterations (2) reached" and recs[0].stop_reason is None
    test = set(recs[0].test_indices)
    assert len(test) == 8 and not test & set(recs[-1].labelled_indices)
    # the committee picks are the highest deviations, recorded with them
    assert recs[0].acquired_deviation == sorted(recs[0].acquired_deviation, reverse=True)
    with CampaignDB.from_settings(settings) as db:
        assert [r.iteration for r in load_pool_iterations(db, "cu-pool-committee")] == [0, 1]
        for r in recs:
            assert len(r.model_ids) == 2
            assert all(db.models.query_one({"model_id": m}) for m in r.model_ids)
            assert r.test_errors.n_structures == 8 and np.isfinite(r.test_errors.force_rmse)
            assert r.test_force_rmse == r.test_errors.force_rmse and r.n_new_labels == len(r.new_indices)
            assert np.isfinite(r.test_errors.energy_rmse_per_atom) and r.n_train_labels == r.n_labels
        pool = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": "cu-pool-committee"})]
        assert len(pool) == 40 and all(d.source.value == "pool" for d in pool)
        assert sorted(d.metadata["pool_index"] for d in pool) == list(range(40))
        assert db.labels.count({"campaign": "cu-pool-committee", "status": "ok"}) == 8 + 10
        trained = db.models.query_one({"model_id": recs[1].model_ids[0]})
        assert sorted(trained["training_label_ids"] + trained["validation_label_ids"]) == sorted(recs[1].label_ids)


@pytest.mark.slow
def test_learning_curve_png_for_two_campaigns(campaigns):
    settings, results, tmp = campaigns
    assert [r.n_labels for r in results["random"].iterations] == [6, 10]
    with CampaignDB.from_settings(settings) as db:
        path = plot_learning_curve(["cu-pool-committee", "cu-pool-random"], tmp / "lc.png", db=db)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    from_records = plot_learning_curve({k: r for k, r in results.items()}, tmp / "lc2.png")
    assert from_records.stat().st_size > 10_000


@pytest.mark.slow
def test_name_is_never_reused(campaigns):
    from almat.campaign import CampaignExistsError

    settings, _, _ = campaigns
    with pytest.raises(CampaignExistsError, match="already exists"):
        run_pool_campaign(load_pool_config(_config("cu-pool-committee", "committee")), settings)
