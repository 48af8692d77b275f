"""The DP-GEN side-by-side benchmark (benchmarks/peer_dpgen.py) without running DP-GEN: its scoring on
small stored results, its readers of DP-GEN's files (dpgen.log, the timed commands), the peer venv's seed
fix, and the one-line answer when the peer environment is missing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from project_module import load_module

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "test_data" / "peer_dpgen"
PEER = ROOT / "benchmarks" / "peers" / "dpgen"


@pytest.fixture(scope="module")
def bench():
    return load_module("benchmarks/peer_dpgen.py")


@pytest.fixture(scope="module")
def stored():
    return json.loads((DATA / "peer_dpgen.json").read_text())


def _crossing(x0, f0, x1, f1, target):
    return x0 + (math.log(f0) - math.log(target)) / (math.log(f0) - math.log(f1)) * (x1 - x0)


def test_summary_target_labels_hours_and_equal_labels(bench, stored):
    summary = bench.summarise(stored["runs"], conv_accuracy=0.95)["cu"]
    # the shared target is the worse of the two tools' mean final errors: DP-GEN's (0.05 + 0.07) / 2
    assert summary["target_force_rmse"] == pytest.approx(0.06)
    assert summary["final_force_rmse"]["almat"] == pytest.approx(0.03)
    runs = {(r["tool"], r["seed"]): r for r in summary["runs"]}
    almat, dp0, dp1 = runs["almat", 0], runs["dpgen", 0], runs["dpgen", 1]
    assert almat["labels_to_target"] == pytest.approx(_crossing(16, 0.08, 32, 0.04, 0.06))
    assert almat["hours_to_target"] == pytest.approx(_crossing(0.01, 0.08, 0.02, 0.04, 0.06))
    assert dp0["labels_to_target"] == pytest.approx(_crossing(24, 0.10, 32, 0.05, 0.06))
    assert dp1["labels_to_target"] is None  # its final 0.07 never reaches 0.06
    # equal labels: the smallest final oracle-call count of all runs (DP-GEN's 32)
    assert summary["equal_labels"] == 32
    assert almat["rmse_at_equal_labels"] == pytest.approx(0.04)
    assert dp1["rmse_at_equal_labels"] == pytest.approx(0.07)
    # the mean over seeds leaves out the run that never reached the target
    assert summary["means"]["dpgen"]["labels_to_target"] == pytest.approx(dp0["labels_to_target"])
    assert summary["means"]["dpgen"]["final_force_rmse_std"] == pytest.approx(0.01)


def test_stop_rules(bench, stored):
    summary = bench.summarise(stored["runs"], conv_accuracy=0.95)["cu"]
    runs = {(r["tool"], r["seed"]): r for r in summary["runs"]}
    # almat stops at its first calibrated convergence, DP-GEN at an accurate ratio >= 0.95
    assert runs["almat", 0]["stop"] == {"iteration": 1, "oracle_calls": 32, "force_rmse": 0.04}
    assert runs["dpgen", 0]["stop"] == {"iteration": 2, "oracle_calls": 32, "force_rmse": 0.05}
    assert runs["dpgen", 1]["stop"] is None
    loose = bench.summarise(stored["runs"], conv_accuracy=0.5)["cu"]
    assert {(r["tool"], r["seed"]): r["stop"]["iteration"] for r in loose["runs"]}[("dpgen", 1)] == 2
    table = bench.format_table(bench.summarise(stored["runs"]))
    assert "| cu (target 0.060) | almat | 0.030 |" in table
    assert "never" in table


def test_interpolation_edges(bench):
    assert bench.interpolate_labels([10, 20], [0.05, 0.04], 0.06) == 10.0  # already below at the first point
    assert bench.interpolate_labels([10, 20], [0.09, 0.08], 0.06) is None
    assert bench.error_at([10, 20], [0.1, 0.05], 5) is None  # outside the curve
    assert bench.error_at([10, 20], [0.1, 0.05], 15) == pytest.approx(math.sqrt(0.1 * 0.05))


def test_dpgen_log_and_timed_commands(bench):
    runs = bench.dpgen_runs
    ratios = runs.accurate_ratios(DATA)  # summed over the systems of each iteration
    assert [r["accurate_ratio"] for r in ratios] == pytest.approx([66 / 100, 60 / 62])
    assert ratios[0]["candidate_ratio"] == pytest.approx(32 / 100) and ratios[0]["n_frames_explored"] == 100
    assert ratios[0]["failed_ratio"] == pytest.approx(2 / 100) and ratios[1]["failed_ratio"] == 0
    records = runs.cpu_records(DATA)
    assert [r["stage"] for r in records] == ["train", "train", "train", "model_devi", "fp", "fp", "train"]
    assert records[3]["cpu_s"] == pytest.approx(62.25 + 0.75)
    assert records[5]["rc"] == 1
    assert [len(i) for i in runs.split_iterations(records)] == [6, 1]
    # busy: [100,170] [172,180] [190,200] [205,208] [210,260] = 141 s of 160 s
    assert runs.idle_seconds(records, 100.0, 260.0) == pytest.approx(19.0)
    assert runs.idle_seconds(records, 100.0, 190.0) == pytest.approx(12.0)


def test_cpu_time_of_a_freeze_run_with_exec(bench, tmp_path):
    # the old timed.sh: the freeze's record held the training's CPU time too (bash exec keeps the children's
    # time); the current one logs the freeze's own, far less than the training's
    (tmp_path / "cpu.log").write_text(
        "/r/t/000 100.0 200.0 1m31.000s 0m22.000s 0 dp --pt train input.json\n"
        "/r/t/000 200.5 220.0 1m39.500s 0m23.500s 0 dp --pt freeze\n"
        "/r/u/000 300.0 400.0 1m30.000s 0m20.000s 0 dp --pt train input.json\n"
        "/r/u/000 400.5 420.0 0m8.000s 0m1.000s 0 dp --pt freeze\n")
    assert [r["cpu_s"] for r in bench.dpgen_runs.cpu_records(tmp_path)] == pytest.approx([113.0, 10.0, 110.0, 9.0])
    # a run stored with the uncorrected sum (dpgen's own 5 s on top) gets its total again, once
    run = {"cpu_s": 5.0 + 113.0 + 123.0 + 110.0 + 9.0, "iterations": []}
    for _ in range(2):
        bench.dpgen_runs.refresh_cpu(run, tmp_path)
        assert run["main_cpu_s"] == pytest.approx(5.0) and run["cpu_s"] == pytest.approx(5.0 + 242.0)


def _timed(tmp_path, script: str) -> list[float]:
    """The user CPU seconds that timed.sh logged for each command of a bash script."""
    log = tmp_path / "cpu.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", script], env={**os.environ, "ALMAT_DPGEN_CPU_LOG": str(log)}, check=False)
    return [float(line.split()[3].split("m")[1].rstrip("s")) for line in log.read_text().splitlines()]


def test_timed_sh_logs_only_its_own_command(tmp_path):
    timed = PEER / "timed.sh"
    burn = f"{sys.executable} -c 'sum(range(3 * 10**7))'"
    # "a && b": bash runs b with exec, so b's shell starts with a's CPU time already counted
    user = _timed(tmp_path, f"bash {timed} {burn} && bash {timed} true")
    assert user[0] > 0.1 and user[1] < 0.05
    assert _timed(tmp_path, f"bash {timed} false; exit 0") == [pytest.approx(0.0, abs=0.05)]


def _draws(tmp_path, seed):
    fake = tmp_path / "dpdispatcher"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("import random\n\ndef submit():\n    random.seed(42)\n    return random.random()\n")
    code = ("import almat_dpgen_hook, random, dpdispatcher\n"
            "a, b = dpdispatcher.submit(), dpdispatcher.submit()\n"
            "random.seed(42)\nprint(a, b, random.random())")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{PEER}"}
    env.pop("ALMAT_DPGEN_SEED", None)
    if seed is not None:
        env["ALMAT_DPGEN_SEED"] = str(seed)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def test_seed_fix(tmp_path):
    import random

    random.seed(42)
    fixed = random.random()
    assert _draws(tmp_path, None) == [fixed, fixed, fixed]  # dpdispatcher's reseed: every submission the same
    a1, b1, own = _draws(tmp_path, 1)
    assert a1 != b1 and fixed not in (a1, b1)  # fresh seeds per submission
    assert own == fixed  # a seed(42) outside dpdispatcher is left alone
    assert _draws(tmp_path, 1)[:2] == [a1, b1]  # reproducible for one benchmark seed
    assert _draws(tmp_path, 2)[:2] != [a1, b1]  # and different across benchmark seeds


def test_missing_peer_environment(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPGEN_VENV", str(tmp_path / "none"))
    assert bench.main(["--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "benchmarks/peers/dpgen/setup.sh" in err[0]
    assert not (tmp_path / "out").exists()


def test_rescore_writes_table_and_plot(bench, tmp_path, capsys):
    (tmp_path / "peer_dpgen.json").write_text((DATA / "peer_dpgen.json").read_text())
    assert bench.main(["--rescore", str(tmp_path)]) == 0
    assert "| cu (target 0.060) | dpgen |" in capsys.readouterr().out
    assert (tmp_path / "peer_dpgen.png").stat().st_size > 10_000


def test_label_counts_from_dpgen_folders(bench, tmp_path):
    import numpy as np

    fp = tmp_path / "iter.000000" / "02.fp"
    (fp / "data.000" / "Cu32" / "set.000").mkdir(parents=True)  # dpgen nests the system one level down
    np.save(fp / "data.000" / "Cu32" / "set.000" / "energy.npy", np.zeros(3))
    for k in range(4):  # 4 oracle calls, one of them failed (3 labels came back)
        (fp / f"task.000.{k:06d}").mkdir()
    (tmp_path / "iter.000001" / "00.train").mkdir(parents=True)
    assert bench.dpgen_runs.label_counts(tmp_path, 16) == [(16, 16), (19, 20)]


#: iteration 0's max force deviations (eV/Å) of two MD walkers, in step order (stored small numbers)
WALKERS = [[0.010, 0.020, 0.050, 0.080, 0.300], [0.015, 0.040, 0.120, 0.500, 0.030]]


def test_candidate_fraction_with_and_without_the_walker_stop(bench):
    # lo <= dev < hi is a candidate, dev >= hi failed; LAMMPS (DP-GEN) runs on past a failed frame
    assert bench.candidate_fraction(WALKERS, 0.06, 0.18, stop_at_hi=False) == (0.2, 0.2, 10)
    # almat stops a walker at its first failed frame: the 0.03 after the 0.5 is never explored
    cand, failed, n = bench.candidate_fraction(WALKERS, 0.06, 0.18, stop_at_hi=True)
    assert (cand, failed, n) == (pytest.approx(2 / 9), pytest.approx(2 / 9), 9)


def test_tune_trust_picks_the_largest_lo_that_reaches_the_target(bench):
    # lo is tried between recorded deviations, from the top: 0.387 -> 10 %, 0.190 -> 20 %, 0.098 -> 10 %
    # (0.12 candidate, 0.3 and 0.5 beyond hi = 3 lo), 0.063 -> 20 %, then sqrt(0.05 * 0.04) -> 30 %
    t = bench.tune_trust(WALKERS, 0.25, ratio=3.0)
    assert t["lo"] == pytest.approx(math.sqrt(0.05 * 0.04)) and t["hi"] == pytest.approx(3 * t["lo"])
    assert (t["candidate_fraction"], t["failed_fraction"], t["n_frames"], t["reached"]) == (0.3, 0.2, 10, True)
    # 33 %: DP-GEN's frames need a lower lo (30 % at sqrt(0.04 * 0.03) and sqrt(0.03 * 0.02), 40 % at
    # sqrt(0.02 * 0.015)); almat's walkers, which stop at their first failed frame, already reach 3 of 9
    # at sqrt(0.05 * 0.04)
    assert bench.tune_trust(WALKERS, 0.33, 3.0)["lo"] == pytest.approx(math.sqrt(0.02 * 0.015))
    almat = bench.tune_trust(WALKERS, 0.33, 3.0, stop_at_hi=True)
    assert almat["lo"] == pytest.approx(math.sqrt(0.05 * 0.04)) and almat["candidate_fraction"] == pytest.approx(3 / 9)
    # the probe's own hi bounds the tuned one: 3 x 0.0447 = 0.134 > 0.12, so the next lo down
    capped = bench.tune_trust(WALKERS, 0.33, 3.0, stop_at_hi=True, hi_max=0.12)
    assert capped["lo"] == pytest.approx(math.sqrt(0.04 * 0.03))
    assert capped["candidate_fraction"] == pytest.approx(3 / 8)
    assert capped["hi"] <= 0.12


def test_tune_trust_when_the_target_cannot_be_reached(bench):
    # hi = 3 lo never holds 90 % of these frames: the largest fraction (40 %), at the largest such lo
    t = bench.tune_trust(WALKERS, 0.9, 3.0)
    assert t["reached"] is False and t["candidate_fraction"] == pytest.approx(0.4)
    assert t["lo"] == pytest.approx(math.sqrt(0.02 * 0.015))
    assert bench.tune_trust([], 0.25, 3.0) is None


def test_trust_file_per_tool(bench):
    runs = [{"tool": "almat", "problem": "cu", "seed": 0, "iteration0_deviations": WALKERS,
             "trust": {"trust_lo": 0.06, "trust_hi": 1.2}, "iterations": [{"candidate_ratio": 0.1}]},
            {"tool": "dpgen", "problem": "cu", "seed": 0, "iteration0_deviations": WALKERS, "iterations": []},
            {"tool": "dpgen", "problem": "cu", "seed": 1, "iteration0_deviations": [[0.9, 0.9]], "iterations": []}]
    trust = bench.trust_file({"runs": runs}, 0.25)["problems"]["cu"]
    # DP-GEN: its documented ratio 0.15 / 0.05 = 3 (the seed-1 run is no probe)
    assert trust["dpgen"]["lo"] == pytest.approx(math.sqrt(0.05 * 0.04)) and trust["dpgen"]["ratio"] == pytest.approx(3)
    # almat: ratio 0.40 / 0.06; hi at most the probe's 1.2, so lo starts at sqrt(0.12 * 0.08) (hi 0.65):
    # 0.12, 0.3 and 0.5 are candidates, 30 % of 10 frames
    assert trust["almat"]["lo"] == pytest.approx(math.sqrt(0.12 * 0.08))
    assert trust["almat"]["hi"] == pytest.approx(trust["almat"]["lo"] * 0.40 / 0.06)
    assert trust["almat"]["candidate_fraction"] == pytest.approx(0.3) and trust["almat"]["probe_candidate_ratio"] == 0.1
    # the foundation start keeps its calibrated levels; iteration 0's lo is adaptive to the target
    assert trust["almat-foundation"] == {"lo": 0.06, "hi": 0.40, "units": "calibrated", "documented": [0.06, 0.40],
                                         "iteration0_fraction": 0.25}
    assert "0.0980/0.6532 eV/Å (documented 0.06/0.4): 30% candidates" in bench.format_trust(
        bench.trust_file({"runs": runs}, 0.25))


def test_campaign_files_of_the_almat_tools(bench):
    import almat_side

    from almat.campaign.config import load_config

    problem, cfg = bench.peer_data.PROBLEMS["cu"], bench.settings(quick=True)
    scratch, found = (almat_side.campaign_config(problem, cfg, 0, tool) for tool in bench.ALMAT_TOOLS)
    assert scratch["sampler"]["trust_lo"] == 0.06 and "trust_units" not in scratch["sampler"]
    assert found["learner"]["kind"] == "chgnet-finetune" and found["sampler"]["trust_units"] == "calibrated"
    assert found["name"] != scratch["name"]
    for tool in bench.ALMAT_TOOLS:  # a benchmark seed seeds the committee's members too, not only MD and selection
        seeded = load_config(almat_side.campaign_config(problem, cfg, 2, tool))
        assert seeded.learner.seed == 2 and seeded.sampler.seed == 2 and seeded.selection.seed == 2
    cfg["trust"] = {"problems": {"cu": {"almat": {"lo": 0.03, "hi": 0.2, "units": "raw"},
                                        "almat-foundation": {"lo": 0.06, "hi": 0.4, "units": "calibrated",
                                                             "iteration0_fraction": 0.25},
                                        "dpgen": {"lo": 0.054, "hi": 0.162, "units": "raw"}}}}
    tuned = load_config(almat_side.campaign_config(problem, cfg, 0, "almat"))
    assert (tuned.sampler.trust_lo, tuned.sampler.trust_hi) == (0.03, 0.2)
    stages = load_config(almat_side.campaign_config(problem, cfg, 0, "almat-foundation")).sampler.stage_list()
    assert stages[0].adaptive_lo.fraction == 0.25 and stages[1].adaptive_lo is None  # iteration 0 only
    assert bench.dpgen_runs.trust_levels(problem, cfg) == (0.054, 0.162)
    assert bench.dpgen_runs.trust_levels(problem, bench.settings(quick=True)) == (0.05, 0.15)
    cfg["almat_adaptive_lo"] = 0.3  # --almat-adaptive-lo: every stage of almat's campaign, not the foundation's
    adaptive = load_config(almat_side.campaign_config(problem, cfg, 0, "almat")).sampler.stage_list()
    assert [st.adaptive_lo.fraction for st in adaptive] == [0.3, 0.3]
    stages = load_config(almat_side.campaign_config(problem, cfg, 0, "almat-foundation")).sampler.stage_list()
    assert stages[0].adaptive_lo.fraction == 0.25 and stages[1].adaptive_lo is None


def test_summary_with_the_foundation_start(bench, stored):
    found = {"tool": "almat-foundation", "problem": "cu", "seed": 0, "iterations": [
        {"iteration": 0, "train_labels": 16, "oracle_calls": 16, "force_rmse": 0.07, "wall_s_cumulative": 72.0,
         "converged": False},
        {"iteration": 1, "train_labels": 24, "oracle_calls": 32, "force_rmse": 0.02, "wall_s_cumulative": 144.0,
         "converged": True}]}
    summary = bench.summarise(stored["runs"] + [found])["cu"]
    # the target stays the worse of almat's and DP-GEN's final errors, not the foundation's 0.02
    assert summary["target_force_rmse"] == pytest.approx(0.06)
    run = next(r for r in summary["runs"] if r["tool"] == "almat-foundation")
    assert run["labels_to_target"] == pytest.approx(_crossing(16, 0.07, 32, 0.02, 0.06))
    assert run["hours_to_target"] == pytest.approx(_crossing(0.02, 0.07, 0.04, 0.02, 0.06))
    assert run["stop"] == {"iteration": 1, "oracle_calls": 32, "force_rmse": 0.02}  # its calibrated stop
    assert "| cu (target 0.060) | almat-foundation | 0.020 |" in bench.format_table(bench.summarise(
        stored["runs"] + [found]))
    # run alone, the foundation start sets its own target
    assert bench.summarise([found])["cu"]["target_force_rmse"] == pytest.approx(0.02)


def test_bad_tuning_arguments(bench, tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"runs": []}')
    for argv, key in ((["--trust", str(tmp_path / "results.json")], "--trust"),
                      (["--trust", str(tmp_path / "none.json")], "--trust"),
                      (["--target-fraction", "1.5"], "--target-fraction"),
                      (["--data-jobs", "0"], "--data-jobs"),
                      (["--almat-adaptive-lo", "0"], "--almat-adaptive-lo")):
        with pytest.raises(SystemExit) as exc:
            bench.main([*argv, "--tools", "almat", "--out", str(tmp_path / "out")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"error: {key}:" in err[-1]
    assert not (tmp_path / "out").exists()


def test_deepmd_size_and_control_sizes_reach_the_run(bench, tmp_path, monkeypatch):
    seen = {}

    def fake_run_all(cfg, out, tools, log=print):
        seen.update(cfg)
        return {"summary": {}, "failures": []}

    monkeypatch.setattr(bench, "run_all", fake_run_all)
    monkeypatch.setattr(bench, "peer_python", lambda: Path(sys.executable))
    assert bench.main(["--problems", "cu", "--deepmd", "small", "--control-sizes", "final",
                       "--out", str(tmp_path / "out")]) == 0
    assert seen["deepmd"]["numb_steps"] == 3000 and seen["deepmd"]["stop_lr"] == 1e-5
    assert seen["deepmd"]["neuron"] == [10, 20, 40] and seen["control_sizes"] == "final"
    seen.clear()
    assert bench.main(["--problems", "cu", "--out", str(tmp_path / "out")]) == 0
    assert seen["deepmd"]["numb_steps"] == 20000 and seen["control_sizes"] == "all"  # the full run's defaults
    with pytest.raises(SystemExit):
        bench.main(["--deepmd", "huge", "--out", str(tmp_path / "out")])


def test_table_shows_the_spread_over_seeds_and_seeds_that_missed(bench, stored):
    # stored: DP-GEN seed 0 ends at 0.05 eV/Å, seed 1 at 0.07, above the shared target (their mean, 0.06)
    summary = bench.summarise(stored["runs"])
    dpgen = summary["cu"]["means"]["dpgen"]
    assert dpgen["labels_to_target_seeds"] == [1, 2] and dpgen["final_force_rmse_seeds"] == [2, 2]
    rows = bench.format_table(summary).splitlines()
    row = next(line for line in rows if "| dpgen |" in line)
    assert f"| {np.mean([0.05, 0.07]):.3f} ± {np.std([0.05, 0.07]):.3f} |" in row
    assert "(1 of 2 seeds)" in row
    almat = next(line for line in rows if "| almat |" in line)
    assert "±" not in almat and "seeds)" not in almat  # one seed: no spread to show


def _part(folder: Path, stored, runs, frames: str) -> Path:
    """A result folder with some of the stored runs and its own copy of the shared frames."""
    (folder / "data" / "cu").mkdir(parents=True)
    for name in ("initial_0", "test_0"):
        (folder / "data" / "cu" / f"{name}.extxyz").write_text(f"{name} {frames}\n")
    part = {**stored, "runs": runs, "data": {"cu": {"folder": str(folder / "data" / "cu")}},
            "versions": {"dpgen:dpgen": "0.14.0"}}
    (folder / "peer_dpgen.json").write_text(json.dumps(part))
    return folder


def test_merge_parts_of_one_run(bench, stored, tmp_path, capsys):
    almat, dpgen0, dpgen1 = stored["runs"]
    better = json.loads(json.dumps(dpgen0))
    better["iterations"][-1]["force_rmse"] = 0.04  # a rerun of DP-GEN seed 0 in the second part
    first = _part(tmp_path / "a", stored, [almat, dpgen0], "same")
    second = _part(tmp_path / "b", stored, [better, dpgen1], "same")
    assert bench.main(["--merge", str(first), str(second), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "peer_dpgen.json").read_text())
    assert sorted((r["tool"], r["seed"]) for r in merged["runs"]) == [("almat", 0), ("dpgen", 0), ("dpgen", 1)]
    assert next(r for r in merged["runs"] if (r["tool"], r["seed"]) == ("dpgen", 0))["iterations"][-1][
        "force_rmse"] == 0.04  # the later part's run replaced the earlier one
    assert merged["settings"]["merged_from"] == [str(first), str(second)]
    assert "| cu (target " in capsys.readouterr().out and (tmp_path / "m" / "peer_dpgen.png").exists()
    other = _part(tmp_path / "c", stored, [dpgen1], "other")  # scored on other test frames: refused
    variant = _part(tmp_path / "d", stored, [almat], "same")  # almat with --almat-adaptive-lo: refused too
    data = json.loads((variant / "peer_dpgen.json").read_text())
    data["settings"] = {**data["settings"], "almat_adaptive_lo": 0.25}
    (variant / "peer_dpgen.json").write_text(json.dumps(data))
    for argv in (["--merge", str(first), str(other), "--out", str(tmp_path / "n")], ["--merge", str(first)],
                 ["--merge", str(first), str(variant), "--out", str(tmp_path / "n")]):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2
        assert "error: --merge:" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "n").exists()


def test_shared_frames_do_not_depend_on_the_number_of_processes(bench, tmp_path):
    """The oracle MD of the shared frames in 2 spawned processes writes the same frames as in one."""
    import dataclasses

    problem = dataclasses.replace(bench.peer_data.PROBLEMS["cu"], schedule=bench.peer_data.PROBLEMS["cu"].schedule[:1],
                                  n_initial=2, n_test_per_condition=2, n_pool_per_condition=2)
    logged, logged_one = [], []
    one = bench.peer_data.write_data(problem, tmp_path / "one", quick=False, log=logged_one.append, jobs=1)
    two = bench.peer_data.write_data(problem, tmp_path / "two", quick=False, log=logged.append, jobs=2)
    assert logged_one[-1].endswith("2 of 2 sets done")  # progress in one process too
    assert [len(s) for s in two.test] == [4] and [len(s) for s in two.pool] == [4]  # 2 temperatures x 2 frames
    for a, b in zip(one.test[0] + one.pool[0], two.test[0] + two.pool[0]):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
    assert not np.allclose(one.test[0][0].positions, one.pool[0][0].positions)  # the two sets have their own seeds
    assert logged[-1].endswith("2 of 2 sets done")
    assert bench.frames_digest(tmp_path / "one") == bench.frames_digest(tmp_path / "two")
