"""The pure-Python pool core: state, each acquisition on real EMT Cu data and a tiny MACE committee,
the stopping rules, and the error cases."""

import numpy as np
import pytest

from almat.pool import (
    PoolCampaignConfig,
    PoolState,
    acquire,
    calculator_oracle,
    decide_stop,
    get_acquisition,
    load_pool_config,
    run_pool_loop,
    test_errors,
)
from almat.campaign.config import ConfigError
from almat.schemas import TestErrors


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
    with pytest.raises(ValueError, match="pool is empty"):
        run_pool_loop([], calculator_oracle(lambda: None), lambda *a: None)
    with pytest.raises(ValueError, match="n_init .* larger than the pool"):
        PoolState.create(10, n_init=9, n_test=2)
    with pytest.raises(ValueError, match="leaves nothing"):
        PoolState.create(10, n_init=2, n_test=10)
    with pytest.raises(ValueError, match="pool is empty"):
        PoolCampaignConfig(name="x", pool=[])
    cfg = PoolCampaignConfig(name="x", pool=[{"structures": []}])
    with pytest.raises(ValueError, match="pool is empty"):
        cfg.load_pool()


def test_unknown_acquisition_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown acquisition 'bald'; valid: committee, fps, weighted, random"):
        get_acquisition("bald")
    with pytest.raises(ConfigError, match=r"acquisition: unknown acquisition 'bald'; valid: committee"):
        load_pool_config({"name": "x", "pool": [{"bulk": {"name": "Cu"}}], "acquisition": {"name": "bald"}})
    with pytest.raises(ConfigError, match="bad options for acquisition 'weighted'"):
        load_pool_config({"name": "x", "pool": [{"bulk": {"name": "Cu"}}],
                          "acquisition": {"name": "weighted", "options": {"w9": 1}}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_pool_config({"name": "x", "pool": [{"bulk": {"name": "Cu"}}], "budgett": 3})


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
    assert decide_stop(s, 0, good, 4, target_force_rmse=0.02)[0].startswith("test force RMSE 0.0100 <= target")
    assert decide_stop(s, 2, bad, 4, max_iterations=3)[0] == "max_iterations (3) reached"
    assert decide_stop(s, 0, bad, 4, total_budget=4)[0] == "total budget (4 labels) spent"
    assert decide_stop(s, 0, bad, 4, total_budget=6) == (None, 2)  # the last batch is cut to the budget left
    s.add(s.unlabelled)
    assert decide_stop(s, 0, bad, 4)[0].startswith("pool exhausted")


def test_loop_records_cumulative_labels_and_stops_on_the_total_budget(pool, tiny_committee):
    """The loop with EMT as oracle; a fixed committee stands in for training (fast)."""
    from ase.calculators.emt import EMT

    committee, _ = tiny_committee
    trained_on = []

    def train(frames, iteration, previous):
        assert all(f.calc is not None for f in frames)
        trained_on.append(len(frames))
        return committee

    result = run_pool_loop(pool, calculator_oracle(EMT), train, n_init=4, budget=3, total_budget=9,
                           acquisition="committee", n_test=6, max_iterations=10, seed=2, name="loop")
    recs = result.records
    assert [r.n_labels for r in recs] == [4, 7, 9] and trained_on == [4, 7, 9]
    assert recs[-1].stop_reason == "total budget (9 labels) spent"
    for prev, r in zip(recs, recs[1:]):
        assert r.new_indices == prev.acquired_indices
        assert r.labelled_indices == prev.labelled_indices + r.new_indices
    assert not set(recs[-1].labelled_indices) & set(recs[0].test_indices)
    assert all(r.test_errors.n_structures == 6 and np.isfinite(r.test_errors.force_rmse) for r in recs)
    assert result.oracle_calls == 6 + 9


def test_loop_stops_when_the_pool_is_exhausted(pool, tiny_committee):
    from ase.calculators.emt import EMT

    committee, _ = tiny_committee
    small = pool[:10]
    with pytest.warns(UserWarning, match="budget 4 is larger than the remaining pool \\(1\\)"):
        result = run_pool_loop(small, calculator_oracle(EMT), lambda *a: committee, n_init=3, budget=4, n_test=2,
                               acquisition="random", max_iterations=10)
    assert [r.n_labels for r in result.records] == [3, 7, 8]
    assert result.stop_reason.startswith("pool exhausted")


def test_errors_match_a_direct_computation(cu_data, tiny_committee):
    committee, _ = tiny_committee
    _, held = cu_data
    errors = test_errors(committee, held)
    pred = committee.predict(held)
    df = np.concatenate([pred.mean_forces(i) - a.get_forces() for i, a in enumerate(held)])
    assert errors.force_rmse == pytest.approx(float(np.sqrt(np.mean(df ** 2))))
    assert errors.n_structures == 8 and errors.energy_rmse_per_atom > 0
