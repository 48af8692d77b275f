"""Pool campaigns: the explorer without the workflow (state, each acquisition on real EMT Cu data and a tiny
MACE committee, the stopping rules, the error cases, the pool sources), then campaigns end to end through
jobflow on the embedded store (EMT Cu, 40-structure pool, 2-model tiny MACE committee)."""

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write


from almat.campaign import ConfigError, load_config, run_campaign
from almat.campaign.config import PoolCampaignConfig
from almat.campaign.jobs import test_errors
from almat.campaign.pool import PoolState, acquire, decide_stop
from almat.campaign.sources import load_pool
from almat.report.learning import plot_learning_curves
from almat.schemas import CampaignStatus, StructureDoc, TestErrors
from almat.select.lookup import acquisition_policy
from almat.stores import CampaignDB


@pytest.fixture(scope="module")
def pool(cu_data):
    """The 32 EMT-labelled Cu8 frames as a pool (labels stripped: the pool is unlabelled)."""
    train, held = cu_data
    frames = []
    for a in [*train, *held]:
        b = a.copy()
        b.calc = None
        frames.append(b)
    return frames


@pytest.fixture
def state():
    # 32 frames: 6 held out, the first 4 initial ones labelled
    s = PoolState.create(32, n_init=4, n_test=6, seed=3)
    s.add(s.init)
    return s


def test_state_split_is_disjoint_and_reproducible():
    a = PoolState.create(40, n_init=5, test_fraction=0.25, seed=1)
    b = PoolState.create(40, n_init=5, test_fraction=0.25, seed=1)
    assert a.to_dict() == b.to_dict()
    assert len(a.test_indices) == 10 and len(a.init) == 5 and not set(a.init) & set(a.test_indices)
    a.add(a.init)
    assert len(a.unlabelled) == 25 and not set(a.unlabelled) & set(a.test_indices)
    with pytest.raises(ValueError, match="held out or already labelled"):
        a.add([a.test_indices[0]])
    assert PoolState.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_empty_pool_and_bad_sizes_are_clear_errors(pool):
    with pytest.raises(ValueError, match="pool is empty"):
        PoolState.create(0, n_init=2)
    with pytest.raises(ValueError, match="n_init .* larger than the pool"):
        PoolState.create(10, n_init=9, n_test=2)
    with pytest.raises(ValueError, match="leaves nothing"):
        PoolState.create(10, n_init=2, n_test=10)
    with pytest.raises(ValueError, match="pool is empty"):
        PoolCampaignConfig(name="x", pool=[])
    cfg = PoolCampaignConfig(name="x", pool=[{"structures": []}])
    with pytest.raises(ValueError, match="pool is empty"):
        load_pool(cfg)


