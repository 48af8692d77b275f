"""The sampler: committee MD that flags configurations where the models disagree."""

from almat.sampler.md import ENSEMBLES, ExplorationSettings, Trajectory, Walker, run_exploration, run_walkers
from almat.sampler.jobs import CandidateFrame, ExploreDoc, ExploreMaker, ExploreWalkersMaker, WalkerSpec
