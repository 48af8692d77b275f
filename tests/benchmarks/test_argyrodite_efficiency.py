"""The argyrodite label-efficiency benchmark (benchmarks/argyrodite_efficiency.py): its scoring on small stored
numbers, its cells, and a smoke run of its quick mode (GFN1-xTB oracle MD, every method)."""

import json
import math

import numpy as np
import pytest
from project_module import load_module



def _bench():
    return load_module("benchmarks/argyrodite_efficiency.py")


def _run(method, seed, n_labels, rmse):
    return {"method": method, "seed": seed, "n_labels": n_labels, "force_rmse": rmse}


RUNS = [
    _run("committee", 0, [8, 14, 20], [0.40, 0.20, 0.10]),
    _run("committee", 1, [8, 14, 20], [0.40, 0.25, 0.125]),
    _run("random-md", 0, [8, 14, 20, 26], [0.40, 0.30, 0.2, 0.15]),
    _run("random-md", 1, [8, 14, 20, 26], [0.50, 0.30, 0.25, 0.125]),
    _run("random-explored", 0, [8, 14, 20, 26], [0.40, 0.30, 0.2, 0.125]),
    _run("foundation", 0, [8, 14, 20], [0.125, 0.1, 0.09]),
]


def test_summary_sets_the_target_from_the_committee_and_bounds_the_ratios():
    bench = _bench()
    summary = bench.summarise([dict(r) for r in RUNS])
    assert summary["target_force_rmse"] == 0.125  # the worst final RMSE of the committee seeds
    per = summary["per_method"]
    assert per["committee"]["reached"] == 2
    # seed 0 crosses 0.125 between 14 labels (0.2) and 20 (0.1), in log RMSE; seed 1 at its last point
    seed0 = 14 + 6 * math.log(0.2 / 0.125) / math.log(0.2 / 0.1)
    assert per["committee"]["mean_labels_to_target"] == pytest.approx((seed0 + 20) / 2)
    # random-md: seed 1 reaches it at its last point, seed 0 never (counts as 26: a lower bound)
    assert per["random-md"]["reached"] == 1 and per["random-md"]["labels_bound"] == pytest.approx(26.0)
    assert per["foundation"]["mean_labels_to_target"] == 8.0
    ratios = summary["ratios"]
    assert ratios["random-md/committee"]["bound"] == "lower bound"
    assert ratios["random-md/committee"]["ratio"] == pytest.approx(26 / ((seed0 + 20) / 2))
    assert ratios["random-md/committee"]["met"] is None  # 1.4 < 5, but only a lower bound: undecided
    assert ratios["random-explored/committee"]["bound"] == "exact"
    assert ratios["random-explored/committee"]["met"] is False
    assert ratios["committee/foundation"]["ratio"] == pytest.approx((seed0 + 20) / 2 / 8)
    # the foundation reached the target at its first point: it may have needed fewer labels
    assert per["foundation"]["at_first_point"] and ratios["committee/foundation"]["bound"] == "lower bound"
    assert ratios["committee/foundation"]["met"] is None  # 1.8 < 3, a lower bound: undecided
    assert "random-md/shallow" not in ratios  # no shallow runs
    # error at equal labels: geometric mean over the seeds at the label counts every seed has
    at = summary["rmse_at_labels"]
    assert at["committee"]["20"] == pytest.approx(math.sqrt(0.10 * 0.125))
    assert set(at["random-md"]) == {"8", "14", "20", "26"}


def test_a_fixed_target_that_nothing_reaches_gives_no_verdict():
    bench = _bench()
    summary = bench.summarise([dict(r) for r in RUNS], target=0.01)
    assert summary["target_rule"] == "fixed"
    assert all(s["reached"] == 0 for s in summary["per_method"].values())
    assert all(r["bound"] == "undetermined" and r["met"] is None for r in summary["ratios"].values())
    table = bench.format_table(summary)
    assert "| committee | 0/2 | > 20.0 |" in table


def test_the_target_needs_committee_runs():
    bench = _bench()
    with pytest.raises(ValueError, match="no committee runs"):
        bench.summarise([dict(RUNS[2])])


def test_base_sets_are_per_seed_and_the_same_for_every_method():
    bench = _bench()
    a, b = bench.base_indices(40, 4, 0), bench.base_indices(40, 4, 1)
    assert a == bench.base_indices(40, 4, 0) and a != b
    assert len(set(a)) == 4 and all(0 <= i < 40 for i in a)


def test_cells_two_sizes_and_the_doubled_cell_mixes_two_orderings():
    bench = _bench()
    small, other, mixed = bench.make_cells([[0], [3], [0, 3]])
    assert len(small) == len(other) == 13 and len(mixed) == 26
    assert mixed.get_chemical_formula() == "Cl2Li12P2S10"
    assert np.allclose(mixed.cell[0], 2 * small.cell[0])
    doubled = small.repeat((2, 1, 1))

    def li(a):
        return np.sort(np.round(a.positions[a.numbers == 3] @ np.linalg.inv(mixed.cell) % 1, 3), axis=0)

    assert not np.allclose(li(mixed), li(doubled))  # the second half carries ordering 3, not 0
    assert mixed.info["cell_name"] == "r0+r3"


