"""DeePMD committee members (deepmd-kit 3.x, TensorFlow backend; ``pip install almat[deepmd]``).

- **Training** is deepmd's own: ``dp --tf train`` then ``dp --tf freeze`` in a child process (``python -m
  almat.learner.deepmd DIR``: one TensorFlow import for both, its threads the job's), on the labels written as
  deepmd's ``npy`` systems (energy, forces, and virials where the labels have stresses). Members differ by
  seed: network initialisation, batch order and their train/validation split. A member continues from the
  previous iteration's with ``--init-frz-model`` when the elements and ``sel`` match.
- **Prediction** is ``deepmd.infer.DeepPot`` on the frozen graph: frames of one composition and atom order go
  in one call, member after member; stresses are ``-virial / volume``. Descriptors are
  ``DeepPot.eval_descriptor``.
- **Storage** is data, not code: deepmd's backend-independent serialisation of the model (its input JSON,
  ``model_def_script``, and every weight as an array), written as JSON plus ``.npz`` arrays and read back with
  ``allow_pickle=False``; the frozen graph is rebuilt from it (``deserialize_to_file``). Anything else is
  refused (``UnsafeModelError``). ``almat export-model`` hands out that frozen graph, which LAMMPS'
  ``pair_style deepmd`` reads.

Only ``import deepmd`` (light) runs at import, so that a missing extra is one line when the Maker is built;
TensorFlow is imported where a model is first used.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import deepmd  # noqa: F401 - the extra's check: ``pip install almat[deepmd]``
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as Z_OF, chemical_symbols
from ase.neighborlist import neighbor_list

from almat.learner.base import CommitteePrediction, Learner, Training
from almat.learner.deepmd_hyperparameters import DeepmdHyperParameters
from almat.learner.models import TrainResult, UnsafeModelError, split_indices

#: the first bytes of a stored DeePMD model (then an ``.npz``: ``__json__`` and the weight arrays)
MAGIC = b"almat-deepmd/1\n"
ARCHITECTURE = "DeePMD"


# ---------------------------------------------------------------- the stored form: JSON + arrays


def pack(serialized: dict) -> bytes:
    """deepmd's serialised model (nested dicts, lists, numbers, strings, arrays) as ``MAGIC`` + npz bytes."""
    arrays: dict[str, np.ndarray] = {}

    def plain(x):
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise UnsafeModelError("an object array cannot be stored")
            name = f"a{len(arrays)}"
            arrays[name] = x
            return {"@array": name}
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise UnsafeModelError(f"cannot store a {type(x).__name__} in a DeePMD model")

    text = json.dumps(plain(serialized)).encode()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, __json__=np.frombuffer(text, dtype=np.uint8), **arrays)
    return MAGIC + buffer.getvalue()


