"""Fine-tune a MACE foundation model from a local ``.model`` file into committee members.

A foundation ``.model`` is a whole pickled module, as ``mace_run_train`` writes it: loading one runs code
from the file, so it is read only from the path the campaign file names. :func:`read_foundation` first
lists the file's pickled globals without unpickling anything and refuses a file whose globals do not all
come from mace, e3nn and torch (a planted ``os.system`` is refused); it then loads it with torch's
weights-only unpickler, allowed exactly those globals. This is a check for the wrong file, not a sandbox:
a MACE pickle legitimately holds ``torch.fx``'s graph-module rebuild, which compiles code from the file,
so a foundation file is trusted as mace itself trusts it. What almat
stores is never that pickle: each fine-tuned member is kept in the safe format of
:mod:`almat.learner.models` (class ``MACE``: the full MACE configuration as plain values, plus the state
dict) and reloaded with ``weights_only=True``.

Fine-tuning follows MACE's own (``mace.tools.finetuning_utils.load_foundations_elements``): the member has
the foundation's architecture restricted to the campaign's elements, and starts from its weights.

- ``naive``: one head; every weight moves on the campaign's labels.
- ``multihead``: a second head, ``pt_head``, keeps fitting replay configurations (their own labels, or the
  foundation's predictions where a frame has none, as MACE's pseudo-label replay) with the foundation's
  reference energies, while the campaign head fits the labels; the shared layers therefore do not forget
  what the foundation knew. The pt head is dropped after training (``remove_pt_head``).

Reference energies: the campaign's oracle has its own energy zero (EMT, xTB, another DFT setting). Before
training, the campaign head's E0s are refitted by least squares to what the foundation's interaction
energy leaves of the labelled energies, so the first epoch starts from the right energy scale.
"""

from __future__ import annotations

import copy
import os
import time
import zipfile
from importlib import import_module
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from almat.learner.base import Training
from almat.learner.hyperparameters import MaceFinetuneHyperParameters
from almat.learner.mace import (ATOM_FORCE_WEIGHT_KEY, MaceLearner, SingleModelCalculator, _loader, atoms_to_dataset,
                                fit, predict, training_context)
from almat.learner.models import TrainResult, model_from_architecture

#: module prefixes a foundation file's pickled globals may come from
ALLOWED_GLOBALS = ("mace.", "e3nn.", "torch.", "collections.OrderedDict", "numpy.core.multiarray.",
                   "numpy._core.multiarray.", "numpy.dtype", "numpy.ndarray", "builtins.set", "builtins.slice",
                   "builtins.frozenset", "copyreg._reconstructor", "builtins.object")
#: gate functions a record may name
_GATES = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "abs": torch.abs, "None": None}
_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_CLASS_KEYS = ("interaction_cls", "interaction_cls_first", "readout_cls")
CAMPAIGN_HEAD, PT_HEAD = "campaign", "pt_head"

_cache: dict[tuple, torch.nn.Module] = {}


def read_foundation(path: str | os.PathLike) -> torch.nn.Module:
    """The MACE model of a foundation file; a ``ValueError`` of one line for a missing file or one that is
    not a MACE model."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"foundation model file not found: {path}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a MACE model (not a torch archive)")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - a broken archive
        raise ValueError(f"{path} is not a MACE model ({type(exc).__name__})") from None
    foreign = sorted(g for g in found if not g.startswith(ALLOWED_GLOBALS))
    if foreign:
        raise ValueError(f"{path} is not a MACE model: it would unpickle {foreign[0]}"
                         + (f" and {len(foreign) - 1} other foreign objects" if len(foreign) > 1 else ""))
    import mace.modules  # noqa: F401 - before e3nn, and the classes the pickle names

    try:
        # torch's weights-only unpickler, allowed exactly the globals checked above and nothing else
        with torch.serialization.safe_globals([_resolve(name) for name in found]):
            model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a MACE model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                         ) from None
    if not isinstance(model, torch.nn.Module) or type(model).__name__ not in ("ScaleShiftMACE", "MACE"):
        raise ValueError(f"{path} is not a MACE model (it holds a {type(model).__name__})")
    if getattr(model, "cueq_config", None) is not None and getattr(model.cueq_config, "enabled", False):
        raise ValueError(f"{path} is a cuequivariance model: convert it with mace's convert_cueq_e3nn first")
    model.eval()
    _cache[key] = model
    return model


def _resolve(name: str):
    """The object a pickled global names (``module.sub.Class.Inner``): the longest importable module prefix,
    then attributes."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name}")


