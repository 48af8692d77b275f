"""Smoke test of the label-efficiency benchmark's core (benchmarks/label_efficiency.py), tiny settings."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("label_efficiency", ROOT / "benchmarks" / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_efficiency"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
