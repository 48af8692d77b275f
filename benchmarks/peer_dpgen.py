"""almat and DP-GEN side by side: the same problem, oracle, initial data, schedule and test frames.

Both tools learn a potential for the same problem from the same oracle-labelled initial frames and explore
the same temperature (and pressure) schedule, one stage per iteration. Each trained committee is scored
on one test set of oracle-driven MD frames (seeded, written once, shared), and every oracle call counts
as a label (calibration labels included). A control trains each model family on random label sets of the
campaigns' sizes, drawn from a pool of oracle MD frames: the difference is what each tool's selection adds.

- ``almat`` runs through its own CLI (``almat run``) in almat's .venv, with the MACE committee from scratch;
- ``almat-foundation`` is the same campaign with CHGNet fine-tuned from its bundled weights
  (``learner.kind: chgnet-finetune``), its trust levels in calibrated units;
- ``dpgen``: DP-GEN 0.14 (DeePMD-kit 3.2 committees explored in LAMMPS) runs in its peer venv, in a
  subprocess: ``bash benchmarks/peers/dpgen/setup.sh`` creates it (benchmarks/peers/dpgen/README.md).

Trust levels are each tool's documented ones, or (``--trust FILE``) tuned to one candidate fraction at
iteration 0: ``--tune-trust`` runs iteration 0 of each tool at seed 0 and writes that file (``tune_trust``).

    python benchmarks/peer_dpgen.py --quick             # Cu32/EMT, 2 iterations each, one seed
    python benchmarks/peer_dpgen.py                     # Cu32/EMT and Li6PS5Cl/GFN1-xTB, 3 seeds
    python benchmarks/peer_dpgen.py --tune-trust        # the probe -> benchmark_results/peer_dpgen_trust/trust.json
    python benchmarks/peer_dpgen.py --trust benchmark_results/peer_dpgen_trust/trust.json   # the tuned run
    python benchmarks/peer_dpgen.py --rescore DIR       # the table again, from DIR/peer_dpgen.json

Writes ``peer_dpgen.json`` and ``peer_dpgen.png`` (test force RMSE against labels and hours) to ``--out``
(default ``benchmark_results/peer_dpgen[_quick]``); every run's files stay under it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "benchmarks" / "peers" / "dpgen"
OUT = ROOT / "benchmark_results"
PEER_HINT = "DP-GEN's peer environment is missing: run  bash benchmarks/peers/dpgen/setup.sh  (about 4 min, 6.3 GB)"

sys.path.insert(0, str(PEER))
sys.path.insert(0, str(ROOT / "benchmarks"))
from curves import error_at  # noqa: E402  (a curve's RMSE at a label count)
import dpgen_runs  # noqa: E402  (the DP-GEN side: param/machine files, running, reading its folders)
import peer_data  # noqa: E402  (problems, initial/test/pool frames, deepmd/npy files)

#: the tools: almat's MACE committee from scratch, almat with a foundation start (CHGNet), DP-GEN
TOOLS = ("almat", "almat-foundation", "dpgen")
ALMAT_TOOLS = ("almat", "almat-foundation")
#: the tools whose mean final errors set the shared target (the worse of the two)
TARGET_TOOLS = ("almat", "dpgen")
#: the candidate fraction at iteration 0 that --tune-trust aims every tool at
TARGET_FRACTION = 0.25
#: the tuning probe's almat trust_hi: this times the documented one, so that its walkers run on past any
#: hi the tuning may choose (almat stops a walker at its first frame beyond hi; LAMMPS runs every step)
PROBE_HI_FACTOR = 3.0

# -- scoring (pure: the unit test runs it on stored results) -------------------------------------------


def interpolate_labels(labels: Sequence[float], rmse: Sequence[float], target: float) -> float | None:
    """Where a learning curve first reaches ``target`` (linear in log RMSE between points; None: never)."""
    prev = None
    for n, f in zip(labels, rmse):
        if f is not None and f <= target:
            if prev is None or f <= 0 or prev[1] <= 0 or prev[1] == f:
                return float(n)
            t = (math.log(prev[1]) - math.log(target)) / (math.log(prev[1]) - math.log(f))
            return float(prev[0] + t * (n - prev[0]))
        if f is not None:
            prev = (n, f)
    return None


def stop_point(run: dict[str, Any], conv_accuracy: float) -> dict[str, Any] | None:
    """The first iteration at which the tool's own stop rule holds, and the true test error there.

    almat: its calibrated stop (``converged`` of the iteration record); DP-GEN: an accurate ratio of at
    least ``conv_accuracy`` (DP-GEN itself only reports the ratio; the user stops on it).
    """
    for it in run["iterations"]:
        hit = it.get("converged") if run["tool"] in ALMAT_TOOLS else (it.get("accurate_ratio") or 0) >= conv_accuracy
        if hit:
            return {"iteration": it["iteration"], "oracle_calls": it["oracle_calls"], "force_rmse": it["force_rmse"]}
    return None


def curve(run: dict[str, Any], x: str = "oracle_calls") -> tuple[list[float], list[float]]:
    """(x, force RMSE) over a run's scored iterations; x is oracle_calls, train_labels or hours."""
    its = [it for it in run["iterations"] if it.get("force_rmse") is not None]
    if x == "hours":
        return [it["wall_s_cumulative"] / 3600 for it in its], [it["force_rmse"] for it in its]
    return [it[x] for it in its], [it["force_rmse"] for it in its]