def foundation_elements(path: str | os.PathLike) -> list[str]:
    """The element symbols a foundation file was trained on."""
    return [chemical_symbols[int(z)] for z in read_foundation(path).atomic_numbers.tolist()]


# ------------------------------------------------------------------ the architecture record


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def mace_record(model: torch.nn.Module, dtype: str) -> dict:
    """The architecture record (class ``MACE``) of a single-head ``ScaleShiftMACE``: its full configuration as
    plain values (classes by name, irreps as text)."""
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    if "error" in config:
        raise ValueError(config["error"])
    kwargs = {}
    for key, value in config.items():
        if key in _CLASS_KEYS:
            kwargs[key] = f"{value.__module__}:{value.__qualname__}"
        elif key in _IRREPS_KEYS:
            kwargs[key] = None if value is None else str(value)
        elif key == "gate":
            name = getattr(value, "__name__", str(value))
            if name not in _GATES:
                raise ValueError(f"gate {name} is not one almat can store; known: {', '.join(_GATES)}")
            kwargs[key] = name
        elif key == "cueq_config":
            kwargs[key] = None
        else:
            kwargs[key] = _plain(value)
    return {"class": "MACE", "dtype": dtype, "kwargs": kwargs}


def _mace_class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not module.startswith("mace.modules"):
        raise ValueError(f"{name} is not a mace.modules class")
    obj = import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ValueError(f"{name} is not a torch module class")
    return obj


def build_mace(kwargs: dict) -> torch.nn.Module:
    """A ``ScaleShiftMACE`` from a ``MACE`` record's kwargs (see :func:`mace_record`)."""
    from mace import modules  # before e3nn (the other order fails on torch's weights-only load)
    from e3nn import o3

    kw = dict(kwargs)
    for key in _CLASS_KEYS:
        if kw.get(key) is not None:
            kw[key] = _mace_class(kw[key])
    for key in _IRREPS_KEYS:
        if kw.get(key) is not None:
            kw[key] = o3.Irreps(kw[key])
    if kw.get("gate") not in _GATES:
        raise ValueError(f"unknown gate {kw.get('gate')!r}")
    kw["gate"] = _GATES[kw["gate"]]
    kw["atomic_energies"] = np.asarray(kw["atomic_energies"], dtype=float)
    for key in ("atomic_inter_scale", "atomic_inter_shift"):
        kw[key] = np.asarray(kw[key], dtype=float)
    return modules.ScaleShiftMACE(**kw)


# ------------------------------------------------------------------ fine-tuning


def from_foundation(foundation: torch.nn.Module, zs: Sequence[int], heads: Sequence[str]) -> torch.nn.Module:
    """A model of the foundation's architecture on the elements ``zs`` and with ``heads``, holding the
    foundation's weights (every head starts as the foundation's readout)."""
    from mace.tools.finetuning_utils import load_foundations_elements
    from mace.tools.scripts_utils import extract_config_mace_model
    from mace.tools.utils import AtomicNumberTable

    known = [int(z) for z in foundation.atomic_numbers.tolist()]
    missing = [chemical_symbols[z] for z in zs if z not in known]
    if missing:
        raise ValueError(f"the foundation model was not trained on {', '.join(missing)}")
    config = extract_config_mace_model(foundation)
    e0 = np.atleast_2d(foundation.atomic_energies_fn.atomic_energies.detach().cpu().numpy())[0]
    e0 = np.array([e0[known.index(z)] for z in zs])
    config.update(atomic_numbers=list(zs), num_elements=len(zs), heads=list(heads),
                  atomic_energies=np.stack([e0] * len(heads)),
                  atomic_inter_scale=np.repeat(np.atleast_1d(config["atomic_inter_scale"])[:1], len(heads)),
                  atomic_inter_shift=np.repeat(np.atleast_1d(config["atomic_inter_shift"])[:1], len(heads)))
    model = type(foundation)(**config)
    max_l = max(ir.l for _, ir in config["hidden_irreps"])
    return load_foundations_elements(model, foundation, AtomicNumberTable(list(zs)), load_readout=True,
                                     use_shift=True, use_scale=True, max_L=max_l)


