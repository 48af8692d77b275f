"""The learners almat knows: one torch-free table of ``"module:Class"`` strings, and ``register_learner``.

A learner kind names its ``Learner`` class (``almat.learner.base``), its hyperparameters class (a pydantic
model without torch: a campaign file validates with it), optionally the learner that trains a shallow ensemble
of its models (``learner.uncertainty: shallow``) and the pip extra that installs its package. A class is
imported only when a Maker is built or a model is loaded: an unknown kind, or a learner whose package is
missing, is one line when the campaign Maker is built, before any job runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pydantic import BaseModel

from almat.learner.hyperparameters import ChgnetHyperParameters, MaceFinetuneHyperParameters, MaceHyperParameters

#: learner kind -> "module:Class" of its ``Learner``
LEARNERS: dict[str, str] = {
    "mace": "almat.learner.mace:MaceLearner",
    "mace-finetune": "almat.learner.mace_finetune:MaceFinetuneLearner",
    "chgnet-finetune": "almat.learner.chgnet:ChgnetLearner",
    "deepmd": "almat.learner.deepmd:DeepmdLearner",
    "sevennet-finetune": "almat.learner.sevennet:SevennetLearner",
}

#: learner kind -> its hyperparameters class (or "module:Class" of one): MACE from scratch, MACE fine-tuned
#: from a foundation file, CHGNet fine-tuned from its bundled weights
HYPERPARAMETERS: dict[str, type[BaseModel] | str] = {
    "mace": MaceHyperParameters,
    "mace-finetune": MaceFinetuneHyperParameters,
    "chgnet-finetune": ChgnetHyperParameters,
    "deepmd": "almat.learner.deepmd_hyperparameters:DeepmdHyperParameters",
    "sevennet-finetune": "almat.learner.hyperparameters:SevennetHyperParameters",
}

#: learner kind -> "module:Class" of the learner whose model carries several readout heads
#: (``learner.uncertainty: shallow``, ``almat.learner.shallow``)
SHALLOW_LEARNERS: dict[str, str] = {"mace": "almat.learner.shallow:ShallowMaceLearner"}

#: learner kind -> "module:Class" of the learner that adds an LLPR covariance to its model (``learner.uncertainty:
#: llpr``, ``almat.learner.llpr``): learners whose model has a last layer to read
LLPR_LEARNERS: dict[str, str] = {"mace": "almat.learner.llpr:LlprMaceLearner",
                                 "mace-finetune": "almat.learner.llpr:LlprMaceFinetuneLearner"}

#: learner kind -> the pip extra that installs its package (``pip install almat[EXTRA]``)
EXTRAS: dict[str, str] = {"deepmd": "deepmd", "sevennet-finetune": "sevennet"}

#: production trainer (``finish.trainer``) -> "module:Class" of its ``ProductionTrainer`` (``almat.learner.production``)
PRODUCTION_TRAINERS: dict[str, str] = {"mace_run_train": "almat.learner.production:MaceRunTrain"}

#: how a learner's committee gives its uncertainty: N models, the N heads of one shallow ensemble, or one model's
#: last-layer prediction rigidity (LLPR)
UNCERTAINTY_KINDS: tuple[str, ...] = ("committee", "shallow", "llpr")

_architectures: dict[str, Any] | None = None  # model class -> builder, from every loadable learner
_missing: dict[str, str] = {}  # learner kind -> why its module does not load


def register_learner(kind: str, learner: str, hyperparameters: type[BaseModel] | str, shallow: str | None = None,
                     extra: str | None = None) -> None:
    """Add (or replace) a learner kind: ``learner`` and ``shallow`` are ``"module:Class"`` of ``Learner``
    subclasses, ``hyperparameters`` its (torch-free) hyperparameters class, ``extra`` the pip extra that
    installs its package."""
    global _architectures
    for what, path in (("learner", learner), ("shallow", shallow)):
        if path is not None and (not isinstance(path, str) or path.count(":") != 1):
            raise ValueError(f"register_learner({kind!r}): {what} must be 'module:Class', got {path!r}")
    LEARNERS[kind] = learner
    HYPERPARAMETERS[kind] = hyperparameters
    for table, value in ((SHALLOW_LEARNERS, shallow), (EXTRAS, extra)):
        if value is None:
            table.pop(kind, None)
        else:
            table[kind] = value
    _architectures = None


def check_kind(kind: str) -> None:
    """Refuse a learner kind that is not registered, listing the registered ones."""
    if kind not in LEARNERS:
        raise ValueError(f"unknown learner kind {kind!r}; valid: {', '.join(LEARNERS)}")


def hyperparameters_class(kind: str) -> type[BaseModel]:
    """The hyperparameters class of a learner kind (no torch for almat's own)."""
    check_kind(kind)
    cls = HYPERPARAMETERS[kind]
    return _load(cls, kind) if isinstance(cls, str) else cls


def load_learner(kind: str, uncertainty: str = "committee"):
    """The ``Learner`` of a kind (its shallow-ensemble learner with ``uncertainty="shallow"``); a one-line
    ``ValueError`` for an unknown kind or a learner whose package is not installed."""
    check_kind(kind)
    check_uncertainty_kind(uncertainty, kind)
    if uncertainty == "shallow":
        return _load(SHALLOW_LEARNERS[kind], kind)()
    if uncertainty == "llpr":
        return _load(LLPR_LEARNERS[kind], kind)()
    return _load(LEARNERS[kind], kind)()


def check_uncertainty_kind(uncertainty: str, kind: str) -> None:
    """Refuse an unknown uncertainty kind, or one the learner kind cannot give (one line naming the learner)."""
    if uncertainty not in UNCERTAINTY_KINDS:
        raise ValueError(f"unknown uncertainty {uncertainty!r}; valid: {', '.join(UNCERTAINTY_KINDS)}")
    if uncertainty == "shallow" and kind not in SHALLOW_LEARNERS:
        raise ValueError(f"uncertainty: shallow needs a learner that can have heads "
                         f"({', '.join(SHALLOW_LEARNERS)}); {kind} cannot")
    if uncertainty == "llpr" and kind not in LLPR_LEARNERS:
        raise ValueError(f"uncertainty: llpr needs a learner whose model has a last layer to read "
                         f"({', '.join(LLPR_LEARNERS)}); learner {kind} has none")


def _load(path: str, kind: str):
    module, _, name = path.partition(":")
    try:
        found = import_module(module)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if module == missing or module.startswith(f"{missing}."):
            raise ValueError(f"learner {kind}: cannot import its module {module!r} ({exc})") from None
        how = f"pip install almat[{EXTRAS[kind]}]" if kind in EXTRAS else f"pip install {missing.split('.')[0]}"
        raise ValueError(f"learner {kind} needs {missing}, which is not installed: {how}") from None
    try:
        return getattr(found, name)
    except AttributeError:
        raise ValueError(f"learner {kind}: {module} has no {name}") from None


def load_production_trainer(name: str):
    """The ``ProductionTrainer`` of ``finish.trainer``; a one-line ``ValueError`` for an unknown one."""
    if name not in PRODUCTION_TRAINERS:
        raise ValueError(f"finish.trainer: unknown trainer {name!r}; valid: {', '.join(PRODUCTION_TRAINERS)}")
    return _load(PRODUCTION_TRAINERS[name], name)()


def architectures() -> dict[str, Any]:
    """Model class -> the function that builds one from its record's ``kwargs``: the union of what the
    registered learners declare (a learner whose package is missing declares nothing)."""
    global _architectures
    if _architectures is None:
        found: dict[str, Any] = {}
        for kind, path in [*LEARNERS.items(), *SHALLOW_LEARNERS.items(), *LLPR_LEARNERS.items()]:
            try:
                learner = _load(path, kind)
            except ValueError as exc:
                _missing[kind] = str(exc)
                continue
            for name, builder in learner.architectures.items():
                found.setdefault(name, (builder, learner))
        _architectures = found
    return {name: builder for name, (builder, _) in _architectures.items()}


def learner_of(architecture: str):
    """The ``Learner`` whose models are of the class ``architecture`` (a stored model's record)."""
    architectures()
    if architecture not in _architectures:
        why = f" ({'; '.join(_missing.values())})" if _missing else ""
        raise ValueError(f"no registered learner builds {architecture!r} models; known: "
                         f"{', '.join(_architectures)}{why}")
    return _architectures[architecture][1]()
