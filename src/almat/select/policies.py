"""Selection policies: which candidates go to the oracle.

A policy is a small object with a ``select(candidates, max_select, rng)`` method that returns the
indices of the chosen candidates. New policies (FPS, weighted acquisition) register themselves in
``SELECTION_POLICIES`` and become available by name in the campaign configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Candidate(Protocol):
    """What a policy may look at. ``CandidateFrame`` satisfies it."""

    model_deviation: float


@runtime_checkable
class SelectionPolicy(Protocol):
    name: str

    def select(self, candidates: Sequence[Candidate], max_select: int, rng: np.random.Generator) -> list[int]:
        """Indices into ``candidates`` of at most ``max_select`` picks, in order of preference."""


@dataclass
class MaxDeviationSelection:
    """Highest model deviation first (DP-GEN's choice)."""

    name: str = "max_deviation"

    def select(self, candidates, max_select, rng):
        order = np.argsort([-float(c.model_deviation) for c in candidates], kind="stable")
        return [int(i) for i in order[: max(max_select, 0)]]


@dataclass
class RandomSelection:
    """Uniformly random candidates: the baseline."""

    name: str = "random"

    def select(self, candidates, max_select, rng):
        n = min(max(max_select, 0), len(candidates))
        return [int(i) for i in rng.choice(len(candidates), size=n, replace=False)] if n else []


SELECTION_POLICIES: dict[str, type] = {
    "max_deviation": MaxDeviationSelection,
    "random": RandomSelection,
}


def register_policy(name: str, cls: type) -> None:
    SELECTION_POLICIES[name] = cls


def get_policy(name: str, **kwargs) -> SelectionPolicy:
    """A policy by name; unknown names list the valid ones."""
    try:
        cls = SELECTION_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown selection policy {name!r}; valid: {', '.join(sorted(SELECTION_POLICIES))}"
        ) from None
    return cls(**kwargs)
