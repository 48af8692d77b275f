"""The learner: a committee of MLIPs (MACE) trained on the campaign's labels."""

from almat.learner.committee import Committee, CommitteeCalculator, CommitteePrediction, load_model, save_model
from almat.learner.jobs import CommitteeDoc, TrainCommitteeMaker, load_labels
from almat.learner.mace import MaceHyperParameters, train_mace

__all__ = [
    "Committee",
    "CommitteeCalculator",
    "CommitteeDoc",
    "CommitteePrediction",
    "MaceHyperParameters",
    "TrainCommitteeMaker",
    "load_labels",
    "load_model",
    "save_model",
    "train_mace",
]
