"""The DP-GEN side of benchmarks/peer_dpgen.py (runs in almat's .venv; DP-GEN itself in the peer venv).

``param.json``/``machine.json`` are built from the templates next to this file: DP-GEN's own defaults
where its docs give them (4 models, se_e2_a, ``fp_style: custom``, Shell + LocalContext), the problem's
schedule as ``model_devi_jobs`` (one per iteration), and the sizes below. Every command runs through
``timed.sh`` (CPU time per stage; dpdispatcher detaches its jobs) and the peer venv's start-up hook
(``almat_dpgen_hook.py``: fresh seeds per submission, polling cut and logged).
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.io import write

from peer_data import Problem, SharedData, write_deepmd_npy

HERE = Path(__file__).resolve().parent
#: DeePMD sizes. Full: the se_e2_a of DP-GEN's examples ([25,50,100] / [120,120,120], about 230k parameters
#: on Cu), trained from scratch each iteration as DP-GEN does by default. Quick: a small one (about 20k
#: parameters), enough to run the pipeline end to end within the quick budget; not converged.
DEEPMD_FULL = {"neuron": [25, 50, 100], "axis_neuron": 12, "fitting": [120, 120, 120], "numb_steps": 20000,
               "rcut": 5.0, "stop_lr": 1e-5, "numb_models": 4, "control_models": 4}
DEEPMD_QUICK = {"neuron": [10, 20, 40], "axis_neuron": 8, "fitting": [40, 40, 40], "numb_steps": 500,
                "rcut": 5.0, "stop_lr": 1e-4, "numb_models": 4, "control_models": 2}
#: Small: the quick size trained 3,000 steps (lr 1e-3 -> 1e-5), for a full schedule that fits an evening on
#: 2 cores (about 17k parameters; almat's demo MACE has about 9k). Measured on the Cu initial data (16 frames,
#: 180 test frames): 0.069 eV/Å after 3,000 steps, 0.057 after 8,000 (and 0.132 / 0.066 for a 7k-parameter one).
DEEPMD_SMALL = {**DEEPMD_QUICK, "numb_steps": 3000, "stop_lr": 1e-5}
DEEPMD_SIZES = {"full": DEEPMD_FULL, "small": DEEPMD_SMALL, "quick": DEEPMD_QUICK}
MASSES = {"Cu": 63.546, "Li": 6.94, "P": 30.974, "S": 32.06, "Cl": 35.45}


def type_map(data: SharedData) -> list[str]:
    return sorted({s for frames in data.initial for s in frames[0].get_chemical_symbols()})


def training_input(problem: Problem, data: SharedData, deepmd: dict[str, Any]) -> dict[str, Any]:
    """DeePMD's input: se_e2_a, DP-GEN's example loss prefactors; virials on when a stage runs NPT."""
    template = json.loads((HERE / "training.json").read_text())
    npt = any(st.ensemble != "nvt" for st in problem.schedule)
    template["model"]["type_map"] = type_map(data)
    template["model"]["descriptor"].update({"neuron": deepmd["neuron"], "axis_neuron": deepmd["axis_neuron"],
                                            "rcut": deepmd["rcut"]})
    template["model"]["fitting_net"]["neuron"] = deepmd["fitting"]
    steps = deepmd["numb_steps"]
    template["learning_rate"].update({"stop_lr": deepmd["stop_lr"], "decay_steps": max(steps // 40, 10)})
    template["loss"].update({"start_pref_v": 0.02 if npt else 0.0, "limit_pref_v": 1.0 if npt else 0.0})
    template["training"].update({"numb_steps": steps, "save_freq": steps, "disp_freq": max(steps // 20, 1)})
    return template


def param_json(problem: Problem, data: SharedData, cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """dpgen's param.json: the shared initial data, the start structures, the schedule, trust levels."""
    param = json.loads((HERE / "param.json").read_text())
    tmap = type_map(data)
    configs = []
    for k, frames in enumerate(data.initial):
        write(folder / f"POSCAR_{k}", frames[0], format="vasp", direct=True, sort=True)
        configs.append([f"POSCAR_{k}"])
    stages = problem.schedule[: cfg["iterations"]] if cfg["iterations"] else problem.schedule
    lo, hi = trust_levels(problem, cfg)
    param.update({
        "type_map": tmap, "mass_map": [MASSES[s] for s in tmap],
        "init_data_prefix": str(data.folder), "sys_configs_prefix": str(folder),
        "init_data_sys": [f"initial_{k}" for k in range(len(data.initial))], "sys_configs": configs, "numb_models": cfg["deepmd"]["numb_models"],
        "default_training_param": training_input(problem, data, cfg["deepmd"]),
        "model_devi_dt": problem.timestep_fs / 1000.0, "model_devi_f_trust_lo": lo, "model_devi_f_trust_hi": hi,
        "fp_task_max": problem.max_select, "fp_params": {**param["fp_params"]},
        "model_devi_jobs": [{"sys_idx": list(range(len(configs))), "temps": list(st.temperatures),
                             **({"press": list(st.pressures_bar)} if st.pressures_bar else {}),
                             "trj_freq": problem.sample_every, "nsteps": problem.md_steps,
                             "ensemble": st.ensemble} for st in stages],
    })
    return param