def summarise(runs: list[dict[str, Any]], conv_accuracy: float = 0.95) -> dict[str, Any]:
    """Per problem: the shared target (the worse of almat's and DP-GEN's mean final errors; with only one
    of them run, its own; with neither, the worst of the tools run), labels and hours to it per run (the
    foundation start's too), each tool's error at equal labels (the smallest final label count of all
    runs), and where each tool's own stop rule would have stopped."""
    out: dict[str, Any] = {}
    for problem in sorted({r["problem"] for r in runs}):
        mine = [r for r in runs if r["problem"] == problem and r["iterations"]]
        tools = sorted({r["tool"] for r in mine})
        final = {t: float(np.mean([curve(r)[1][-1] for r in mine if r["tool"] == t and curve(r)[1]])) for t in tools}
        base = [t for t in TARGET_TOOLS if t in final] or list(final)
        target = max(final[t] for t in base) if base else None
        equal = min((curve(r)[0][-1] for r in mine if curve(r)[0]), default=None)
        per_run = []
        for r in mine:
            calls, rmse = curve(r)
            hours, _ = curve(r, "hours")
            per_run.append({
                "tool": r["tool"], "seed": r["seed"], "final_force_rmse": rmse[-1] if rmse else None,
                "final_oracle_calls": calls[-1] if calls else None,
                "labels_to_target": None if target is None else interpolate_labels(calls, rmse, target),
                "hours_to_target": None if target is None else interpolate_labels(hours, rmse, target),
                "rmse_at_equal_labels": None if equal is None else error_at(calls, rmse, equal),
                "stop": stop_point(r, conv_accuracy), "idle_s": r["iterations"][-1].get("idle_s") if r["iterations"] else None,
            })
        out[problem] = {"target_force_rmse": target, "final_force_rmse": final, "equal_labels": equal,
                        "runs": per_run, "means": _means(per_run, tools)}
    return out


def _means(per_run: list[dict[str, Any]], tools: list[str]) -> dict[str, dict[str, float | None]]:
    keys = ("final_force_rmse", "final_oracle_calls", "labels_to_target", "hours_to_target", "rmse_at_equal_labels")
    means: dict[str, dict[str, float | None]] = {}
    for tool in tools:
        means[tool] = {}
        for key in keys:
            values = [r[key] for r in per_run if r["tool"] == tool and r[key] is not None]
            means[tool][key] = float(np.mean(values)) if values else None
            means[tool][key + "_std"] = float(np.std(values)) if len(values) > 1 else None
            means[tool][key + "_seeds"] = [len(values), sum(r["tool"] == tool for r in per_run)]  # reached, run
    return means


