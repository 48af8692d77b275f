"""The production model (``finish:``): one model trained on all of a campaign's labels by a library's own trainer.

Exploration committees are small and fast on purpose; the model to ship is trained once, at the end, with the
trainer's usual options (a larger model, its EMA/SWA schedule, its own reference energies). A trainer is a
``ProductionTrainer`` named in ``almat.learner.registry.PRODUCTION_TRAINERS``: it checks its options before
any job runs, trains in a scratch folder, and hands back the model in almat's safe format (state dict plus
architecture record) together with the files it wrote for users (``.model`` and its compiled form).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Sequence

import numpy as np
from ase import Atoms
from ase.io import write as ase_write

from almat.learner.mace_finetune import mace_record, read_foundation
from almat.learner.models import model_from_architecture
from almat.learner.registry import learner_of
from almat.stores.ledger import note_device
from almat.threads import job_threads


@dataclass
class ProductionResult:
    """What a production trainer hands back."""

    model: Any  # the model in almat's safe format (``model.almat_architecture``)
    files: dict[str, bytes]  # file name -> bytes: what users get (``almat export-model``)
    metrics: dict[str, float]  # errors on the held-out frames (calibration frames of the campaign)
    options: dict[str, Any]  # the options the trainer ran with (defaults included)
    wall_time: float
    log_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ProductionTrainer:
    """The interface: ``check_options(options)`` (one-line ``ValueError``) and ``train(...)``."""

    name: ClassVar[str] = ""

    def check_options(self, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def train(self, train: Sequence[Atoms], test: Sequence[Atoms], options: dict[str, Any], workdir: Path,
              seed: int = 0) -> ProductionResult:
        raise NotImplementedError


def held_out_errors(model, frames: Sequence[Atoms]) -> dict[str, float]:
    """Force RMSE (eV/Å), energy RMSE per atom (eV/atom) and the worst atomic force error of ``model`` on
    labelled frames (their ``atoms.calc`` results); empty without frames."""
    if not frames:
        return {}
    one = SimpleNamespace(models=[model], device="cpu", cache={})  # a committee of one, for its learner's predict
    pred = learner_of(model.almat_architecture["class"]).predict(one, list(frames))
    df = np.concatenate([(pred.forces[i][0] - f.get_forces()).ravel() for i, f in enumerate(frames)])
    de = np.array([(pred.energies[0, i] - f.get_potential_energy()) / len(f) for i, f in enumerate(frames)])
    worst = max(float(np.linalg.norm(pred.forces[i][0] - f.get_forces(), axis=1).max()) for i, f in enumerate(frames))
    return {"force_rmse": float(np.sqrt(np.mean(df**2))), "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2))),
            "max_force_error": worst, "n_frames": float(len(frames))}


# ------------------------------------------------------------------ mace_run_train

#: almat's defaults for ``mace_run_train`` (any of them may be overridden in ``finish.options``): a model larger
#: than the exploration committee's, MACE's EMA and SWA (stage two) schedule, E0s fitted by MACE itself
MACE_DEFAULTS: dict[str, Any] = {
    "model": "MACE", "num_channels": 64, "max_L": 1, "num_interactions": 2, "correlation": 3, "r_max": 5.0,
    "max_num_epochs": 200, "batch_size": 4, "valid_fraction": 0.1, "E0s": "average", "ema": True,
    "ema_decay": 0.99, "swa": True, "default_dtype": "float64", "device": "cpu", "error_table": "PerAtomRMSE",
}
#: options almat sets itself: the files and keys of the data it writes
MACE_OWN = ("name", "train_file", "test_file", "work_dir", "model_dir", "log_dir", "checkpoints_dir",
            "results_dir", "energy_key", "forces_key", "stress_key", "seed")
_KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress"}


def _mace_parser() -> argparse.ArgumentParser:
    from mace.tools import build_default_arg_parser  # mace's own option table, the truth for its version

    return build_default_arg_parser()


def write_training_file(frames: Sequence[Atoms], path: Path) -> int:
    """Labelled frames as extended XYZ under ``mace_run_train``'s ``REF_`` keys; how many were written."""
    out = []
    for atoms in frames:
        a = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info[_KEYS["energy_key"]] = float(atoms.get_potential_energy())
        a.arrays[_KEYS["forces_key"]] = np.asarray(atoms.get_forces(), dtype=float)
        if "stress" in (atoms.calc.results if atoms.calc is not None else {}):
            a.info[_KEYS["stress_key"]] = np.asarray(atoms.calc.results["stress"], dtype=float)
        a.info["config_type"] = "Default"
        out.append(a)
    ase_write(path, out, format="extxyz")
    return len(out)


