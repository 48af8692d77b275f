"""benchmarks/stop_bound.py: its quick mode runs, and on its synthetic stream the point rule stops too early
where the confidence bound does not."""

import json

import pytest
from project_module import load_module



@pytest.fixture(scope="module")
def bench():
    return load_module("benchmarks/stop_bound.py")


def test_quick_mode_writes_its_figures(bench, tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "stop_rate.png").stat().st_size > 0
    stored = json.loads((tmp_path / "results.json").read_text())
    assert [r["p_true"] for r in stored["rows"]] == [0.85, 0.88, 0.95, 0.99]
    early = stored["summary"]["8"]
    # 8 calibration frames: the point rule stops at a true share of 0.85-0.88 in a good part of the trials;
    # no bound on about 8 frames can reach 0.9 (Wilson's 8/8 is 0.83), so the bound never stops
    assert early["point"]["too_early"] > 0.2 and early["wilson"]["too_early"] == 0.0
    assert result["rows"][-1]["point"] > 0.9  # at 0.99 the point rule stops


def test_the_calibrated_share_follows_the_true_share(bench):
    import numpy as np

    rng = np.random.default_rng(3)
    for p in (0.8, 0.95):
        out = bench.decide_once(p, 300, 80, 300, rng, 0.2, 0.9, 0.9)
        assert abs(out["p_hat"].mean() - p) < 0.03
