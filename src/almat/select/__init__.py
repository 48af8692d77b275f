"""Selection: which candidate configurations are worth an oracle call."""

from almat.select.policies import (
    SELECTION_POLICIES,
    Candidate,
    MaxDeviationSelection,
    RandomSelection,
    SelectionPolicy,
    get_policy,
    register_policy,
)

__all__ = [
    "SELECTION_POLICIES",
    "Candidate",
    "MaxDeviationSelection",
    "RandomSelection",
    "SelectionPolicy",
    "get_policy",
    "register_policy",
]