def _flags(options: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    actions = {a.dest: a for a in parser._actions}
    argv = []
    for key, value in options.items():
        action = actions[key]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [f"--{key}"] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            argv += [] if value else [f"--{key}"]
        else:
            argv.append(f"--{key}={value}")
    return argv


def run_trainer(argv: list[str], workdir: Path, device: str = "cpu", log_name: str = "trainer.log") -> tuple[int, str]:
    """Run a trainer's command line as a child process in ``workdir`` with the job's threads, its output in
    ``log_name``; its exit code and the last 15 lines of that log. The child is waited for, so the running
    job's ledger entry counts its CPU time (its own children's included) in ``core_s``; on a GPU (``device``
    other than ``cpu``) the job is noted as a GPU job (``note_device``): torch in this process never sees it."""
    note_device(device)
    threads = str(job_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    log_path = Path(workdir) / log_name
    with open(log_path, "w") as log:
        run = subprocess.run(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    return run.returncode, "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])


class MaceRunTrain(ProductionTrainer):
    """MACE's own trainer (``mace_run_train``, run as a subprocess with ``MACE_DEFAULTS`` and the user's
    options); the stage-two (SWA) model when there is one."""

    name: ClassVar[str] = "mace_run_train"

    def check_options(self, options: dict[str, Any]) -> None:
        known = {a.dest for a in _mace_parser()._actions} - {"help", "config"}
        for key in options:
            if key in MACE_OWN:
                raise ValueError(f"finish.options.{key}: almat sets it (the data it writes); leave it out")
            if key not in known:
                raise ValueError(f"finish.options.{key}: mace_run_train has no option --{key}")

    def train(self, train, test, options, workdir, seed=0):
        self.check_options(options)
        start, workdir = time.perf_counter(), Path(workdir)
        write_training_file(train, workdir / "train.xyz")
        opts = {**MACE_DEFAULTS, **options}
        own = {"name": "production", "train_file": str(workdir / "train.xyz"), "work_dir": str(workdir),
               "seed": seed, **_KEYS}
        if test:
            write_training_file(test, workdir / "test.xyz")
            own["test_file"] = str(workdir / "test.xyz")
        argv = [sys.executable, "-m", "mace.cli.run_train", *_flags({**opts, **own}, _mace_parser())]
        code, tail = run_trainer(argv, workdir, opts["device"], "mace_run_train.log")
        if code != 0:
            raise RuntimeError(f"mace_run_train failed (exit {code}):\n{tail}")
        files = _mace_outputs(workdir)
        model = _safe_copy(read_foundation(workdir / _best(files)), opts["default_dtype"])
        return ProductionResult(model=model, files={name: (workdir / name).read_bytes() for name in files},
                                metrics=held_out_errors(model, test), options=opts,
                                wall_time=time.perf_counter() - start, log_tail=tail)


def _mace_outputs(workdir: Path) -> list[str]:
    files = sorted(p.name for p in workdir.glob("production*.model"))
    if not files:
        raise RuntimeError(f"mace_run_train wrote no model in {workdir}")
    return files


def _best(files: list[str]) -> str:
    """The model users should get: the stage-two (SWA) model when there is one, never the compiled form."""
    plain = [f for f in files if "compiled" not in f]
    staged = [f for f in plain if "stagetwo" in f]
    return (staged or plain)[0]


def _safe_copy(model, dtype: str):
    """The model rebuilt from its architecture record, holding its weights (what almat stores)."""
    state = model.state_dict()
    safe = model_from_architecture(mace_record(model, dtype))
    safe.load_state_dict(state, strict=True)
    return safe.eval()
