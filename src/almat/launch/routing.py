"""Route each campaign job to a FireWorks worker category (``spec._category``).

A category names a kind of worker: an fworker file declares the categories it pulls
(``category: [gpu]``) and its qadapter sends it to a SLURM partition. The campaign's jobs are told apart
by their names (set in ``almat.campaign.flow`` and ``almat.campaign.jobs``):

============  ==============================================  =======
kind          job names                                       default
============  ==============================================  =======
train         ``train itN``                                   gpu
explore       ``explore itN sK TK``; pool: ``pool step itN``;  gpu
              NFT: ``nft chunks itN`` (the committee on many
              atoms)
oracle        ``oracle itN #i``, ``chunk oracle ...``,         cpu
              ``vasp ...`` (DFT)
register      ``register campaign``, ``setup pool``,           cpu
              ``register NFT campaign``
initial       ``initial structures``                          cpu
label         ``label initial``, ``label itN``,                cpu
              ``label calibration itN``, ``label pool itN``,
              ``label held-out``, ``label chunks itN``
              (batches)
select        ``select itN``, ``calibration sample itN``      cpu
decide        ``decide itN``, ``nft decide itN``              cpu
default       anything else (jobflow's ``store_inputs``)      cpu
============  ==============================================  =======

The routing is applied with ``Flow.update_config(..., dynamic=True)``: jobflow hands these updates on
to every job a ``Response`` creates (``replace``/``addition``/``detour``), at any depth, so the oracle
jobs of ``label itN`` and the next iteration added by ``decide itN`` are routed like the first ones.
Jobflow's ``pass_manager_config`` (on by default) would afterwards overwrite the new jobs' manager
config with the parent's (all of iteration 1 would inherit ``decide``'s category), so the routing
also switches it off, dynamically too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["JOB_KINDS", "Routing", "RoutingError", "apply_routing", "job_kind", "load_routing", "routed_categories"]

#: job kind -> substrings of the job names of that kind (jobflow's ``name_filter`` matches substrings)
JOB_KINDS: dict[str, tuple[str, ...]] = {
    "register": ("register campaign", "register NFT campaign", "setup pool"),
    "initial": ("initial structures",),
    "label": ("label initial", "label it", "label calibration it", "label pool it", "label held-out",
              "label chunks it"),
    "train": ("train it",),
    # the committee on many atoms: MD, scoring a pool, the atomic uncertainty of an NFT target
    "explore": ("explore it", "pool step it", "nft chunks it"),
    "select": ("select it", "calibration sample it"),
    "oracle": ("oracle", "vasp"),
    "decide": ("decide it",),
}

CATEGORY_KEY = "_category"


class RoutingError(ValueError):
    """The routing is invalid; the message names the key."""


# "register" is also the name of ABCMeta.register (a metaclass method, invisible from instances):
# pydantic warns about the shadowing, which is harmless here
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Routing(BaseModel):
        """Worker category per job kind; ``default`` catches any other job."""

        model_config = ConfigDict(extra="forbid")

        train: str = Field("gpu", description="MACE committee training")
        explore: str = Field("gpu", description="committee MD")
        oracle: str = Field("cpu", description="one oracle (EMT, xTB, DFT) calculation per structure")
        register: str = Field("cpu", description="bookkeeping: register the campaign")
        initial: str = Field("cpu", description="bookkeeping: initial structures")
        label: str = Field("cpu", description="bookkeeping: replaces itself by the oracle jobs")
        select: str = Field("cpu", description="bookkeeping: pick candidates")
        decide: str = Field("cpu", description="bookkeeping: record the iteration, add the next one")
        default: str = Field("cpu", description="any other job (jobflow's store_inputs)")

        @field_validator("*")
        @classmethod
        def _category_name(cls, value: str) -> str:
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise ValueError(f"a category must be a non-empty name without surrounding spaces, got {value!r}")
            return value

        def category(self, job_name: str | None) -> str:
            """The category of a job with this name."""
            return getattr(self, job_kind(job_name))

        def categories(self) -> set[str]:
            return {getattr(self, k) for k in (*JOB_KINDS, "default")}


def job_kind(job_name: str | None) -> str:
    """The kind (``train``, ``oracle``, ...) of a campaign job, from its name; ``default`` if none."""
    # the last matching kind wins, as in apply_routing where later updates override earlier ones
    kind = "default"
    for k, patterns in JOB_KINDS.items():
        if job_name and any(p in job_name for p in patterns):
            kind = k
    return kind


def load_routing(routing: Routing | dict | str | Path | None = None) -> Routing:
    """A ``Routing`` from a YAML file, a mapping (optionally under a ``routing:`` key) or defaults."""
    if routing is None:
        return Routing()
    if isinstance(routing, Routing):
        return routing
    source = "routing"
    if isinstance(routing, (str, Path)):
        path = Path(routing).expanduser()
        source = str(path)
        if not path.is_file():
            raise RoutingError(f"routing file not found: {path}")
        try:
            routing = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RoutingError(f"cannot read routing file {path}: {exc}") from None
    if not isinstance(routing, dict):
        raise RoutingError(f"{source}: expected a mapping of job kind -> category, got {type(routing).__name__}")
    if set(routing) == {"routing"}:
        routing = routing["routing"] or {}
    try:
        return Routing.model_validate(routing)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        valid = ", ".join(Routing.model_fields)
        raise RoutingError(f"{source}: {errors} (job kinds: {valid})") from None


def apply_routing(flow: Any, routing: Routing | dict | str | Path | None = None) -> Routing:
    """Set ``manager_config["_category"]`` on every job of ``flow`` and on every job created later.

    ``flow`` is a jobflow ``Flow`` or ``Job``. Other keys of the manager config are kept (the update
    is a dict-mod ``_set`` on ``manager_config->_category``). Returns the routing used.
    """
    routing = load_routing(routing)
    flow.update_config({"pass_manager_config": False}, dynamic=True)
    flow.update_config({"_set": {f"manager_config->{CATEGORY_KEY}": routing.default}}, dynamic=True, dict_mod=True)
    for kind, patterns in JOB_KINDS.items():
        for pattern in patterns:
            flow.update_config(
                {"_set": {f"manager_config->{CATEGORY_KEY}": getattr(routing, kind)}},
                name_filter=pattern,
                dynamic=True,
                dict_mod=True,
            )
    return routing


def routed_categories(flow: Any) -> dict[str, str | None]:
    """``{job name: category}`` for the jobs of a Flow (or Job) as they stand now."""
    jobs = flow.jobs if hasattr(flow, "jobs") else [flow]
    out: dict[str, str | None] = {}
    for j in jobs:
        if hasattr(j, "jobs"):
            out.update(routed_categories(j))
        else:
            out[j.name] = j.config.manager_config.get(CATEGORY_KEY)
    return out
