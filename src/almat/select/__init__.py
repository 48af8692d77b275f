"""Selection: which candidate configurations are worth an oracle call.

Importing the package registers every built-in policy in ``SELECTION_POLICIES`` (no torch: policies
that need descriptors import them when they compute them).
"""

from almat.select.policies import (
    SELECTION_POLICIES, Candidate, MaxDeviationSelection, RandomSelection, SelectionPolicy, get_policy,
    register_policy,
)
from almat.select.acquisition import WeightedAcquisition, WeightSchedule  # registers "weighted"
from almat.select.fps import (  # registers "fps" and "diverse"
    DiversityFilter, FPSSelection, SelectionContext, build_selection_context, call_policy, policy_needs_descriptors,
)
from almat.select.trust import adaptive_lo, classify
