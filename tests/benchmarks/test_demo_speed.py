"""benchmarks/demo_speed.py: its phase table from JobStore documents (a small campaign of two runs, another
campaign's jobs beside it), without running a campaign."""

from datetime import datetime, timedelta

import pytest
from project_module import load_module

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture(scope="module")
def bench():
    return load_module("benchmarks/demo_speed.py")


def _job(seconds, role, root, output=None, flow="sub"):
    return {"completed_at": (T0 + timedelta(seconds=seconds)).isoformat(), "metadata": {"almat_role": role},
            "hosts": [flow, root], "output": output}


def _docs():
    c = "cu"
    return [
        _job(0, "register", "run1", {"name": c, "setup": {}}, flow="run1"),
        _job(1, "initial", "run1", [{"campaign": c, "iteration": -1}]),
        _job(2, "label", "run1"),  # (the label flow's own job: no output of its own)
        _job(4, "oracle", "run1", {"campaign": c, "iteration": -1}),
        _job(34, "train", "run1", {"campaign": c, "iteration": 0, "wall_time": 29.5}),
        _job(54, "explore", "run1", [{"campaign": c, "iteration": 0}]),
        _job(55, "select", "run1", {"campaign": c, "iteration": 0}),
        _job(57, "oracle", "run1", {"campaign": c, "iteration": 0}),
        _job(60, "decide", "run1", {"campaign": c, "iteration": 0}),
        # another campaign's run, interleaved in time: not counted
        _job(5, "train", "other", {"campaign": "ag", "iteration": 0}, flow="other"),
        _job(58, "explore", "other", [{"campaign": "ag", "iteration": 0}]),
        # a resumed run: its first job counts no time
        _job(500, "train", "run2", {"campaign": c, "iteration": 1}),
        _job(515, "explore", "run2", [{"campaign": c, "iteration": 1}]),
        _job(516, "decide", "run2", {"campaign": c, "iteration": 1}),
    ]


def test_phases_per_iteration(bench):
    result = bench.phase_table(_docs(), "cu")
    its = result["iterations"]
    assert list(its) == [-1, 0, 1]
    assert its[-1] == {"train": 0.0, "explore": 0.0, "label": 3.0, "bookkeeping": 1.0, "total": 4.0,
                       "jobs": {"train": 0, "explore": 0, "label": 2, "bookkeeping": 2}}
    assert (its[0]["train"], its[0]["explore"], its[0]["label"], its[0]["bookkeeping"]) == (30.0, 20.0, 2.0, 4.0)
    assert (its[1]["train"], its[1]["explore"], its[1]["bookkeeping"]) == (0.0, 15.0, 1.0)
    assert result["totals"]["total"] == pytest.approx(4.0 + 56.0 + 16.0)


def test_table_is_markdown_with_totals(bench):
    text = bench.format_table(bench.phase_table(_docs(), "cu"))
    lines = text.splitlines()
    assert lines[0] == "| iteration | train | explore | label | bookkeeping | total (s) |"
    assert lines[2].startswith("| initial | 0.0 | 0.0 | 3.0 | 1.0 | 4.0 |")
    assert lines[3] == "| 0 | 30.0 | 20.0 | 2.0 | 4.0 | 56.0 |"
    assert lines[-1] == "| **all** | **30.0** | **35.0** | **5.0** | **6.0** | **76.0** |"


def test_unknown_campaign_gives_an_empty_table(bench):
    result = bench.phase_table(_docs(), "nope")
    assert result["iterations"] == {} and result["totals"]["total"] == 0.0
