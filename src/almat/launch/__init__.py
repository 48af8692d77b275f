"""Run campaigns on a cluster: ``submit`` checks the LaunchPad, workers and JobStore, then adds the
workflow; ``routing`` sends each job to a worker category by its declared role (``train``/``explore`` ->
``gpu``, oracles and bookkeeping -> ``cpu`` by default); ``launchpad`` reads a LaunchPad file (for
``submit`` and ``almat serve``); ``state`` reads what a LaunchPad holds of a submitted campaign (running,
queued, stalled, lost or failed, for ``almat status`` and ``almat serve``)."""

from importlib import import_module


def __getattr__(name: str):
    if name in ("submit_campaign", "SubmitError"):  # (the loop: loaded on first use, so serve stays light)
        return getattr(import_module("almat.launch.submit"), name)
    raise AttributeError(f"module 'almat.launch' has no attribute {name!r}")
