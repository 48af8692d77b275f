"""Run campaigns on a cluster: FireWorks LaunchPad + SLURM workers, each job routed to a worker category.

- ``routing``: job kind -> worker category (``train``/``explore`` -> ``gpu``, oracles and bookkeeping ->
  ``cpu`` by default), applied so that jobs created at run time are routed too;
- ``submit``: ``submit_campaign`` checks the LaunchPad, workers and JobStore, then adds the workflow;
- ``runinfo``: where a job ran (SLURM job id, partition, host), recorded by every ``store_job``;
- ``cli``: ``submit_command`` behind ``almat submit``.

Names are imported lazily: ``almat.stores`` imports ``almat.launch.runinfo`` inside running jobs, and
that must not pull in FireWorks.
"""

from __future__ import annotations

import importlib

__all__ = [
    "Routing",
    "RoutingError",
    "SubmitError",
    "SubmitResult",
    "apply_routing",
    "load_routing",
    "submit_campaign",
    "submit_command",
]

_WHERE = {
    "Routing": "routing",
    "RoutingError": "routing",
    "apply_routing": "routing",
    "load_routing": "routing",
    "SubmitError": "submit",
    "SubmitResult": "submit",
    "submit_campaign": "submit",
    "submit_command": "cli",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"almat.launch.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'almat.launch' has no attribute {name!r}")
