"""Route each campaign job to a FireWorks worker category (``spec._category``) by its declared role.

A category names a kind of worker: an fworker file declares the categories it pulls (``category: [gpu]``)
and its qadapter sends it to a SLURM partition. Every job the campaign makes declares its role when it is
made (``almat.campaign.jobs.declare_role``), whatever its name: an atomate2 VASP job named ``static`` is an
``oracle`` job. The roles and their default categories are in ``docs/cluster.md``. Jobs that the campaign
adds while it runs are routed when they are made, by the routing that the campaign Maker carries
(``CampaignMaker.routing``); jobflow's own ``store_inputs`` jobs get the ``default`` category.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from jobflow.core.job import store_inputs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from almat.campaign.jobs import ROLE_KEY, ROLES, all_jobs
from almat.schemas.section import ConfigError, load_yaml

CATEGORY_KEY = "_category"


class RoutingError(ValueError):
    """The routing is invalid; the message names the key."""


# "register" is also the name of ABCMeta.register: pydantic warns about the shadowing, which is harmless
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Routing(BaseModel):
        """Worker category per job role; ``default`` catches any other job."""

        model_config = ConfigDict(extra="forbid")

        train: str = Field("gpu", description="committee training")
        explore: str = Field("gpu", description="the committee on many atoms: MD, a pool, an NFT target")
        oracle: str = Field("cpu", description="one oracle (EMT, xTB, DFT) calculation per structure")
        register: str = Field("cpu", description="bookkeeping: register the campaign")
        initial: str = Field("cpu", description="bookkeeping: initial structures")
        label: str = Field("cpu", description="bookkeeping: replaces itself by the oracle jobs")
        select: str = Field("cpu", description="bookkeeping: pick candidates")
        decide: str = Field("cpu", description="bookkeeping: record the iteration, add the next one")
        default: str = Field("cpu", description="any other job")

        @field_validator("*")
        @classmethod
        def _category_name(cls, value: str) -> str:
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise ValueError(f"a category must be a non-empty name without surrounding spaces, got {value!r}")
            return value

        def category(self, role: str | None) -> str:
            """The category of a job with this role (None: ``default``)."""
            return getattr(self, role) if role in ROLES else self.default

        def categories(self) -> set[str]:
            return set(self.model_dump().values())


def load_routing(routing: Routing | dict | str | Path | None = None) -> Routing:
    """A ``Routing`` from a YAML file, a mapping (optionally under a ``routing:`` key) or defaults."""
    if routing is None or isinstance(routing, Routing):
        return routing or Routing()
    source = "routing"
    if isinstance(routing, (str, Path)):
        source = str(Path(routing).expanduser())
        try:
            routing = load_yaml(routing, "routing file", mapping=False, empty={})
        except ConfigError as exc:
            raise RoutingError(str(exc)) from None
    if not isinstance(routing, dict):
        raise RoutingError(f"{source}: expected a mapping of job role -> category, got {type(routing).__name__}")
    if set(routing) == {"routing"}:
        routing = routing["routing"] or {}
    try:
        return Routing.model_validate(routing)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RoutingError(f"{source}: {errors} (job roles: {', '.join(Routing.model_fields)})") from None


def job_role(job: Any) -> str | None:
    return (job.metadata or {}).get(ROLE_KEY)


def apply_routing(flow: Any, routing: Routing | dict | str | Path | None = None) -> Routing:
    """Set ``manager_config["_category"]`` on every job of ``flow`` (a Flow or a Job) from its role, keeping
    the other keys. Jobs made later are routed by the campaign Maker's ``routing`` (set it before ``make``)."""
    routing = load_routing(routing)
    # jobflow's own store_inputs jobs (made when a job replaces itself) have no role: the default category
    flow.update_config({"_set": {f"manager_config->{CATEGORY_KEY}": routing.default}}, function_filter=store_inputs,
                       dynamic=True, dict_mod=True)
    for j in all_jobs(flow):
        j.config.manager_config = {**j.config.manager_config, CATEGORY_KEY: routing.category(job_role(j))}
        j.config.pass_manager_config = False
    return routing

