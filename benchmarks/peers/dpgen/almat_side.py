"""The almat side of benchmarks/peer_dpgen.py (run in almat's .venv): the campaign file built from
workflows/cu_emt.yaml, ``almat run`` in a subprocess with its own store, and the scoring of every
iteration's committee on the shared test frames.

Two almat tools: ``almat`` (the demo's 4-model MACE committee from scratch, trust levels in raw units) and
``almat-foundation`` (the same campaign, its learner CHGNet fine-tuned from the weights bundled with chgnet,
``learner.kind: chgnet-finetune``, 2 members and trust levels in calibrated units, as almat's foundation
campaign file workflows/li6ps5cl_cp2k.py has them)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from peer_data import ROOT, Problem, SharedData

DEMO = ROOT / "workflows" / "cu_emt.yaml"
ALMAT = Path(sys.executable).parent / "almat"
#: the almat tools of the benchmark
TOOLS = ("almat", "almat-foundation")
#: almat-foundation's learner: CHGNet from its bundled 0.3.0 weights, 2 members, as workflows/li6ps5cl_cp2k.py;
#: the epochs of benchmarks/foundation_start.py on Cu (full) and of its quick mode (quick)
FOUNDATION_FULL = {"kind": "chgnet-finetune", "n_models": 2,
                   "hyperparameters": {"epochs": 6, "warm_start_epochs": 3, "batch_size": 4}}
FOUNDATION_QUICK = {"kind": "chgnet-finetune", "n_models": 2,
                    "hyperparameters": {"epochs": 2, "warm_start_epochs": 1, "batch_size": 4}}


def trust_settings(problem: Problem, cfg: dict[str, Any], tool: str) -> dict[str, Any]:
    """The sampler's trust settings of a tool: the tuned levels of ``cfg["trust"]`` (``--trust FILE``) where
    it has them, else the documented ones (raw for ``almat``, calibrated for ``almat-foundation``).
    ``stage0`` holds what only the first stage (iteration 0) sets: a calibrated tool's ``adaptive_lo``;
    ``every_stage`` what each stage sets: ``almat``'s ``adaptive_lo`` with ``cfg["almat_adaptive_lo"]``
    (``--almat-adaptive-lo``: lo chosen each iteration so that this fraction of the frames below hi are
    candidates, DP-GEN's ``model_devi_adapt_trust_lo`` idea)."""
    tuned = (cfg.get("trust") or {}).get("problems", {}).get(problem.name, {}).get(tool)
    lo, hi = problem.almat_trust
    units = "calibrated" if tool == "almat-foundation" else "raw"
    if tuned:
        lo, hi, units = tuned["lo"], tuned["hi"], tuned["units"]
    out: dict[str, Any] = {"trust_lo": lo, "trust_hi": hi, "stage0": {}, "every_stage": {}}
    if tool == "almat" and cfg.get("almat_adaptive_lo"):
        out["every_stage"] = {"adaptive_lo": {"fraction": cfg["almat_adaptive_lo"]}}
    if units == "calibrated":
        out["trust_units"] = "calibrated"
        if tuned and tuned.get("iteration0_fraction"):
            out["stage0"] = {"adaptive_lo": {"fraction": tuned["iteration0_fraction"]}}
    return out


def campaign_config(problem: Problem, cfg: dict[str, Any], seed: int, tool: str = "almat") -> dict[str, Any]:
    """The benchmark's campaign: the demo's learner (CHGNet fine-tuned for ``almat-foundation``), the
    problem's oracle, initial data and schedule, the tool's trust levels."""
    demo = yaml.safe_load(DEMO.read_text())
    stages = problem.schedule[: cfg["iterations"]] if cfg["iterations"] else problem.schedule
    structures = [demo["structures"][0] if s == "bulk:Cu" else {"file": str(ROOT / "tests" / "test_data" /
                                                                            "structures" / s)}
                  for s in problem.structures]
    oracle = demo["oracle"] if problem.oracle == "emt" else {
        "calculator": {"module": "tblite.ase", "class": "TBLite", "kwargs": {"method": "GFN1-xTB", "verbosity": 0}}}
    trust = trust_settings(problem, cfg, tool)
    stage0, every_stage = trust.pop("stage0"), trust.pop("every_stage")
    sampler = {k: v for k, v in demo["sampler"].items() if k not in ("temperatures",)}
    sampler.update({"steps": problem.md_steps, "timestep_fs": problem.timestep_fs, "sample_every": problem.sample_every,
                    **trust, "seed": seed, "stages": [
                        {"temperatures": list(st.temperatures), "ensemble": st.ensemble,
                         **({"pressures": list(st.pressures_bar), "pressure_unit": "bar"} if st.pressures_bar else {}),
                         **(stage0 if i == 0 else {}), **every_stage,
                         "convergence": {"max_iterations": 1}} for i, st in enumerate(stages)]})
    learner = {**demo["learner"], "hyperparameters": {**demo["learner"]["hyperparameters"]}}
    if tool == "almat-foundation":
        learner = json.loads(json.dumps(cfg.get("foundation") or FOUNDATION_FULL))
    learner["seed"] = seed  # each benchmark seed also seeds the members, as DP-GEN's seed fix does its models
    return {
        "name": f"peer-{problem.name}-{'foundation-' if tool == 'almat-foundation' else ''}{seed}",
        "description": "benchmarks/peer_dpgen.py",
        "structures": structures, "oracle": oracle,
        "initial": {"n_per_structure": problem.n_initial, "rattle_std": problem.rattle_std,
                    "max_strain": problem.max_strain, "seed": 0},
        "learner": learner,
        "sampler": sampler,
        "selection": {**demo["selection"], "max_select": problem.max_select, "seed": seed},
        "convergence": {**demo["convergence"], "max_iterations": len(stages), "seed": seed},
    }


def run_almat(problem: Problem, data: SharedData, cfg: dict[str, Any], seed: int, folder: Path, log,
              tool: str = "almat") -> dict[str, Any]:
    """One campaign in a fresh store (no label reuse across seeds or reruns), then its iterations scored."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = campaign_config(problem, cfg, seed, tool)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "ALMAT_DB_PATH": str(folder / "db"), "ALMAT_RUN_DIR": str(folder / "runs"),
           "ALMAT_NUM_THREADS": str(cfg["threads"]), "OMP_NUM_THREADS": str(cfg["threads"])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(folder / "almat.log", "w") as fh:
        proc = subprocess.run([str(ALMAT), "run", str(path)], env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = {"tool": tool, "problem": problem.name, "seed": seed, "folder": str(folder), "campaign": config["name"],
           "wall_s": wall, "cpu_s": cpu, "returncode": proc.returncode, "iterations": [],
           "trust": {k: v for k, v in config["sampler"].items() if k.startswith("trust")}}
    if proc.returncode != 0:
        run["failure"] = {"message": f"almat run exited {proc.returncode}", "log_tail": tail(folder / "almat.log")}
    try:
        run["iterations"], run["oracle_calls_total"] = score_iterations(config["name"], folder / "db", data,
                                                                         start, wall, cpu)
        run["iteration0_deviations"] = walker_deviations(config["name"], folder / "db")
    except Exception as exc:  # noqa: BLE001 - the results so far are kept
        run.setdefault("failure", {"message": f"scoring failed: {exc}", "log_tail": tail(folder / "almat.log")})
    for it in run["iterations"]:
        log(f"  {tool} it {it['iteration']}: {it['train_labels']} trained, {it['oracle_calls']} oracle calls, "
            f"force RMSE {it['force_rmse']:.4f} eV/Å, candidates {it['candidate_ratio']:.2f}")
    return run


def walker_deviations(name: str, db_path: Path, iteration: int = 0) -> list[list[float]]:
    """The max force deviation (eV/Å) of every frame an iteration explored, one list per MD walker in step
    order (its stored trajectories): what ``peer_dpgen.tune_trust`` reads."""
    os.environ["ALMAT_DB_PATH"] = str(db_path)
    from almat.stores import CampaignDB, get_blob

    with CampaignDB.from_settings() as db:
        doc = db.iterations.query_one({"campaign": name, "iteration": iteration})
        if doc is None:
            return []
        return [[float(d) for d in get_blob(db.data, blob)["model_deviation"]]
                for blob in doc.get("trajectory_blob_ids") or []]


def _unix(stamp) -> float:
    """A stored ``created_at`` (naive datetimes are UTC) as Unix time."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def score_iterations(name: str, db_path: Path, data: SharedData, start: float, wall: float, cpu: float):
    """Per iteration: labels it trained on, oracle calls paid before it (initial labels and the labels and
    calibration labels of earlier iterations; copies of earlier labels are free), test errors of its
    committee, ratios, and when the committee was ready (its last model stored)."""
    os.environ["ALMAT_DB_PATH"] = str(db_path)
    from almat.learner.committee import Committee
    from almat.stores import CampaignDB

    frames = [a for frames in data.test for a in frames]
    out = []
    with CampaignDB.from_settings() as db:
        docs = sorted(db.iterations.query({"campaign": name}), key=lambda d: d["iteration"])
        labels = [lab for lab in db.labels.query({"campaign": name}) if not lab.get("reused_from")]
        for doc in docs:
            calls = sum(1 for lab in labels if (lab.get("iteration") if lab.get("iteration") is not None else -1)
                        < doc["iteration"])
            ready = max(_unix(m["created_at"]) for m in db.models.query({"model_id": {"$in": doc["model_ids"]}}))
            errors = test_errors(Committee.from_store(db, doc["model_ids"]), frames)
            out.append({"iteration": doc["iteration"], "train_labels": doc["n_train_labels"], "oracle_calls": calls,
                        **errors, "candidate_ratio": doc["candidate_ratio"], "accurate_ratio": doc["accurate_ratio"],
                        "failed_ratio": doc["failed_ratio"], "converged": bool(doc.get("converged")),
                        "calibrated_fraction": doc.get("calibrated_fraction"), "wall_s_cumulative": ready - start,
                        "trust_lo": doc.get("trust_lo"), "trust_hi": doc.get("trust_hi"),
                        "trust_factor": doc.get("trust_factor"),
                        "labels_this_iteration": sum(1 for lab in labels if lab.get("iteration") == doc["iteration"]),
                        "idle_s": None})
        total = len(labels)
    for it in out:  # almat records no CPU time per iteration here: the run's CPU share by wall time
        it["cpu_s_cumulative"] = cpu * it["wall_s_cumulative"] / wall if wall else None
    return out, total


def test_errors(committee, frames) -> dict[str, float]:
    pred = committee.predict(frames)
    ref_f = np.concatenate([a.get_forces() for a in frames])
    mean_f = np.concatenate([pred.mean_forces(i) for i in range(len(frames))])
    de = [(pred.mean_energy[i] - a.get_potential_energy()) / len(a) for i, a in enumerate(frames)]
    return {"force_rmse": float(np.sqrt(np.mean((mean_f - ref_f) ** 2))),
            "energy_rmse_per_atom": float(np.sqrt(np.mean(np.square(de)))), "n_test": len(frames)}


def control_committee(problem: Problem, data: SharedData, sets: dict[int, list], cfg: dict[str, Any], log, *,
                      tool: str, model: str, train_member, n_models: int) -> dict[str, Any]:
    """A tool's committee (``n_models`` members, ``train_member(frames, seed)`` each) trained on each random label
    set and scored on the shared test frames."""
    import torch

    from almat.learner.committee import Committee

    torch.set_num_threads(cfg["threads"])
    frames_test = [a for frames in data.test for a in frames]
    out = {"tool": tool, "model": model, "problem": problem.name, "seed": cfg["seeds"][0],
           "train_labels": [], "force_rmse": [], "energy_rmse_per_atom": [], "wall_s": []}
    for size, per_structure in sorted(sets.items()):
        t0 = time.time()
        frames = [a for fs in per_structure for a in fs]
        models = [train_member(frames, k) for k in range(n_models)]
        errors = test_errors(Committee(models, [f"c{k}" for k in range(len(models))]), frames_test)
        out["train_labels"].append(size)
        out["force_rmse"].append(errors["force_rmse"])
        out["energy_rmse_per_atom"].append(errors["energy_rmse_per_atom"])
        out["wall_s"].append(time.time() - t0)
        log(f"  control {model}, {size} random labels: force RMSE {errors['force_rmse']:.4f} eV/Å")
    return out


def control_mace(problem: Problem, data: SharedData, sets: dict[int, list], cfg: dict[str, Any], log) -> dict[str, Any]:
    """The campaign's committee (same hyperparameters, from scratch) trained on each random label set."""
    from almat.learner.mace import MaceHyperParameters, train_mace

    hp = MaceHyperParameters(**yaml.safe_load(DEMO.read_text())["learner"]["hyperparameters"])
    return control_committee(problem, data, sets, cfg, log, tool="almat", model="MACE committee",
                             train_member=lambda frames, k: train_mace(frames, [str(i) for i in range(len(frames))],
                                                                       hp, seed=k).model,
                             n_models=cfg["mace_control_models"])


def control_chgnet(problem: Problem, data: SharedData, sets: dict[int, list], cfg: dict[str, Any], log
                   ) -> dict[str, Any]:
    """almat-foundation's committee (CHGNet fine-tuned from its bundled weights, same settings) trained on
    each random label set."""
    from almat.learner.chgnet import finetune_chgnet
    from almat.learner.hyperparameters import ChgnetHyperParameters

    learner = cfg.get("foundation") or FOUNDATION_FULL
    hp = ChgnetHyperParameters(**learner["hyperparameters"])
    return control_committee(problem, data, sets, cfg, log, tool="almat-foundation", model="CHGNet fine-tuned",
                             train_member=lambda frames, k: finetune_chgnet(
                                 frames, [str(i) for i in range(len(frames))], hp, seed=k).model,
                             n_models=learner["n_models"])


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