def trust_levels(problem: Problem, cfg: dict[str, Any]) -> tuple[float, float]:
    """DP-GEN's trust levels: the tuned ones of ``cfg["trust"]`` (``--trust FILE``), else the documented."""
    tuned = (cfg.get("trust") or {}).get("problems", {}).get(problem.name, {}).get("dpgen")
    return (tuned["lo"], tuned["hi"]) if tuned else problem.dpgen_trust


def machine_json(problem: Problem, cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    machine = json.loads((HERE / "machine.json").read_text())
    timed = f"bash {HERE / 'timed.sh'}"
    commands = {"train": f"{timed} dp", "model_devi": f"{timed} lmp",
                "fp": f"{timed} python {HERE / 'fp_ase.py'} {problem.oracle}"}
    for task, command in commands.items():
        machine[task]["command"] = command
        machine[task]["machine"]["remote_root"] = str(folder / "remote")
        machine[task]["resources"]["envs"] = thread_env(cfg["threads"])
    return machine


def thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "DP_INTRA_OP_PARALLELISM_THREADS": n, "DP_INTER_OP_PARALLELISM_THREADS": n,
            "MKL_NUM_THREADS": n}


def run_dpgen(problem: Problem, data: SharedData, cfg: dict[str, Any], seed: int, folder: Path, python: Path,
              log) -> dict[str, Any]:
    """``dpgen run`` in ``folder`` (made afresh), then every iteration's committee scored."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "param.json").write_text(json.dumps(param_json(problem, data, cfg, folder), indent=1))
    (folder / "machine.json").write_text(json.dumps(machine_json(problem, cfg, folder), indent=1))
    env = {**os.environ, **thread_env(cfg["threads"]), "PATH": f"{python.parent}:{os.environ.get('PATH', '')}",
           "ALMAT_DPGEN_SEED": str(seed), "ALMAT_DPGEN_POLL_S": str(cfg["poll_s"]),
           "ALMAT_DPGEN_POLL_LOG": str(folder / "poll.log"), "ALMAT_DPGEN_CPU_LOG": str(folder / "cpu.log")}
    env.pop("VIRTUAL_ENV", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(folder / "dpgen.stdout", "w") as fh:
        proc = subprocess.run([str(python.parent / "dpgen"), "run", "param.json", "machine.json"], cwd=folder,
                              env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = {"tool": "dpgen", "problem": problem.name, "seed": seed, "folder": str(folder), "wall_s": wall,
           "returncode": proc.returncode, "iterations": [], "trust": dict(zip(("trust_lo", "trust_hi"),
                                                                             trust_levels(problem, cfg)))}
    if proc.returncode != 0:
        run["failure"] = {"message": f"dpgen run exited {proc.returncode}", "log_tail": log_tail(folder)}
    try:
        run["iterations"] = read_iterations(folder, data, python, start)
        run["oracle_calls_total"] = sum(len(x) for x in data.initial) + len(list(folder.glob("iter.*/02.fp/task.*")))
        run["main_cpu_s"] = main_cpu  # dpgen's own process
        run["cpu_s"] = main_cpu + sum(r["cpu_s"] for r in cpu_records(folder))
        run["idle_s"] = idle_seconds(cpu_records(folder), start, start + wall)
        run["poll_sleep_s"] = sum(s for _, s in poll_records(folder))  # overlaps the jobs: not idle time
        run["suggested_trust_lo"] = suggested_trust_lo(folder)
        run["iteration0_deviations"] = walker_deviations(folder)
    except Exception as exc:  # noqa: BLE001 - the results so far are kept
        run.setdefault("failure", {"message": f"reading dpgen's folders failed: {exc}", "log_tail": log_tail(folder)})
    for it in run["iterations"]:
        log(f"  dpgen it {it['iteration']}: {it['train_labels']} trained, {it['oracle_calls']} oracle calls, "
            f"force RMSE {it['force_rmse']:.4f} eV/Å (model 0: {it['force_rmse_model0']:.4f}), "
            f"candidates {it.get('candidate_ratio')}")
    return run


def cpu_records(folder: Path) -> list[dict[str, Any]]:
    """timed.sh's records, in order: stage (train/model_devi/fp by command), start, end, CPU seconds.

    A timed.sh from before 2026-12-07 (evening) logged the CPU time its shell inherited: DP-GEN's ``dp train
    && dp freeze`` runs the freeze with exec, so its record also held the training's. Such a record gets the
    previous record of its folder subtracted: one that started after that record ended and logged more CPU
    time than its own wall time (a one-thread command cannot). ``cpu_s_logged`` keeps what was logged.
    """
    out: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}  # the latest record per task folder
    path = folder / "cpu.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split(" ", 6)
        if len(parts) < 7:
            continue
        where, start, end, user, system, rc, command = parts
        stage = "train" if command.startswith("dp ") else "model_devi" if command.startswith("lmp") else "fp"
        logged = _seconds(user) + _seconds(system)
        record = {"stage": stage, "start": float(start), "end": float(end), "rc": int(rc), "cpu_s": logged,
                  "cpu_s_logged": logged, "command": command}
        prev = last.get(where)
        if prev is not None and record["start"] >= prev["end"] and logged > record["end"] - record["start"]:
            record["cpu_s"] = max(0.0, logged - prev["cpu_s_logged"])
        last[where] = record
        out.append(record)
    return out


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)m([\d.]+)s", text)
    return 60 * int(m.group(1)) + float(m.group(2)) if m else 0.0


def poll_records(folder: Path) -> list[tuple[float, float]]:
    path = folder / "poll.log"
    return [tuple(map(float, line.split())) for line in path.read_text().splitlines()] if path.exists() else []


def split_iterations(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The timed commands cut into iterations: a new one starts at a training after other stages."""
    iterations: list[list[dict[str, Any]]] = []
    for rec in records:
        if not iterations or (rec["stage"] == "train" and iterations[-1][-1]["stage"] != "train"):
            iterations.append([])
        iterations[-1].append(rec)
    return iterations


