"""The sampler: committee MD that flags configurations where the models disagree.

``almat.sampler.md`` (the MD, torch-free until a committee is given) and ``almat.sampler.chunks`` (NFT chunks)
import no torch; the job names (``ExploreWalkersMaker``, ``ExploreDoc``, ...) load ``almat.sampler.jobs``, which
imports the committee, on first use."""

from importlib import import_module

from almat.sampler.md import DRIVES, ENSEMBLES, ExplorationSettings, Trajectory, Walker, run_exploration, run_walkers

_JOBS = ("CandidateFrame", "ExploreDoc", "ExploreWalkersMaker", "WalkerSpec")


def __getattr__(name: str):
    if name in _JOBS:
        return getattr(import_module("almat.sampler.jobs"), name)
    raise AttributeError(f"module 'almat.sampler' has no attribute {name!r}")