def format_table(summary: dict[str, Any]) -> str:
    """The markdown table of docs/benchmarks.md: one row per problem and tool, mean ± std over its seeds."""
    rows = ["| problem | tool | final force RMSE (eV/Å) | oracle calls | labels to target | hours to target "
            "| RMSE at equal labels | own stop: iteration, calls, RMSE |", "|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    def pm(m, key, spec):  # the mean over seeds, ± their standard deviation where there are several
        std, (reached, ran) = m.get(key + "_std"), m.get(key + "_seeds", (1, 1))
        part = f" ({reached} of {ran} seeds)" if m[key] is not None and reached < ran else ""
        return fmt(m[key], spec) + ("" if std is None else f" ± {std:{spec}}") + part

    for problem, data in summary.items():
        for tool, m in data["means"].items():
            stops = [r["stop"] for r in data["runs"] if r["tool"] == tool]
            stop = "; ".join("never" if s is None else f"{s['iteration']}, {s['oracle_calls']}, {s['force_rmse']:.3f}"
                             for s in stops)
            rows.append(f"| {problem} (target {fmt(data['target_force_rmse'], '.3f')}) | {tool} "
                        f"| {pm(m, 'final_force_rmse', '.3f')} | {pm(m, 'final_oracle_calls', '.0f')} "
                        f"| {pm(m, 'labels_to_target', '.1f')} | {pm(m, 'hours_to_target', '.3f')} "
                        f"| {pm(m, 'rmse_at_equal_labels', '.3f')} (at {fmt(data['equal_labels'], '.0f')}) | {stop} |")
    return "\n".join(rows)


def plot(runs: list[dict[str, Any]], controls: list[dict[str, Any]], path: Path) -> None:
    """Test force RMSE against oracle calls and against hours, one line per tool and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in runs})
    fig, axes = plt.subplots(len(problems), 2, figsize=(10, 3.8 * len(problems)), squeeze=False)
    colours = {"almat": "C0", "almat-foundation": "C2", "dpgen": "C3"}
    for row, problem in zip(axes, problems):
        for r in (r for r in runs if r["problem"] == problem):
            for ax, x in zip(row, ("oracle_calls", "hours")):
                xs, ys = curve(r, x)
                ax.plot(xs, ys, "o-", color=colours.get(r["tool"], "k"), alpha=0.8, label=f"{r['tool']} seed {r['seed']}")
        for c in (c for c in controls if c["problem"] == problem):
            row[0].plot(c["train_labels"], c["force_rmse"], "x:", color=colours.get(c["tool"], "k"),
                        label=f"{c['model']} on random sets (seed {c['seed']})")
        for ax, xlabel in zip(row, ("oracle calls (labels)", "wall hours")):
            ax.set(xlabel=xlabel, ylabel="test force RMSE (eV/Å)", yscale="log", title=problem)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- trust levels tuned to one candidate fraction at iteration 0 (pure: the unit test runs them) -----------


def candidate_fraction(walkers: Sequence[Sequence[float]], lo: float, hi: float, stop_at_hi: bool
                       ) -> tuple[float, float, int]:
    """(candidate fraction, failed fraction, frames) of an exploration under levels lo/hi, from the max
    force deviation of every frame, per walker in step order. A frame is a candidate when lo <= dev < hi
    and failed at or beyond hi (both tools' rule). ``stop_at_hi``: the walker ends at its first failed
    frame, which counts (almat); DP-GEN's LAMMPS runs every step whatever the deviation."""
    cand = failed = n = 0
    for devs in walkers:
        for d in devs:
            n += 1
            if not d < hi:
                failed += 1
                if stop_at_hi:
                    break
            elif d >= lo:
                cand += 1
    return (cand / n, failed / n, n) if n else (0.0, 0.0, 0)


def tune_trust(walkers: Sequence[Sequence[float]], target: float, ratio: float, stop_at_hi: bool = False,
               hi_max: float | None = None) -> dict[str, Any] | None:
    """The trust levels that make ``target`` of an iteration-0 exploration's frames candidates, with hi at
    ``ratio`` times lo (the tool's documented ratio): lo is the largest level at which the candidate
    fraction reaches the target. lo is tried halfway (geometrically) between consecutive recorded
    deviations, so no recorded frame sits on a level. ``hi_max``: the probe's own hi (an almat walker
    stopped there saw nothing beyond it), never exceeded. When no lo reaches the target (the deviations
    spread wider than ``ratio``), the lo of the largest fraction, with ``reached`` False. None: no frames."""
    values = sorted({float(d) for w in walkers for d in w if d > 0 and math.isfinite(d)}, reverse=True)
    grid = [math.sqrt(a * b) for a, b in zip(values, values[1:])] + ([values[-1] / 2] if values else [])
    best = None
    for lo in grid:
        hi = ratio * lo
        if hi_max is not None and hi > hi_max:
            continue
        frac, failed, n = candidate_fraction(walkers, lo, hi, stop_at_hi)
        found = {"lo": lo, "hi": hi, "candidate_fraction": frac, "failed_fraction": failed, "n_frames": n}
        if frac >= target:
            return found | {"reached": True}
        if best is None or frac > best["candidate_fraction"]:
            best = found
    return None if best is None else best | {"reached": False}


def trust_file(result: dict[str, Any], target: float = TARGET_FRACTION) -> dict[str, Any]:
    """The tuned levels of every problem and tool, from a probe's results (seed 0, iteration 0):
    - ``almat`` and ``dpgen`` (raw units): ``tune_trust`` on the deviations the probe recorded
      (``iteration0_deviations``), hi kept at the documented hi/lo ratio;
    - ``almat-foundation`` (calibrated units): its documented levels, and iteration 0's lo adaptive to the
      target fraction (almat's own iteration-0 rule for calibrated levels, which have no k yet)."""
    out: dict[str, Any] = {"target_fraction": target, "problems": {}}
    for run in result["runs"]:
        if (run["seed"] != min(r["seed"] for r in result["runs"]) or not run.get("iteration0_deviations")
                or run["tool"] == "almat-foundation"):
            continue
        problem = peer_data.PROBLEMS[run["problem"]]
        lo0, hi0 = problem.dpgen_trust if run["tool"] == "dpgen" else problem.almat_trust
        almat = run["tool"] in ALMAT_TOOLS
        tuned = tune_trust(run["iteration0_deviations"], target, hi0 / lo0, stop_at_hi=almat,
                           hi_max=(run.get("trust") or {}).get("trust_hi") if almat else None)
        if tuned:
            out["problems"].setdefault(run["problem"], {})[run["tool"]] = {
                **tuned, "units": "raw", "documented": [lo0, hi0], "ratio": hi0 / lo0,
                "probe_candidate_ratio": (run["iterations"] or [{}])[0].get("candidate_ratio"),
                "probe_quantiles": deviation_quantiles(run["iteration0_deviations"])}
    for name in {r["problem"] for r in result["runs"]}:
        lo0, hi0 = peer_data.PROBLEMS[name].almat_trust
        out["problems"].setdefault(name, {})["almat-foundation"] = {
            "lo": lo0, "hi": hi0, "units": "calibrated", "documented": [lo0, hi0], "iteration0_fraction": target}
    return out


def deviation_quantiles(walkers: Sequence[Sequence[float]], qs=(0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    devs = [d for w in walkers for d in w]
    return {f"q{round(100 * q)}": float(np.quantile(devs, q)) for q in qs} if devs else {}


# -- running ---------------------------------------------------------------------------------------------


def peer_python() -> Path:
    """The peer venv's interpreter (``DPGEN_VENV`` or benchmarks/peers/dpgen/.venv)."""
    return Path(os.environ.get("DPGEN_VENV", PEER / ".venv")) / "bin" / "python"


def settings(quick: bool) -> dict[str, Any]:
    """Every choice of the run, in one place (docs/benchmarks.md explains them)."""
    import almat_side  # noqa: PLC0415

    return {
        "quick": quick,
        "problems": ["cu"] if quick else ["cu", "lpsc"],
        "seeds": [0] if quick else [0, 1, 2],
        "iterations": 2 if quick else None,  # None: the problem's whole schedule
        "threads": 1,
        "conv_accuracy": 0.95,
        "control": True,
        "control_sizes": "final" if quick else "all",  # the campaigns' final training-set sizes, or every size
        "mace_control_models": 2 if quick else 4,
        "deepmd": dpgen_runs.DEEPMD_QUICK if quick else dpgen_runs.DEEPMD_FULL,
        "foundation": almat_side.FOUNDATION_QUICK if quick else almat_side.FOUNDATION_FULL,
        "poll_s": 2.0,
        "trust": None,  # None: each tool's documented levels; else a --tune-trust file (trust.json)
    }


def run_all(cfg: dict[str, Any], out: Path, tools: Sequence[str], log=print) -> dict[str, Any]:
    import almat_side  # noqa: PLC0415  (imports almat: only when almat runs)

    result: dict[str, Any] = {"settings": cfg, "versions": {}, "runs": [], "controls": [], "failures": [],
                              "data": {}}
    path = out / "peer_dpgen.json"
    for name in cfg["problems"]:
        problem = peer_data.PROBLEMS[name]
        data = peer_data.write_data(problem, out / "data" / name, quick=cfg["quick"], log=log,
                                    jobs=cfg.get("data_jobs", 1))
        result["data"][name] = data.summary()
        for seed in cfg["seeds"]:
            for tool in tools:
                log(f"[{name}] {tool}, seed {seed}")
                if tool in ALMAT_TOOLS:
                    run = almat_side.run_almat(problem, data, cfg, seed, out / "runs" / f"{name}-{tool}-{seed}", log,
                                               tool)
                else:
                    run = dpgen_runs.run_dpgen(problem, data, cfg, seed, out / "runs" / f"{name}-dpgen-{seed}",
                                               peer_python(), log)
                result["runs"].append(run)
                if run.get("failure"):
                    result["failures"].append({"tool": tool, "problem": name, "seed": seed, **run["failure"]})
                path.write_text(json.dumps(result, indent=1, default=float))  # results so far are kept
        if cfg["control"]:
            result["controls"] += control(problem, data, cfg, [r for r in result["runs"] if r["problem"] == name],
                                          tools, out / "runs" / f"{name}-control", log)
    result["versions"] = versions(tools)
    result["summary"] = summarise(result["runs"], cfg["conv_accuracy"])
    path.write_text(json.dumps(result, indent=1, default=float))
    plot(result["runs"], result["controls"], out / "peer_dpgen.png")
    return result


def control(problem, data, cfg, runs, tools, folder: Path, log) -> list[dict[str, Any]]:
    """Each model family trained on the same random label sets, of the sizes the campaigns trained on."""
    import almat_side  # noqa: PLC0415

    if cfg["control_sizes"] == "final":
        sizes = sorted({r["iterations"][-1]["train_labels"] for r in runs if r["iterations"]})
    else:
        sizes = sorted({it["train_labels"] for r in runs for it in r["iterations"] if it.get("train_labels")})
    sets = peer_data.random_label_sets(data, sizes, seed=cfg["seeds"][0])
    out = []
    if "almat" in tools:
        out.append(almat_side.control_mace(problem, data, sets, cfg, log))
    if "almat-foundation" in tools:
        out.append(almat_side.control_chgnet(problem, data, sets, cfg, log))
    if "dpgen" in tools:
        out.append(dpgen_runs.control_deepmd(problem, data, sets, cfg, folder, peer_python(), log))
    return out


def versions(tools: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import version

    found = {f"almat:{p}": version(p) for p in ("almat", "torch", "mace-torch", "e3nn", "ase")}
    if "almat-foundation" in tools:
        found["almat:chgnet"] = version("chgnet")
    if "dpgen" in tools:
        found.update(dpgen_runs.peer_versions(peer_python()))
    return found


def probe_trust(cfg: dict[str, Any], out: Path, tools: Sequence[str], target: float, log=print) -> dict[str, Any]:
    """The tuning probe: iteration 0 (first training and exploration, then its labels) of almat and DP-GEN
    at seed 0 with their documented levels (almat's hi raised by PROBE_HI_FACTOR), no control; then the
    levels of ``trust_file``, written to ``out/trust.json``."""
    levels = {name: peer_data.PROBLEMS[name].almat_trust for name in cfg["problems"]}
    probe = {**cfg, "iterations": 1, "seeds": [0], "control": False, "trust": {"problems": {
        name: {"almat": {"lo": lo, "hi": PROBE_HI_FACTOR * hi, "units": "raw"}} for name, (lo, hi) in levels.items()}}}
    result = run_all(probe, out, [t for t in tools if t != "almat-foundation"], log)
    return trust_file(result, target)


def trust_from(folder: Path, target: float) -> dict[str, Any]:
    """``trust_file`` from an earlier run's results (its first seed's iteration 0), the deviations read again
    from its run folders where the JSON has none (runs from before they were recorded)."""
    import almat_side  # noqa: PLC0415

    result = json.loads((folder / "peer_dpgen.json").read_text())
    for run in result["runs"]:
        if not run.get("iteration0_deviations") and Path(run.get("folder", "")).exists():
            run["iteration0_deviations"] = (dpgen_runs.walker_deviations(Path(run["folder"])) if run["tool"] == "dpgen"
                                            else almat_side.walker_deviations(run.get("campaign") or
                                                                              f"peer-{run['problem']}-{run['seed']}",
                                                                              Path(run["folder"]) / "db"))
            run.setdefault("trust", {"trust_hi": (peer_data.PROBLEMS[run["problem"]].almat_trust[1]
                                                  if run["tool"] == "almat" else None)})
    return trust_file(result, target)


def frames_digest(folder: Path) -> str:
    """The sha256 of a problem's shared initial and test frames (the extxyz files of ``write_data``)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.glob("initial_*.extxyz")) + sorted(folder.glob("test_*.extxyz")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def merge(folders: Sequence[Path], out: Path) -> dict[str, Any]:
    """One result from several (parts of a run, made by separate calls): a later part's run or control of the
    same problem, tool (model) and seed replaces an earlier one. Parts scored on other frames are refused
    (ValueError): each problem's initial and test frames must be byte-identical; so are parts of another
    almat variant (``--almat-adaptive-lo``), whose runs would otherwise replace the plain tool's."""
    merged: dict[str, Any] = {"runs": {}, "controls": {}, "failures": [], "data": {}, "versions": {}}
    digests: dict[str, str] = {}
    for folder in folders:
        path = folder / "peer_dpgen.json"
        if not path.exists():
            raise ValueError(f"no results at {path}")
        part = json.loads(path.read_text())
        for problem, data in part.get("data", {}).items():
            frames = Path(data["folder"])
            if not frames.is_dir():
                raise ValueError(f"{path}: the shared frames of {problem} are gone ({frames})")
            digest = frames_digest(frames)
            if digests.setdefault(problem, digest) != digest:
                raise ValueError(f"{path}: its {problem} frames differ from the first part's; not comparable")
            merged["data"].setdefault(problem, data)
        variant = merged.setdefault("settings", {**part["settings"], "merged_from": []}).get("almat_adaptive_lo")
        if part["settings"].get("almat_adaptive_lo") != variant:
            raise ValueError(f"{path}: its almat variant (--almat-adaptive-lo) differs from the first part's")
        merged["settings"]["merged_from"].append(str(folder))
        merged["versions"].update(part.get("versions", {}))
        merged["runs"].update({(r["problem"], r["tool"], r["seed"]): r for r in part["runs"]})
        merged["controls"].update({(c["problem"], c["model"], c["seed"]): c for c in part.get("controls", [])})
        merged["failures"] += part.get("failures", [])
    merged["runs"], merged["controls"] = list(merged["runs"].values()), list(merged["controls"].values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_dpgen.json").write_text(json.dumps(merged, indent=1, default=float))
    return merged


def rescore(folder: Path) -> int:
    result = json.loads((folder / "peer_dpgen.json").read_text())
    for run in result["runs"]:
        if run["tool"] == "dpgen" and Path(run.get("folder", "")).joinpath("dpgen.log").exists():
            dpgen_runs.refresh_run(run)  # counts and ratios read again with this version's readers
    result["summary"] = summarise(result["runs"], result["settings"]["conv_accuracy"])
    (folder / "peer_dpgen.json").write_text(json.dumps(result, indent=1, default=float))
    print(format_table(result["summary"]))
    plot(result["runs"], result.get("controls", []), folder / "peer_dpgen.png")
    return 0


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Cu only, 2 iterations each, one seed")
    parser.add_argument("--problems", nargs="+", choices=sorted(peer_data.PROBLEMS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--no-control", action="store_true", help="skip the random-label-set control")
    parser.add_argument("--deepmd", choices=sorted(dpgen_runs.DEEPMD_SIZES), default=None,
                        help="DeePMD's size and steps (default: full, or quick with --quick)")
    parser.add_argument("--control-sizes", choices=("final", "all"), default=None,
                        help="control sets of the campaigns' final sizes only, or of every size (default: all, "
                             "final with --quick)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data-jobs", type=int, default=1, metavar="N",
                        help="processes for the oracle MD of the shared frames, written once (default 1; the frames "
                             "are the same for any N)")
    parser.add_argument("--almat-adaptive-lo", type=float, default=None, metavar="FRACTION",
                        help="almat's lo chosen every iteration so that FRACTION of the frames below hi are candidates "
                             "(a variant; default: the fixed lo of --trust or the documented one)")
    parser.add_argument("--rescore", type=Path, default=None,
                        help="the table and the plot again, from DIR/peer_dpgen.json (also a partial one)")
    parser.add_argument("--tune-trust", action="store_true",
                        help="only the probe: iteration 0 of each tool at seed 0, then OUT/trust.json")
    parser.add_argument("--tune-trust-from", type=Path, default=None, metavar="DIR",
                        help="OUT/trust.json from an earlier run's iteration 0 (DIR/peer_dpgen.json), nothing run")
    parser.add_argument("--trust", type=Path, default=None, metavar="FILE",
                        help="the tuned trust levels (a trust.json of --tune-trust); default: the documented ones")
    parser.add_argument("--target-fraction", type=float, default=TARGET_FRACTION,
                        help=f"the candidate fraction at iteration 0 the tuning aims at (default {TARGET_FRACTION})")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                        help="parts of one run (their peer_dpgen.json) into --out, then its table and plot; "
                             "a later part's run of the same problem, tool and seed replaces an earlier one")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.merge:
        if args.out is None:
            parser.error("--merge: give the merged result's folder with --out")
        out = args.out.resolve()
        try:
            merge(args.merge, out)
        except ValueError as exc:
            parser.error(f"--merge: {exc}")
        return rescore(out)
    if args.rescore:
        return rescore(args.rescore)
    if not 0 < args.target_fraction < 1:
        parser.error(f"--target-fraction: {args.target_fraction} is not strictly between 0 and 1")
    if "dpgen" in args.tools and not args.tune_trust_from and not peer_python().exists():
        print(PEER_HINT, file=sys.stderr)
        return 2
    cfg = settings(args.quick)
    cfg.update({k: v for k, v in (("problems", args.problems), ("seeds", args.seeds)) if v})
    cfg["control"] = not args.no_control
    if args.data_jobs < 1:
        parser.error(f"--data-jobs: {args.data_jobs} is not a positive number of processes")
    cfg["data_jobs"] = args.data_jobs
    if args.almat_adaptive_lo is not None:
        if not 0 < args.almat_adaptive_lo <= 1:
            parser.error(f"--almat-adaptive-lo: {args.almat_adaptive_lo} is not a fraction in (0, 1]")
        cfg["almat_adaptive_lo"] = args.almat_adaptive_lo
    if args.deepmd:
        cfg["deepmd"] = dpgen_runs.DEEPMD_SIZES[args.deepmd]
    if args.control_sizes:
        cfg["control_sizes"] = args.control_sizes
    if args.trust:
        cfg["trust"] = read_trust(args.trust, parser)
    suffix = "_trust" if (args.tune_trust or args.tune_trust_from) else ""
    # absolute: DP-GEN runs in its own folder and reads the shared data by this path
    out = (args.out or OUT / (f"peer_dpgen{suffix}_quick" if args.quick else f"peer_dpgen{suffix}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")  # torch.jit and e3nn warn once per loaded model when the committees are scored
    start = time.perf_counter()
    if args.tune_trust or args.tune_trust_from:
        trust = (trust_from(args.tune_trust_from, args.target_fraction) if args.tune_trust_from
                 else probe_trust(cfg, out, args.tools, args.target_fraction))
        (out / "trust.json").write_text(json.dumps(trust, indent=1))
        print(format_trust(trust))
        print(f"total {time.perf_counter() - start:.0f} s; {out / 'trust.json'} (run with --trust that file)")
        return 0
    result = run_all(cfg, out, args.tools)
    print(format_table(result["summary"]))
    for f in result["failures"]:
        print(f"FAILED {f['tool']} {f['problem']} seed {f['seed']}: {f['message']}\n{f['log_tail']}")
    print(f"total {time.perf_counter() - start:.0f} s; {out / 'peer_dpgen.json'}")
    return 1 if result["failures"] else 0


def read_trust(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A trust.json of --tune-trust, or the parser's one-line error."""
    try:
        trust = json.loads(path.read_text())
    except (OSError, ValueError):
        trust = None
    if not isinstance(trust, dict) or not isinstance(trust.get("problems"), dict):
        parser.error(f"--trust: {path} is not a trust.json written by --tune-trust")
    return trust


def format_trust(trust: dict[str, Any]) -> str:
    """One line per problem and tool: the levels chosen and the iteration-0 candidate fraction they give."""
    lines = [f"trust levels tuned to {trust['target_fraction']:.0%} candidates at iteration 0:"]
    for problem, tools in trust["problems"].items():
        for tool, t in tools.items():
            if t["units"] == "calibrated":
                lines.append(f"  {problem} {tool}: {t['lo']:.3g}/{t['hi']:.3g} eV/Å calibrated, iteration 0's lo "
                             f"adaptive to {t['iteration0_fraction']:.0%} of the frames below hi")
            else:
                lines.append(f"  {problem} {tool}: {t['lo']:.4f}/{t['hi']:.4f} eV/Å (documented {t['documented'][0]}/"
                             f"{t['documented'][1]}): {t['candidate_fraction']:.0%} candidates, "
                             f"{t['failed_fraction']:.0%} failed of {t['n_frames']} frames"
                             f"{'' if t['reached'] else ' (target not reached)'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
