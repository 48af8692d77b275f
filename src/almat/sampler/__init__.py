"""The sampler: committee MD that flags configurations where the models disagree."""

from almat.sampler.md import ExplorationSettings, Trajectory, run_exploration
from almat.sampler.jobs import CandidateFrame, ExploreDoc, ExploreMaker