def accurate_ratios(folder: Path) -> list[dict[str, float]]:
    """Per iteration, from dpgen.log's 'system NNN candidate/failed/accurate : n in N' lines (summed over
    the systems): the candidate, accurate and failed ratios of the explored frames."""
    path = folder / "dpgen.log"
    head = re.compile(r"=+iter\.(\d+)=+")
    line_re = re.compile(r"system\s+\d+\s+(candidate|failed|accurate)\s*:\s*(\d+)\s+in\s+(\d+)")
    counts: dict[int, dict[str, int]] = {}
    iteration = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        if m := head.search(line):
            iteration = int(m.group(1))
        elif m := line_re.search(line):
            c = counts.setdefault(iteration, {"candidate": 0, "failed": 0, "accurate": 0, "total": 0})
            c[m.group(1)] += int(m.group(2))
            c["total"] += int(m.group(3)) if m.group(1) == "candidate" else 0
    out = []
    for i in range(max(counts, default=-1) + 1):
        c = counts.get(i)
        if not c or not c["total"]:
            out.append({})
            continue
        out.append({f"{k}_ratio": c[k] / c["total"] for k in ("candidate", "accurate", "failed")}
                   | {"n_frames_explored": c["total"]})
    return out


def refresh_run(run: dict[str, Any]) -> None:
    """Read the label counts and ratios of a stored DP-GEN run again from its folder (test errors stay)."""
    folder = Path(run["folder"])
    ratios = accurate_ratios(folder)
    counts = label_counts(folder, run["iterations"][0]["oracle_calls"]) if run["iterations"] else []
    for it in run["iterations"]:
        i = it["iteration"]
        if i < len(ratios):
            it.update(ratios[i])
        if i < len(counts):
            it["train_labels"], it["oracle_calls"] = counts[i]
    run["oracle_calls_total"] = (counts[-1][1] if counts else 0) + len(list(folder.glob(
        f"iter.{len(counts) - 1:06d}/02.fp/task.*")))
    refresh_cpu(run, folder)