def _counts(dataset, n_elements: int) -> np.ndarray:
    return np.array([d.node_attrs.detach().cpu().numpy().sum(axis=0)[:n_elements] for d in dataset])


def refit_reference_energies(model: torch.nn.Module, dataset, head: int) -> np.ndarray:
    """Set the E0s of ``head`` by least squares to (labelled energy − the model's interaction energy) over
    ``dataset``; returns them. Elements missing from the data keep their E0s."""
    energies = model.atomic_energies_fn.atomic_energies
    table = torch.atleast_2d(energies)
    old = table[head].detach().clone()
    with torch.no_grad():
        table[head] = 0.0
    interaction = []
    for batch in _loader(dataset, 16, shuffle=False):
        out = model(batch.to_dict(), training=False, compute_force=False)
        interaction.extend(out["energy"].detach().cpu().numpy().tolist())
    counts = _counts(dataset, table.shape[1])
    residual = np.array([float(d.energy) for d in dataset]) - np.array(interaction)
    present = counts.sum(axis=0) > 0
    fitted = old.cpu().numpy().copy()
    solution, *_ = np.linalg.lstsq(counts[:, present], residual, rcond=None)
    fitted[present] = solution
    with torch.no_grad():
        table[head] = torch.as_tensor(fitted, dtype=table.dtype)
    return fitted


def _set_heads(dataset, head: int) -> None:
    for data in dataset:
        data["head"] = torch.tensor(head, dtype=torch.long)


def _replay_set(hp: MaceFinetuneHyperParameters, foundation, zs: Sequence[int], r_max: float,
                rng: np.random.Generator, head: int) -> list:
    """The pt head's replay configurations: frames of ``foundation.replay`` with only the campaign's elements,
    ``replay_samples`` of them, labelled by the file or else by the foundation; weighted by ``replay_weight``."""
    from ase.io import read

    path = Path(hp.foundation.replay).expanduser()
    if not path.is_file():
        raise ValueError(f"replay file not found: {path}")
    frames = [a for a in read(path, ":") if set(a.get_atomic_numbers().tolist()) <= set(zs)]
    if not frames:
        raise ValueError(f"{path} has no frame made only of the campaign's elements "
                         f"({', '.join(chemical_symbols[z] for z in zs)})")
    picked = rng.choice(len(frames), size=min(hp.foundation.replay_samples, len(frames)), replace=False)
    frames = [frames[i] for i in sorted(picked.tolist())]
    unlabelled = [a for a in frames if a.calc is None or "forces" not in a.calc.results]
    if unlabelled:  # pseudo-labels: the foundation's own predictions
        from ase.calculators.singlepoint import SinglePointCalculator


        e, f = predict([foundation], unlabelled)
        for i, atoms in enumerate(unlabelled):
            atoms.calc = SinglePointCalculator(atoms, energy=float(e[0, i]), forces=f[i][0])
    dataset = atoms_to_dataset(frames, zs, r_max)
    _set_heads(dataset, head)
    _weight(dataset, hp.foundation.replay_weight)
    return dataset


def _weight(dataset, weight: float) -> None:
    for data in dataset:
        data[ATOM_FORCE_WEIGHT_KEY] = torch.full((int(data.num_nodes),), float(weight),
                                                 dtype=torch.get_default_dtype())
        data["energy_weight"] = torch.tensor(float(weight), dtype=torch.get_default_dtype())