def test_every_method_names_a_known_learner_and_acquisition_and_unknown_ones_are_refused(capsys):
    from almat.learner.registry import UNCERTAINTY_KINDS
    from almat.select.lookup import acquisition_policy

    bench = _bench()
    for name, spec in bench.METHODS.items():
        assert spec["learner"] in {"committee", "chgnet", *UNCERTAINTY_KINDS}, name
        assert acquisition_policy(spec["acquisition"]) is not None and spec["pool"] in ("explored", "oracle-md")
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--methods", "committee,psychic"])
    assert "unknown method(s) ['psychic']; valid:" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_mode_runs_and_writes_finite_learning_curves(tmp_path):
    bench = _bench()
    settings = bench.BenchSettings.quick()
    settings.jobs = 1
    # the benchmark's own paths: oracle-MD snapshots, a committee's exploration and acquisition, the trust window
    # with the diverse policy, stress labels, a single-model learner (foundation, shallow and random-explored
    # add only a learner or an acquisition name, each tested where almat defines it)
    settings.methods = ["committee", "random-md", "committee-window", "committee-stress", "llpr"]
    result = bench.run_benchmark(settings, tmp_path / "out", cache=tmp_path / "cache", log=lambda msg: None)
    saved = json.loads((tmp_path / "out" / "argyrodite_efficiency.json").read_text())
    assert saved["complete"] is True
    assert (tmp_path / "out" / "argyrodite_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    # the test set: oracle MD at every condition of every cell, one cache file each
    assert saved["test_size"] == len(settings.data.cells) * len(settings.data.conditions) * settings.data.test_frames
    assert len(list((tmp_path / "cache").rglob("*.extxyz"))) == len(settings.data.cells) * 4
    assert [r["method"] for r in saved["runs"]] == settings.methods
    for run in saved["runs"]:
        # the base set, then one point per iteration, each after a fresh exploration (or snapshot draw)
        assert run["n_labels"][0] == settings.n_base
        assert len(run["n_labels"]) == len(run["force_rmse"]) == len(run["explored"]) + 1 >= 3
        # an iteration whose walkers all stopped at their first frame (beyond trust_hi) has nothing to label
        assert all(0 <= b - a <= settings.budget for a, b in zip(run["n_labels"], run["n_labels"][1:]))
        assert all(np.isfinite(f) and f > 0 for f in run["force_rmse"])
    explored = [r for r in saved["runs"] if r["method"] != "random-md"]
    assert all(r["oracle_calls"] == r["n_labels"][-1] - settings.n_base for r in explored)
    committee = next(r for r in saved["runs"] if r["method"] == "committee")
    assert committee["oracle_calls"] > 0 and min(committee["explored"]) > 0
    random_md = next(r for r in saved["runs"] if r["method"] == "random-md")
    assert random_md["oracle_calls"] == 0 and random_md["explored"][0] == saved["snapshot_pool_size"] - settings.n_base
    assert set(saved["per_method"]) == set(settings.methods)
    assert "random-md/committee" in saved["ratios"] and saved["target_force_rmse"] > 0
    # a second run reads the cached oracle MD: the same test set, with its labels, from every condition
    again = bench.oracle_data(settings.data, 1, tmp_path / "cache", log=lambda msg: None)
    assert {(a.info["cell_name"], a.info["condition"]) for a in again["test"]} == {
        (c, k) for c in ("r0", "r3") for k in bench.CONDITIONS}
    assert all(np.isfinite(a.get_forces()).all() for a in again["test"])
    assert again["meta"]["oracle_md_steps"] == saved["data"]["oracle_md_steps"]
    assert result["target_force_rmse"] == saved["target_force_rmse"]


def test_a_ratio_is_exact_or_a_bound_and_says_whether_it_meets_the_goal():
    bench = _bench()

    def method(labels, reached=2, first=False):
        return {"labels_bound": labels, "reached": reached, "seeds": 2, "at_first_point": first}

    assert bench._ratio(method(30), method(10), 3.0) == {"ratio": 3.0, "bound": "exact", "issue_target": 3.0,
                                                         "met": True}
    assert bench._ratio(method(20, reached=1), method(10), 3.0)["bound"] == "lower bound"  # more than 20
    upper = bench._ratio(method(20), method(10, reached=0), 3.0)  # the denominator needs more than 10
    assert upper["bound"] == "upper bound" and upper["met"] is False
    assert bench._ratio(method(20, first=True), method(10, reached=0), 1.0)["bound"] == "upper bound"
    both = bench._ratio(method(20, reached=1), method(10, reached=0), 3.0)
    assert both["bound"] == "undetermined" and both["met"] is None


def _labelled_cu(n, seed):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    bench = _bench()
    frames = []
    for k in range(n):
        a = bulk("Cu", cubic=True)
        a.rattle(0.05, seed=seed + k)
        a.calc = EMT()
        frames.append(bench._labelled_copy(a, stress=True, condition=f"c{k % 2}"))
    return frames


def test_random_md_draws_unused_snapshots_whose_labels_come_with_the_md():
    bench = _bench()
    snaps = _labelled_cu(6, 0)
    data = {"snapshots": snaps}
    frames, oracle = bench.candidates("random-md", None, 1, 0, data, [0, 2], {4}, bench.BenchSettings())
    assert [f.info["snapshot"] for f in frames] == [1, 3, 5]  # not the base set, not what was drawn before
    labelled = oracle(frames[:2])
    assert np.array_equal(labelled[1].get_forces(), snaps[3].get_forces())
    assert labelled[0].get_potential_energy() == snaps[1].get_potential_energy()
    assert "stress" in snaps[0].calc.results and snaps[0].get_stress().shape == (6,)


def test_xtb_labels_carry_energy_forces_and_stress():
    bench = _bench()
    cell = bench.make_cells([[0]])[0]
    cell.rattle(0.02, seed=1)
    (label,) = bench.xtb_labels([cell])
    assert label is not cell and np.isfinite(label.get_forces()).all()
    assert label.get_forces().shape == (13, 3) and np.abs(label.get_forces()).max() > 0.01
    assert label.get_stress().shape == (6,) and np.isfinite(label.get_stress()).all()


def test_resume_keeps_the_runs_of_the_same_settings_only(tmp_path):
    bench = _bench()
    settings = bench.BenchSettings.quick()
    saved = {"settings": json.loads(json.dumps(bench.asdict(settings))), "runs": [dict(RUNS[0])]}
    (tmp_path / "argyrodite_efficiency.json").write_text(json.dumps(saved))
    assert bench._previous_runs(tmp_path, settings) == [RUNS[0]]
    settings.seeds = [0, 1]  # more seeds or other methods: the finished runs still count
    assert bench._previous_runs(tmp_path, settings) == [RUNS[0]]
    settings.budget += 1  # another budget: another benchmark
    assert bench._previous_runs(tmp_path, settings) == []
    assert bench._previous_runs(tmp_path / "nothing", settings) == []


def test_oracle_md_snapshots_cost_the_md_steps_behind_them():
    bench = _bench()
    spec = bench.DataSpec(burn_in=20, snapshot_frames=5, snapshot_every=5)
    # snapshot 0: first of trajectory 0 (20 + 5 steps); snapshot 7: third of trajectory 1 (20 + 15)
    assert bench.oracle_md_cost([[0, 7]], spec) == [60]
    # then snapshot 4, the last of trajectory 0: that trajectory now costs 20 + 25; trajectory 1 is unchanged
    assert bench.oracle_md_cost([[0, 7], [0, 7, 4]], spec) == [60, 80]
    # snapshot 1 lies before snapshot 4 on a trajectory already run that far: it costs nothing more
    assert bench.oracle_md_cost([[0, 7, 4], [1]], spec) == [80, 80]


def test_labels_and_oracle_calls_give_separate_ratios():
    bench = _bench()
    runs = [dict(r) for r in RUNS[:4]]
    for r in runs[2:]:  # random-md: 5 MD steps behind every snapshot
        r["oracle_calls_curve"] = [5 * n for n in r["n_labels"]]
    summary = bench.summarise(runs)
    by_labels = summary["ratios"]["random-md/committee"]
    by_calls = summary["ratios_by_oracle_calls"]["random-md/committee"]
    assert by_calls["ratio"] == pytest.approx(5 * by_labels["ratio"])
    assert summary["by_oracle_calls"]["committee"] == summary["per_method"]["committee"]  # AL: a call is a label
    table = bench.format_table(summary)
    assert "| random-md/committee |" in table and "oracle calls to target" in table


def test_a_trust_window_picks_among_its_candidates_and_falls_back_to_random():
    bench = _bench()
    frames = _labelled_cu(8, 10)
    for a, d in zip(frames, [0.01, 0.2, 0.05, 0.7, 0.3, 0.02, 0.9, 0.45]):
        a.info["deviation"] = d
    spec = {"acquisition": "random", "window": (0.1, 0.5)}
    picks = bench._pick(frames, spec, 2, None, 1, np.random.default_rng(0), [])
    assert len(picks) == 2 and set(picks) <= {1, 4, 7}  # deviations 0.2, 0.3, 0.45: the candidates
    assert sorted(bench._pick(frames, spec, 5, None, 1, np.random.default_rng(0), [])) == [1, 4, 7]
    # no candidate: the guard picks randomly among every explored frame
    nothing = {"acquisition": "random", "window": (0.95, 1.0)}
    assert len(bench._pick(frames, nothing, 3, None, 1, np.random.default_rng(0), [])) == 3