def refresh_cpu(run: dict[str, Any], folder: Path) -> None:
    """CPU times again with this version's cpu_records (a run stored before the exec correction counted a
    freeze's training twice). dpgen's own process time stays: ``main_cpu_s``, or for a run stored without
    it, what its total had beyond the records as they were read then (uncorrected)."""
    records = cpu_records(folder)
    if not records or "cpu_s" not in run:
        return
    if "main_cpu_s" not in run:
        run["main_cpu_s"] = max(0.0, run["cpu_s"] - sum(r["cpu_s_logged"] for r in records))
    run["cpu_s"] = run["main_cpu_s"] + sum(r["cpu_s"] for r in records)
    for it in run["iterations"]:
        models = sorted((folder / f"iter.{it['iteration']:06d}" / "00.train").glob("graph.*.pth"))
        if models:
            t_done = os.lstat(models[0]).st_mtime
            it["cpu_s_cumulative"] = sum(r["cpu_s"] for r in records if r["end"] <= t_done + 1)


def count_frames(system_dir: Path) -> int:
    """Frames of a deepmd/npy folder; dpgen nests them one level down (data.000/Cu32/set.000)."""
    return sum(len(np.load(p)) for p in system_dir.rglob("energy.npy") if p.parent.name.startswith("set."))


def label_counts(folder: Path, n_init: int) -> list[tuple[int, int]]:
    """Per iteration folder: (labels trained on, oracle calls paid before its training)."""
    out, labels, calls = [], n_init, n_init
    for it_dir in sorted(folder.glob("iter.*")):
        out.append((labels, calls))
        fp = it_dir / "02.fp"
        calls += len(list(fp.glob("task.*")))
        labels += sum(count_frames(d) for d in fp.glob("data.*"))
    return out


def idle_seconds(records: list[dict[str, Any]], start: float, until: float) -> float:
    """Wall time in [start, until] during which no timed command ran: dpdispatcher's polling and dpgen's
    own bookkeeping between stages (the sleeps while jobs run overlap work and are not counted)."""
    busy, cursor = 0.0, start
    for a, b in sorted((r["start"], r["end"]) for r in records):
        a, b = max(a, cursor), min(b, until)
        if b > a:
            busy += b - a
            cursor = b
    return max(0.0, (until - start) - busy)


def read_iterations(folder: Path, data: SharedData, python: Path, start: float) -> list[dict[str, Any]]:
    """Per trained committee: labels it trained on, oracle calls paid so far, test errors, ratios, times.
    A committee is ready when dpgen links its graph files (post_train); an iteration without new labels
    copies the previous models (``retrained: false``)."""
    n_init = sum(len(x) for x in data.initial)
    ratios, records = accurate_ratios(folder), cpu_records(folder)
    test_dirs = [str(data.folder / f"test_{k}") for k in range(len(data.test))]
    out, counts = [], label_counts(folder, n_init)
    for i, it_dir in enumerate(sorted(folder.glob("iter.*"))):
        models = sorted((it_dir / "00.train").glob("graph.*.pth"))
        labels, calls = counts[i]
        if models:
            scores = [score(python, d, models) for d in test_dirs]
            t_done = os.lstat(models[0]).st_mtime
            out.append({"iteration": i, "train_labels": labels, "oracle_calls": calls, **combine(scores),
                        **(ratios[i] if i < len(ratios) else {}), "wall_s_cumulative": t_done - start,
                        "cpu_s_cumulative": sum(r["cpu_s"] for r in records if r["end"] <= t_done + 1),
                        "idle_s": idle_seconds(records, start, t_done),
                        "retrained": not (it_dir / "00.train" / "copied").exists()})
    return out