def _finetune(run: Training) -> TrainResult:
    """One committee member fine-tuned from ``hp.foundation``. The member gets its own seed (validation split,
    bootstrap resample, batch order). With ``init_model`` (the previous member, ``naive`` mode, same elements) it
    continues from it for ``warm_start_epochs``; a ``multihead`` member always starts from the foundation, whose
    pt head the replay needs."""
    start, hp, init_model = time.perf_counter(), run.hp, run.init_model
    with training_context(run.atoms_list, run.ids, hp, run.seed) as (rng, train_idx, valid_idx, zs):
        dtype = torch.get_default_dtype()
        fit_idx = sorted(rng.choice(train_idx, size=len(train_idx)).tolist()) if hp.bootstrap else train_idx
        multihead = hp.foundation.mode == "multihead"
        warm = (init_model is not None and not multihead
                and sorted(int(z) for z in init_model.atomic_numbers.tolist()) == zs)
        if warm:
            model = copy.deepcopy(init_model).to(dtype)
            epochs = hp.warm_start_epochs
            data = atoms_to_dataset(run.atoms_list, zs, float(model.r_max))
        else:
            foundation = read_foundation(hp.foundation.path)
            heads = [PT_HEAD, CAMPAIGN_HEAD] if multihead else [CAMPAIGN_HEAD]
            model = from_foundation(foundation, zs, heads).to(dtype)
            epochs = hp.epochs
            data = atoms_to_dataset(run.atoms_list, zs, float(model.r_max))
            _set_heads(data, heads.index(CAMPAIGN_HEAD))
            refit_reference_energies(model, [data[i] for i in train_idx], heads.index(CAMPAIGN_HEAD))
        train_set = [data[i] for i in fit_idx]
        valid_set = [data[i] for i in valid_idx]
        if multihead and not warm:
            replay = _replay_set(hp, foundation.to(dtype), zs, float(model.r_max), rng, heads.index(PT_HEAD))
            train_set = [copy.copy(d) for d in train_set]
            _weight(train_set, 1.0)
            train_set = train_set + replay
        model, metrics, history = fit(model, train_set, valid_set, hp, epochs, run.seed, run.progress)
        if multihead and not warm:
            from mace.tools.scripts_utils import remove_pt_head

            model = remove_pt_head(model, CAMPAIGN_HEAD)
        state = model.state_dict()
        model = model_from_architecture(mace_record(model, hp.dtype))
        model.load_state_dict(state, strict=True)
        model.eval()
        return TrainResult.of(model, run.ids, train_idx, valid_idx, metrics, epochs, start, history)


class MaceFinetuneLearner(MaceLearner):
    """A MACE foundation model (a local ``.model`` file) fine-tuned on the campaign's labels: its members
    predict, and give descriptors, as MACE models do."""

    kind = "mace-finetune"
    hyperparameters = MaceFinetuneHyperParameters
    architectures = {"MACE": build_mace}

    def fit(self, run: Training) -> TrainResult:
        return _finetune(run)

    def with_base_dir(self, hp: MaceFinetuneHyperParameters, base_dir) -> MaceFinetuneHyperParameters:
        """The foundation and replay files, when relative, start at ``base_dir``."""
        found = hp.foundation
        path = Path(found.path).expanduser()
        update = {"path": str(path if path.is_absolute() else Path(base_dir) / path)}
        if found.replay and not Path(found.replay).expanduser().is_absolute():
            update["replay"] = str(Path(base_dir) / found.replay)
        return hp.model_copy(update={"foundation": found.model_copy(update=update)})

    def check_elements(self, hp: MaceFinetuneHyperParameters, elements: list[str]) -> None:
        """Refuse a foundation file that is missing, not a MACE model, or without one of ``elements``."""
        path = hp.foundation.path
        missing = sorted(set(elements) - set(foundation_elements(path)), key=elements.index)
        if missing:
            raise ValueError(f"the foundation model {path} was not trained on {', '.join(missing)}")

    def zero_shot_calculator(self, hp: MaceFinetuneHyperParameters) -> SingleModelCalculator:
        return SingleModelCalculator(read_foundation(hp.foundation.path))


#: ``MaceFinetuneLearner().train``: one member fine-tuned from ``hp.foundation``
finetune_mace = MaceFinetuneLearner().train
