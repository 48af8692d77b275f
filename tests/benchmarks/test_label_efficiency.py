"""The label-efficiency benchmark (benchmarks/label_efficiency.py): its in-process pool loop on EMT Cu with a
tiny committee, and a smoke run of the whole benchmark with tiny settings."""

import json

import numpy as np
import pytest
from project_module import load_module



def _bench():
    return load_module("benchmarks/label_efficiency.py")


@pytest.fixture(scope="module")
def pool(cu_data):
    """The 32 EMT-labelled Cu8 frames as a pool (labels stripped: the pool is unlabelled)."""
    frames = []
    for a in [*cu_data[0], *cu_data[1]]:
        b = a.copy()
        b.calc = None
        frames.append(b)
    return frames


def test_loop_records_cumulative_labels_and_stops_on_the_total_budget(pool, tiny_committee):
    """The loop with EMT as oracle; a fixed committee stands in for training (fast)."""
    from ase.calculators.emt import EMT

    bench = _bench()
    committee, _ = tiny_committee
    trained_on = []

    def train(frames, iteration, previous):
        assert all(f.calc is not None for f in frames)
        trained_on.append(len(frames))
        return committee

    result = bench.run_pool_loop(pool, bench.calculator_oracle(EMT), train, n_init=4, budget=3, total_budget=9,
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

    bench = _bench()
    committee, _ = tiny_committee
    small = pool[:10]
    with pytest.warns(UserWarning, match="budget 4 is larger than the remaining pool \\(1\\)"):
        result = bench.run_pool_loop(small, bench.calculator_oracle(EMT), lambda *a: committee, n_init=3, budget=4, n_test=2,
                               acquisition="random", max_iterations=10)
    assert [r.n_labels for r in result.records] == [3, 7, 8]
    assert result.stop_reason.startswith("pool exhausted")


def test_labels_to_target_interpolates_in_log_rmse():
    bench = _bench()
    assert bench.labels_to_target([6, 12, 18], [0.4, 0.2, 0.1], 0.2) == 12.0
    assert bench.labels_to_target([6, 12, 18], [0.4, 0.2, 0.1], 0.5) == 6.0
    assert bench.labels_to_target([6, 12, 18], [0.4, 0.2, 0.1], 0.05) is None
    assert bench.labels_to_target([6, 12], [0.4, 0.1], 0.2) == pytest.approx(9.0)  # half way in log
    assert bench.labels_to_target([6, 12], [0.4, 0.1], 0.2, interpolate=False) == 12.0


@pytest.mark.slow
def test_benchmark_core_runs_and_writes_its_results(tmp_path):
    bench = _bench()
    spec = bench.PoolSpec(conditions=[("300K", 300.0, 0.0, 0, 8), ("1500K", 1500.0, 0.0, 0, 4)],
                          n_test_per_condition=2, burn_in=20, sample_every=5)
    settings = bench.BenchSettings(seeds=[0], methods=["committee", "random"], n_init=3, budget=3, iterations=2,
                                   hyperparameters={"num_channels": 8, "epochs": 3, "warm_start_epochs": 2,
                                                    "batch_size": 4, "eval_every": 3},
                                   pool=spec, jobs=1)
    result = bench.run_benchmark(settings, tmp_path, log=lambda msg: None)
    assert result["pool_size"] == 12 and result["test_size"] == 4
    assert [r["method"] for r in result["runs"]] == ["committee", "random"]
    for run in result["runs"]:
        assert run["n_labels"] == [3, 6] and run["oracle_calls"] == 6
        assert all(f > 0 for f in run["force_rmse"])
    # default target: the worst final RMSE of the random runs, which random reaches at its last budget
    random_run = result["runs"][1]
    assert result["target_force_rmse"] == random_run["force_rmse"][-1]
    assert random_run["labels_to_target_grid"] == 6.0
    saved = json.loads((tmp_path / "label_efficiency.json").read_text())
    assert saved["target_force_rmse"] == result["target_force_rmse"] and "ratios" in saved
    assert (tmp_path / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean labels random / committee" in bench.format_table(result)