def score(python: Path, test_dir: str, models: list[Path]) -> dict[str, Any]:
    proc = subprocess.run([str(python), str(HERE / "score_deepmd.py"), test_dir, *map(str, models)],
                          capture_output=True, text=True, env={**os.environ, **thread_env(1)})
    if proc.returncode != 0:
        raise RuntimeError(f"score_deepmd.py failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine(scores: list[dict[str, Any]]) -> dict[str, float]:
    """Test errors over several test systems (one per start structure), weighted by frames (and atoms)."""
    n = np.array([s["n_frames"] for s in scores], dtype=float)

    def pooled(key, which):
        values = np.array([(s["mean"] if which == "mean" else s["models"][0])[key] for s in scores])
        return float(np.sqrt(np.sum(n * values ** 2) / n.sum()))

    return {"force_rmse": pooled("force_rmse", "mean"), "energy_rmse_per_atom": pooled("energy_rmse_per_atom", "mean"),
            "force_rmse_model0": pooled("force_rmse", "model0"), "n_test": int(n.sum())}


def suggested_trust_lo(folder: Path, fractions=(0.25, 0.5, 0.75)) -> dict[str, float]:
    """Quantiles of iteration 0's max force deviation (model_devi.out): the lower trust level that would
    make that fraction of DP-GEN's frames candidates (how the full run's levels are tuned)."""
    devi = []
    for path in sorted(folder.glob("iter.000000/01.model_devi/task.*/model_devi.out")):
        table = np.loadtxt(path, ndmin=2)
        devi += table[:, 4].tolist()
    if not devi:
        return {}
    return {f"candidates_{f:.2f}": float(np.quantile(devi, 1 - f)) for f in fractions} | {
        "median_deviation": float(np.median(devi))}


def walker_deviations(folder: Path, iteration: int = 0) -> list[list[float]]:
    """The max force deviation (eV/Å) of every frame an iteration's LAMMPS runs recorded (model_devi.out,
    column max_devi_f), one list per MD task: what ``peer_dpgen.tune_trust`` reads."""
    out = []
    for path in sorted(folder.glob(f"iter.{iteration:06d}/01.model_devi/task.*/model_devi.out")):
        out.append(np.loadtxt(path, ndmin=2)[:, 4].tolist())
    return out


def log_tail(folder: Path, n: int = 30) -> str:
    lines = []
    for name in ("dpgen.stdout", "dpgen.log"):
        path = folder / name
        if path.exists():
            lines += [f"--- {name}"] + path.read_text(errors="replace").splitlines()[-n:]
    return "\n".join(lines)


def control_deepmd(problem: Problem, data: SharedData, sets: dict[int, list], cfg: dict[str, Any], folder: Path,
                   python: Path, log) -> dict[str, Any]:
    """DP-GEN's DeePMD input trained (``dp --pt train``, then ``freeze``) on each random label set."""
    tmap = type_map(data)
    out = {"tool": "dpgen", "model": "DeePMD se_e2_a", "problem": problem.name, "seed": cfg["seeds"][0],
           "train_labels": [], "force_rmse": [], "energy_rmse_per_atom": [], "wall_s": []}
    env = {**os.environ, **thread_env(cfg["threads"])}
    for size, per_structure in sorted(sets.items()):
        t0, work = time.time(), folder / f"n{size}"
        systems = []
        for k, frames in enumerate(per_structure):
            write_deepmd_npy(frames, work / f"data_{k}", type_map=tmap)
            systems.append(str(work / f"data_{k}"))
        procs, models = [], []
        for m in range(cfg["deepmd"]["control_models"]):
            task = work / f"model_{m}"
            task.mkdir(parents=True, exist_ok=True)
            inp = copy.deepcopy(training_input(problem, data, cfg["deepmd"]))
            inp["training"]["training_data"]["systems"] = systems
            for part in (inp["model"]["descriptor"], inp["model"]["fitting_net"], inp["training"]):
                part["seed"] = 1000 * cfg["seeds"][0] + 10 * m + 1
            (task / "input.json").write_text(json.dumps(inp, indent=1))
            script = f"{python.parent / 'dp'} --pt train input.json && {python.parent / 'dp'} --pt freeze -o model.pth"
            procs.append(subprocess.Popen(["bash", "-c", f"({script}) > train.log 2>&1"], cwd=task, env=env))
            models.append(task / "model.pth")
        if any(p.wait() != 0 for p in procs):
            log(f"  control DeePMD, {size} labels: training failed (see {work})")
            continue
        errors = combine([score(python, str(data.folder / f"test_{k}"), models) for k in range(len(data.test))])
        out["train_labels"].append(size)
        out["force_rmse"].append(errors["force_rmse"])
        out["energy_rmse_per_atom"].append(errors["energy_rmse_per_atom"])
        out["wall_s"].append(time.time() - t0)
        log(f"  control DeePMD, {size} random labels: force RMSE {errors['force_rmse']:.4f} eV/Å")
    return out


def peer_versions(python: Path) -> dict[str, str]:
    code = ("import json; from importlib.metadata import version as v; print(json.dumps({'dpgen:'+p: v(p) for p in "
            "('dpgen','deepmd-kit','torch','lammps','dpdata','dpdispatcher','ase','tblite')}))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"dpgen:error": proc.stderr[-300:]}