def unpack(blob: bytes) -> dict:
    """``pack``'s bytes back to deepmd's serialised model; anything else is an ``UnsafeModelError``."""
    if not isinstance(blob, (bytes, bytearray)) or not blob.startswith(MAGIC):
        raise UnsafeModelError(f"not an almat DeePMD model (expected it to start with {MAGIC!r})")
    try:
        with np.load(io.BytesIO(bytes(blob[len(MAGIC):])), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tree = json.loads(arrays.pop("__json__").tobytes().decode())
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy (object arrays refused), json, unicode errors
        raise UnsafeModelError(f"not an almat DeePMD model [{type(exc).__name__}: {exc}]") from None

    def restore(x):
        if isinstance(x, dict):
            if set(x) == {"@array"}:
                if x["@array"] not in arrays:
                    raise UnsafeModelError(f"missing array {x['@array']!r}")
                return arrays[x["@array"]]
            return {k: restore(v) for k, v in x.items()}
        return [restore(v) for v in x] if isinstance(x, list) else x

    model = restore(tree)
    inner = model.get("model") if isinstance(model, dict) else None
    if not isinstance(inner, dict) or inner.get("@class") != "Model" or not isinstance(model.get("model_def_script"),
                                                                                        dict):
        raise UnsafeModelError("not a deepmd model: no 'model' of @class Model and its 'model_def_script'")
    type_map = inner.get("type_map")
    if not isinstance(type_map, list) or not all(isinstance(s, str) and s in Z_OF for s in type_map):
        raise UnsafeModelError(f"not a deepmd model: bad type_map {type_map!r}")
    return model


def _configure_threads() -> None:
    """TensorFlow's threads (read once, at its import): this process's torch threads, unless set already."""
    import torch

    threads = str(torch.get_num_threads())
    for var in ("DP_INTRA_OP_PARALLELISM_THREADS", "TF_INTRA_OP_PARALLELISM_THREADS"):
        os.environ.setdefault(var, threads)
    for var in ("DP_INTER_OP_PARALLELISM_THREADS", "TF_INTER_OP_PARALLELISM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("DP_INFER_BATCH_SIZE", "4096")  # atoms a DeepPot call (set: deepmd warns otherwise)


class DeepmdModel:
    """One member: its stored bytes (``pack``) and, built on first use, the frozen graph and ``DeepPot``.
    Immutable, so copies share it."""

    def __init__(self, blob: bytes, serialized: dict | None = None):
        self.blob = bytes(blob)
        serialized = unpack(self.blob) if serialized is None else serialized
        script = serialized["model_def_script"]
        self.type_map: list[str] = list(serialized["model"]["type_map"])
        self.atomic_numbers = np.array([Z_OF[s] for s in self.type_map])
        descriptor = script.get("descriptor", {})
        self.sel = [int(s) for s in descriptor.get("sel", [])]
        self.rcut = float(descriptor.get("rcut", 0.0))
        self.descriptor_width = int(descriptor.get("neuron", [0])[-1]) * int(descriptor.get("axis_neuron", 1))
        fitting = script.get("fitting_net", {})
        #: what must match for a training to continue from this model (``dp train --init-frz-model``)
        self.signature = (descriptor.get("type"), self.rcut, float(descriptor.get("rcut_smth", 0.0)),
                          list(descriptor.get("neuron", [])), descriptor.get("axis_neuron"), list(fitting.get("neuron", [])))
        self.almat_architecture = {"class": ARCHITECTURE, "format": MAGIC.decode().strip(),
                                   "kwargs": {"type_map": self.type_map, "descriptor": descriptor.get("type")}}
        self._serialized = serialized
        self._dir: str | None = None
        self._pot = None

    def __deepcopy__(self, memo):
        return self

    def n_parameters(self) -> int:
        count = 0

        def walk(x):
            nonlocal count
            if isinstance(x, dict):
                for k, v in x.items():
                    if k == "@variables" and isinstance(v, dict):
                        count += sum(a.size for a in v.values() if isinstance(a, np.ndarray))
                    else:
                        walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        walk(self._serialized["model"])
        return int(count)

    def frozen_graph(self) -> Path:
        """The frozen TensorFlow graph (``.pb``) rebuilt from the stored weights, in a folder of its own."""
        if self._dir is None:
            _configure_threads()
            from deepmd.tf.utils.serialization import deserialize_to_file

            folder = tempfile.mkdtemp(prefix="almat-deepmd-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            deserialize_to_file(str(Path(folder) / "model.pb"), self._serialized)
            _mark_original(Path(folder) / "model.pb")
            self._dir = folder
        return Path(self._dir) / "model.pb"

    def pot(self):
        """deepmd's ``DeepPot`` of the frozen graph."""
        if self._pot is None:
            from deepmd.infer import DeepPot

            self._pot = DeepPot(str(self.frozen_graph()))
        return self._pot


def _mark_original(pb: Path) -> None:
    """Add the ``model_type`` node that ``dp freeze`` writes and ``deserialize_to_file`` leaves out, so that the
    rebuilt graph can start a training (``dp train --init-frz-model``) as well as run MD."""
    from deepmd.tf.env import tf

    graph_def = tf.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    if any(node.name == "model_type" for node in graph_def.node):
        return
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        tf.constant("original_model", name="model_type")
        pb.write_bytes(graph.as_graph_def().SerializeToString())


# ---------------------------------------------------------------- training: data, input.json, dp train


def type_indices(atoms: Atoms, type_map: list[str]) -> np.ndarray:
    """deepmd's atom types of a frame (indices into ``type_map``); elements the model does not know raise."""
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(type_map))
    if unknown:
        raise ValueError(f"the DeePMD model knows {', '.join(type_map)}, not {', '.join(unknown)}")
    index = {s: i for i, s in enumerate(type_map)}
    return np.array([index[s] for s in symbols], dtype=int)


def _groups(atoms_list: Sequence[Atoms], type_map: list[str]) -> dict[tuple, list[int]]:
    """Frame indices by their sequence of atom types (one deepmd system, or one ``DeepPot.eval`` call, each)."""
    groups: dict[tuple, list[int]] = {}
    for i, atoms in enumerate(atoms_list):
        groups.setdefault(tuple(type_indices(atoms, type_map).tolist()), []).append(i)
    return groups


def write_systems(folder: Path, atoms_list: Sequence[Atoms], type_map: list[str]) -> list[str]:
    """The labelled frames as deepmd ``npy`` systems under ``folder`` (one per atom-type sequence)."""
    paths = []
    for k, (types, idx) in enumerate(_groups(atoms_list, type_map).items()):
        frames = [atoms_list[i] for i in idx]
        path = folder / f"sys_{k:03d}"
        (path / "set.000").mkdir(parents=True)
        (path / "type.raw").write_text("".join(f"{t}\n" for t in types))
        (path / "type_map.raw").write_text("".join(f"{s}\n" for s in type_map))
        arrays = {"coord": [a.positions.reshape(-1) for a in frames], "box": [a.cell.array.reshape(-1) for a in frames],
                  "energy": [a.get_potential_energy() for a in frames],
                  "force": [np.asarray(a.get_forces()).reshape(-1) for a in frames]}
        if all("stress" in (a.calc.results if a.calc else {}) for a in frames):
            arrays["virial"] = [(-a.get_stress(voigt=False) * a.get_volume()).reshape(-1) for a in frames]
        for name, rows in arrays.items():
            np.save(path / "set.000" / f"{name}.npy", np.array(rows, dtype=float))
        paths.append(str(path))
    return paths


def neighbour_sel(atoms_list: Sequence[Atoms], type_map: list[str], rcut: float) -> list[int]:
    """1.5x the most neighbours of each element any atom has within ``rcut``, rounded up to a multiple of 4."""
    most = np.zeros(len(type_map), dtype=int)
    for atoms in atoms_list:
        i, j = neighbor_list("ij", atoms, rcut)
        types = type_indices(atoms, type_map)
        for t in range(len(type_map)):
            counts = np.bincount(i[types[j] == t], minlength=len(atoms))
            most[t] = max(most[t], counts.max(initial=0))
    return [int(4 * math.ceil(max(1.5 * m, 4) / 4)) for m in most]


def input_script(hp: DeepmdHyperParameters, type_map: list[str], sel: list[int], seed: int, train: list[str],
                 valid: list[str], steps: int, virial: bool) -> dict:
    """deepmd's ``input.json`` of one member."""
    seed = int(seed) % (2**31)
    loss = {"type": "ener", "start_pref_e": hp.start_pref_e, "limit_pref_e": hp.limit_pref_e,
            "start_pref_f": hp.start_pref_f, "limit_pref_f": hp.limit_pref_f,
            "start_pref_v": hp.start_pref_v if virial else 0.0, "limit_pref_v": hp.limit_pref_v if virial else 0.0}
    # deepmd saves its checkpoint on a display step only: the display interval divides the steps (about 20 rows)
    disp = max(d for d in range(1, max(1, steps // 20) + 1) if steps % d == 0)
    training = {"training_data": {"systems": train, "batch_size": hp.batch_size}, "numb_steps": steps,
                "seed": seed, "disp_file": "lcurve.out", "disp_freq": disp, "save_freq": steps}
    if valid:
        training["validation_data"] = {"systems": valid, "batch_size": hp.batch_size, "numb_btch": 1}
    return {"model": {"type_map": type_map,
                      "descriptor": {"type": hp.descriptor, "rcut": hp.rcut, "rcut_smth": hp.rcut_smth, "sel": sel,
                                     "neuron": list(hp.neuron), "axis_neuron": hp.axis_neuron, "seed": seed,
                                     "precision": hp.precision},
                      "fitting_net": {"neuron": list(hp.fitting_neuron), "seed": seed + 1, "precision": hp.precision}},
            "learning_rate": {"type": "exp", "start_lr": hp.start_lr, "stop_lr": hp.stop_lr,
                              "decay_steps": hp.decay_steps or max(1, steps // 20)},
            "loss": loss, "training": training}


def _history(lcurve: Path) -> list[dict[str, float]]:
    """deepmd's learning curve (``lcurve.out``) as almat's history: step and training loss (and validation)."""
    if not lcurve.is_file():
        return []
    lines = lcurve.read_text().splitlines()
    names = next((ln.lstrip("#").split() for ln in lines if ln.startswith("# step")), [])
    rows = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            values = dict(zip(names, map(float, line.split())))
            row = {"epoch": int(values.get("step", 0)), "train_loss": values.get("rmse_trn", math.nan)}
            if "rmse_val" in values:
                row["valid_loss"] = values["rmse_val"]
            rows.append(row)
    return rows


def _start(run: Training, zs: list[int]) -> tuple[DeepmdModel | None, list[int] | None]:
    """The previous member to continue from (same elements and network shape) and its ``sel``, or (None,
    hp.sel)."""
    init, hp = run.init_model, run.hp
    shape = (hp.descriptor, hp.rcut, hp.rcut_smth, list(hp.neuron), hp.axis_neuron, list(hp.fitting_neuron))
    if isinstance(init, DeepmdModel) and init.atomic_numbers.tolist() == zs and init.signature == shape:
        return init, init.sel
    return None, run.hp.sel


def _fit(run: Training) -> TrainResult:
    """One member: deepmd's ``dp train`` and ``dp freeze`` in a child process on the labels' npy systems."""
    import torch

    start, hp, atoms_list = time.perf_counter(), run.hp, run.atoms_list
    rng = np.random.default_rng(run.seed)
    train_idx, valid_idx = split_indices(len(atoms_list), hp.valid_fraction, rng)
    zs = sorted({int(z) for a in atoms_list for z in a.numbers})
    type_map = [chemical_symbols[z] for z in zs]
    init, sel = _start(run, zs)
    sel = sel or neighbour_sel([atoms_list[i] for i in train_idx], type_map, hp.rcut)
    steps = hp.warm_start_steps if init is not None else hp.numb_steps
    with tempfile.TemporaryDirectory(prefix="almat-dp-train-") as tmp:
        folder = Path(tmp)
        train = write_systems(folder / "train", [atoms_list[i] for i in train_idx], type_map)
        valid = write_systems(folder / "valid", [atoms_list[i] for i in valid_idx], type_map) if len(valid_idx) else []
        virial = all(Path(p, "set.000", "virial.npy").is_file() for p in train)
        script = input_script(hp, type_map, sel, run.seed, train, valid, steps, virial)
        (folder / "input.json").write_text(json.dumps(script, indent=1))
        if init is not None:
            shutil.copy(init.frozen_graph(), folder / "init.pb")
        _run_worker(folder, torch.get_num_threads())
        history = _history(folder / "lcurve.out")
        metrics = json.loads((folder / "metrics.json").read_text())
        blob = (folder / "model.almat").read_bytes()
    for row in history:
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"DeePMD training diverged at step {row['epoch']} (seed {run.seed}); lower start_lr")
        if run.progress is not None:
            run.progress(row["epoch"], steps, row["train_loss"])
    model = DeepmdModel(blob)
    return TrainResult(model=model, train_ids=[run.ids[i] for i in train_idx], valid_ids=[run.ids[i] for i in valid_idx],
                       metrics=metrics, epochs=steps, n_parameters=model.n_parameters(),
                       wall_time=time.perf_counter() - start, history=history)


def _run_worker(folder: Path, threads: int) -> None:
    env = {**os.environ, "DP_INTRA_OP_PARALLELISM_THREADS": str(threads), "TF_INTRA_OP_PARALLELISM_THREADS": str(threads),
           "DP_INTER_OP_PARALLELISM_THREADS": "1", "TF_INTER_OP_PARALLELISM_THREADS": "1",
           "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(folder / "dp.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "almat.learner.deepmd", str(folder)], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not (folder / "model.almat").is_file():
        tail = (folder / "dp.log").read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"dp train failed (exit {done.returncode}): {' | '.join(tail)}")


def _worker(folder: Path) -> None:
    """In the child: train, freeze, measure the validation errors, store (``python -m almat.learner.deepmd DIR``)."""
    from deepmd.main import main
    from deepmd.tf.utils.serialization import serialize_from_file

    os.chdir(folder)
    extra = ["--init-frz-model", "init.pb"] if Path("init.pb").is_file() else []
    main(["--tf", "train", "input.json", "--skip-neighbor-stat", *extra])
    main(["--tf", "freeze", "-c", ".", "-o", "model.pb"])
    serialized = serialize_from_file("model.pb")
    model = DeepmdModel(pack(serialized))
    model._dir = str(folder)  # the frozen graph is there already
    script = json.loads(Path("input.json").read_text())["training"]
    systems = script.get("validation_data", script["training_data"])["systems"]
    Path("metrics.json").write_text(json.dumps(_errors(model, systems)))
    Path("model.almat").write_bytes(model.blob)


def _errors(model: DeepmdModel, systems: list[str]) -> dict[str, float]:
    """Energy RMSE per atom and force RMSE of ``model`` on deepmd npy systems."""
    e_sq, f_sq, n_e, n_f = 0.0, 0.0, 0, 0
    for system in systems:
        path = Path(system)
        types = [int(t) for t in (path / "type.raw").read_text().split()]
        data = {k: np.load(path / "set.000" / f"{k}.npy") for k in ("coord", "box", "energy", "force")}
        e, f, _ = model.pot().eval(data["coord"], data["box"], types)
        e_sq += float(np.sum(((e.reshape(-1) - data["energy"]) / len(types)) ** 2))
        f_sq += float(np.sum((f.reshape(len(e), -1) - data["force"]) ** 2))
        n_e, n_f = n_e + len(e), n_f + data["force"].size
    return {"energy_rmse_per_atom": math.sqrt(e_sq / max(n_e, 1)), "force_rmse": math.sqrt(f_sq / max(n_f, 1))}


# ---------------------------------------------------------------- prediction


def predict_deepmd(models: Sequence[DeepmdModel], atoms_list: Sequence[Atoms], batch_size: int = 16,
                   stress: bool = False):
    """Energies ``[n_models, n_frames]``, forces per frame ``[n_models, n_atoms, 3]`` and (``stress``) stresses
    ``[n_models, n_frames, 6]`` (Voigt, eV/Å³, ASE's sign) of ``atoms_list``: frames of one atom-type sequence
    go ``batch_size`` a ``DeepPot.eval`` call."""
    from ase.stress import full_3x3_to_voigt_6_stress

    energies = np.zeros((len(models), len(atoms_list)))
    forces = [np.zeros((len(models), len(a), 3)) for a in atoms_list]
    stresses = np.zeros((len(models), len(atoms_list), 6)) if stress else None
    for types, idx in _groups(atoms_list, models[0].type_map).items():
        for chunk in (idx[i:i + batch_size] for i in range(0, len(idx), batch_size)):
            frames = [atoms_list[i] for i in chunk]
            coords = np.array([a.positions.reshape(-1) for a in frames])
            periodic = all(a.pbc.all() for a in frames)
            cells = np.array([a.cell.array.reshape(-1) for a in frames]) if periodic else None
            for m, model in enumerate(models):
                e, f, v = model.pot().eval(coords, cells, list(types))
                for k, i in enumerate(chunk):
                    energies[m, i] = float(e[k].sum())
                    forces[i][m] = f[k].reshape(-1, 3)
                    if stress:
                        stresses[m, i] = full_3x3_to_voigt_6_stress(-v[k].reshape(3, 3) / frames[k].get_volume())
    return energies, forces, stresses


def _no_fresh_model(kwargs: dict) -> Any:
    raise UnsafeModelError("a DeePMD model is read from its stored weights (almat.learner.deepmd), never built empty")


class DeepmdLearner(Learner):
    """DeePMD (``se_e2_a``) trained from scratch with deepmd-kit's TensorFlow backend."""

    kind = "deepmd"
    hyperparameters = DeepmdHyperParameters
    architectures = {ARCHITECTURE: _no_fresh_model}

    def fit(self, run: Training) -> TrainResult:
        return _fit(run)

    def predict(self, committee, atoms_list, batch_size=16, stress=False) -> CommitteePrediction:
        return CommitteePrediction(*predict_deepmd(committee.models, atoms_list, batch_size=batch_size, stress=stress))

    def descriptors(self, model, atoms_list, batch_size=16, num_layers=-1, device="cpu") -> list[np.ndarray]:
        """deepmd's descriptor (``DeepPot.eval_descriptor``: the ``se_e2_a`` invariants each atom's fitting net
        sees)."""
        out: list[np.ndarray | None] = [None] * len(atoms_list)
        for types, idx in _groups(atoms_list, model.type_map).items():
            frames = [atoms_list[i] for i in idx]
            coords = np.array([a.positions.reshape(-1) for a in frames])
            cells = np.array([a.cell.array.reshape(-1) for a in frames]) if all(a.pbc.all() for a in frames) else None
            desc = model.pot().eval_descriptor(coords, cells, list(types))
            for k, i in enumerate(idx):
                out[i] = np.asarray(desc[k], dtype=float).reshape(len(types), -1)
        return out

    def descriptor_size(self, model, num_layers=-1) -> int:
        return model.descriptor_width

    def model_to_bytes(self, model: DeepmdModel) -> bytes:
        return model.blob

    def model_from_bytes(self, blob: bytes, device: str = "cpu") -> DeepmdModel:
        return DeepmdModel(blob)

    def frozen_model(self, model: DeepmdModel) -> bytes:
        """The frozen graph LAMMPS' ``pair_style deepmd`` reads (``almat export-model``)."""
        return model.frozen_graph().read_bytes()

    def export(self, model: DeepmdModel) -> tuple[bytes, str]:
        return self.frozen_model(model), "deepmd frozen graph (.pb; LAMMPS pair_style deepmd, dp test)"


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
