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
from almat.select.acquisition import WeightedAcquisition, WeightSchedule  # registers "weighted"
from almat.select.fps import (  # registers "fps" and "diverse"
    DiversityFilter,
    FPSSelection,
    SelectionContext,
    build_selection_context,
    call_policy,
    policy_needs_descriptors,
)

__all__ = [
    "SELECTION_POLICIES",
    "Candidate",
    "MaxDeviationSelection",
    "RandomSelection",
    "SelectionPolicy",
    "get_policy",
    "register_policy",
    "DiversityFilter",
    "FPSSelection",
    "SelectionContext",
    "WeightSchedule",
    "WeightedAcquisition",
    "build_selection_context",
    "call_policy",
    "policy_needs_descriptors",
]
