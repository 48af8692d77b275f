"""The sampler: committee MD that flags configurations where the models disagree."""

from almat.sampler.deviation import (
    FrameClass,
    TrustLevels,
    atomic_force_deviation,
    energy_deviation,
    max_force_deviation,
)
from almat.sampler.md import ExplorationSettings, Trajectory, run_exploration
from almat.sampler.jobs import CandidateFrame, ExploreDoc, ExploreMaker  # noqa: E402  (after deviation)

__all__ = [
    "CandidateFrame",
    "ExplorationSettings",
    "ExploreDoc",
    "ExploreMaker",
    "FrameClass",
    "Trajectory",
    "TrustLevels",
    "atomic_force_deviation",
    "energy_deviation",
    "max_force_deviation",
    "run_exploration",
]
