"""Selection policies by name, as campaign files give them: MD campaigns name a policy, pool campaigns an
acquisition (``ACQUISITIONS``: a pool name of a policy). Bad names or options fail when the file is
loaded, not in a job."""

from __future__ import annotations

from typing import Any

from almat.select.acquisition import WeightedAcquisition  # noqa: F401 - registers "weighted"
from almat.select.fps import FPSSelection  # noqa: F401 - registers "fps" and "diverse"
from almat.select.policies import SELECTION_POLICIES, SelectionPolicy, get_policy

#: pool acquisition name -> almat selection policy (any other registered selection policy works by its own name)
ACQUISITIONS: dict[str, str] = {"committee": "max_deviation", "fps": "fps", "weighted": "weighted", "random": "random"}


def check_policy(name: str, options: dict[str, Any], what: str = "selection policy") -> SelectionPolicy:
    """The policy ``name`` with ``options``; an unknown name lists the valid ones, bad options name it."""
    if name not in SELECTION_POLICIES:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(SELECTION_POLICIES))}")
    try:
        return get_policy(name, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for {what} {name!r}: {exc}") from None


def acquisition_policy(name: str, options: dict[str, Any] | None = None) -> SelectionPolicy:
    """The selection policy behind an acquisition name; unknown names list the valid ones."""
    policy = ACQUISITIONS.get(name, name)
    if policy not in SELECTION_POLICIES:
        valid = [*ACQUISITIONS, *sorted(set(SELECTION_POLICIES) - set(ACQUISITIONS))]
        raise ValueError(f"unknown acquisition {name!r}; valid: {', '.join(valid)}")
    try:
        return get_policy(policy, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for acquisition {name!r}: {exc}") from None