def test_unknown_acquisition_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown acquisition 'bald'; valid: committee, fps, weighted, random"):
        acquisition_policy("bald")
    with pytest.raises(ConfigError, match=r"acquisition: unknown acquisition 'bald'; valid: committee"):
        load_config({"kind": "pool", "name": "x", "pool": [{"bulk": {"name": "Cu"}}], "acquisition": {"name": "bald"}})
    with pytest.raises(ConfigError, match="bad options for acquisition 'weighted'"):
        load_config({"kind": "pool", "name": "x", "pool": [{"bulk": {"name": "Cu"}}],
                          "acquisition": {"name": "weighted", "options": {"w9": 1}}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({"kind": "pool", "name": "x", "pool": [{"bulk": {"name": "Cu"}}], "budgett": 3})


def test_committee_acquisition_takes_the_highest_deviation(pool, state, tiny_committee):
    committee, _ = tiny_committee
    picked = acquire(pool, state, "committee", 5, committee, iteration=1)
    free = state.unlabelled
    dev = committee.predict([pool[i] for i in free]).model_deviation
    expected = [free[k] for k in np.argsort(-dev, kind="stable")[:5]]
    assert picked.indices == expected
    assert picked.model_deviation == pytest.approx(sorted(dev, reverse=True)[:5])
    assert not set(picked.indices) & (set(state.test_indices) | set(state.labelled))


def test_random_acquisition_is_seeded_and_needs_no_committee(pool, state):
    a = acquire(pool, state, "random", 6, None, rng=np.random.default_rng(7))
    b = acquire(pool, state, "random", 6, None, rng=np.random.default_rng(7))
    assert a.indices == b.indices and len(set(a.indices)) == 6
    assert set(a.indices) <= set(state.unlabelled)
    assert all(np.isnan(d) for d in a.model_deviation)  # no committee prediction was made


def test_fps_acquisition_is_farthest_from_the_training_set(pool, state, tiny_committee):
    from almat.learner.descriptors import structure_descriptors
    from almat.select.fps import farthest_point_sampling

    committee, _ = tiny_committee
    picked = acquire(pool, state, "fps", 4, committee, iteration=1)
    free = state.unlabelled
    x = structure_descriptors(committee, [pool[i] for i in free])
    ref = structure_descriptors(committee, [pool[i] for i in state.trained_on])
    expected, _ = farthest_point_sampling(x, 4, reference=ref)
    assert picked.indices == [free[k] for k in expected]
    assert len(set(picked.indices)) == 4 and set(picked.indices) <= set(free)


def test_weighted_acquisition(pool, state, tiny_committee):
    committee, _ = tiny_committee
    exploit = acquire(pool, state, "weighted", 5, committee, iteration=1,
                      options={"w0": 1.0, "w1": 1.0, "schedule": "constant"})
    assert exploit.indices == acquire(pool, state, "committee", 5, committee, iteration=1).indices
    explore = acquire(pool, state, "weighted", 4, committee, iteration=1,
                      options={"w0": 0.0, "w1": 0.0, "schedule": "constant"})
    assert explore.indices == acquire(pool, state, "fps", 4, committee, iteration=1).indices
    mixed = acquire(pool, state, "weighted", 5, committee, iteration=0, options={"w0": 0.3, "w1": 0.9})
    assert len(set(mixed.indices)) == 5 and set(mixed.indices) <= set(state.unlabelled)


def test_budget_larger_than_the_remaining_pool_is_capped_with_a_warning(pool, state):
    n_free = len(state.unlabelled)
    with pytest.warns(UserWarning, match=f"budget 100 is larger than the remaining pool \\({n_free}\\)"):
        picked = acquire(pool, state, "random", 100, None)
    assert picked.capped and sorted(picked.indices) == state.unlabelled


def test_stopping_rules_in_order():
    s = PoolState.create(20, n_init=4, n_test=4, seed=0)
    s.add(s.init)
    good, bad = TestErrors(n_structures=4, force_rmse=0.01), TestErrors(n_structures=4, force_rmse=0.5)
    assert decide_stop(s, 0, good, 4, target_force_rmse=0.02)[:2] == ("converged", "test force RMSE 0.0100 <= "
                                                                      "target 0.02 eV/Å")
    assert decide_stop(s, 2, bad, 4, max_iterations=3)[:2] == ("max_iterations", "max_iterations (3) reached")
    assert decide_stop(s, 0, bad, 4, total_budget=4)[:2] == ("stopped", "total budget (4 labels) spent")
    assert decide_stop(s, 0, bad, 4, total_budget=6) == (None, None, 2)  # the last batch is cut to the budget left
    s.add(s.unlabelled)
    assert decide_stop(s, 0, bad, 4)[1].startswith("pool exhausted")


def test_errors_match_a_direct_computation(cu_data, tiny_committee):
    committee, _ = tiny_committee
    _, held = cu_data
    errors = test_errors(committee, held)
    pred = committee.predict(held)
    df = np.concatenate([pred.mean_forces(i) - a.get_forces() for i, a in enumerate(held)])
    assert errors.force_rmse == pytest.approx(float(np.sqrt(np.mean(df ** 2))))
    assert errors.n_structures == 8 and errors.energy_rmse_per_atom > 0


ROOT = Path(__file__).resolve().parents[2]

HP = {"num_channels": 8, "epochs": 10, "warm_start_epochs": 5, "batch_size": 4, "eval_every": 5}


def _config(name, acquisition):
    return {
        "kind": "pool",
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
    cfg = load_config({
        "kind": "pool", "name": "src", "base_dir": str(tmp_path),
        "pool": [{"file": "md.extxyz"}, {"file": "md.extxyz", "index": "::2", "supercell": [2, 1, 1]},
                 {"bulk": {"name": "Cu", "cubic": True}, "perturb": {"n": 3, "seed": 0}}],
    })
    pool = load_pool(cfg)
    assert len(pool) == 6 + 3 + 3
    assert pool[0].info["temperature"] == 300.0 and pool[0].info["pool_origin"] == "md.extxyz#0"
    assert len(pool[6]) == 8 and pool[-1].info["perturbation"] == 2
    # duplicates are dropped with a warning
    dup = PoolCampaignConfig(name="dup", pool=[{"file": tmp_path / "md.extxyz"}, {"file": tmp_path / "md.extxyz"}])
    with pytest.warns(UserWarning, match="6 duplicate structure"):
        assert len(load_pool(dup)) == 6
    # a plain Python list of Atoms is one source
    py = PoolCampaignConfig(name="py", pool=frames[:4])
    assert len(py.pool) == 1 and len(load_pool(py)) == 4
    with pytest.raises(ConfigError, match="pool file not found"):
        load_pool(PoolCampaignConfig(name="nofile", pool=[{"file": tmp_path / "nope.xyz"}]))
    with pytest.raises(ConfigError, match="give exactly one of"):
        load_config({"kind": "pool", "name": "x", "pool": [{"bulk": {"name": "Cu"}, "file": "a.xyz"}]})


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
    assert len(load_pool(cfg, db)) == 3
    with pytest.raises(ConfigError, match="needs the store"):
        load_pool(cfg)


def test_example_workflow_loads():
    cfg = load_config(ROOT / "workflows" / "cu_pool_emt.yaml")
    assert cfg.kind == "pool" and cfg.acquisition.name == "committee"
    assert len(load_pool(cfg)) >= 50


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    from almat.settings import AlmatSettings

    tmp = tmp_path_factory.mktemp("pool")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    results = {acq: run_campaign(_config(f"cu-pool-{acq}", acq), settings)
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
        assert [d["iteration"] for d in db.pool_iterations.query({"campaign": "cu-pool-committee"})] == [0, 1]
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
        path = plot_learning_curves(["cu-pool-committee", "cu-pool-random"], tmp / "lc.png", db=db)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    from_records = plot_learning_curves({k: r for k, r in results.items()}, tmp / "lc2.png")
    assert from_records.stat().st_size > 10_000


@pytest.mark.slow
def test_name_is_never_reused(campaigns):
    from almat.campaign import CampaignExistsError

    settings, _, _ = campaigns
    with pytest.raises(CampaignExistsError, match="already exists"):
        run_campaign(_config("cu-pool-committee", "committee"), settings)
