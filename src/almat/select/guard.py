"""Honest stopping with cheap models: the random guard (as in aims-PAX).

A committee that is confident but wrong selects no candidate: every explored frame is below the lower trust
level, while the calibrated error (``k u`` on held-out frames) is still above the tolerance. Left alone, the
campaign would stop with nothing new to learn. The guard labels a random sample of the explored frames
instead, once ``patience`` iterations in a row (stages included) have selected no candidate and the latest
calibrated error is above the tolerance (or not known yet: no calibration so far counts as above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class RandomGuard:
    """``samples`` random explored frames to label once ``patience`` iterations selected no candidate while
    the calibrated error is above the tolerance; ``samples = 0`` turns it off."""

    patience: int = 1
    samples: int = 4

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"guard patience must be >= 1 iteration, got {self.patience}")
        if self.samples < 0:
            raise ValueError(f"guard samples must be >= 0, got {self.samples}")

    @staticmethod
    def quiet_iterations(selected_before: Sequence[int], n_candidates: int) -> int:
        """Iterations in a row, this one included, that selected no candidate: ``selected_before`` holds the
        earlier iterations' selected counts, oldest first; 0 when this iteration has candidates."""
        if n_candidates:
            return 0
        quiet = 1
        for n in reversed(list(selected_before)):
            if n:
                break
            quiet += 1
        return quiet

    def fires(self, quiet: int, above_tolerance: bool | None) -> bool:
        """Whether to label a random sample: enough quiet iterations and an error not known to be below the
        tolerance (``None``: no calibration yet)."""
        return self.samples > 0 and quiet >= self.patience and above_tolerance is not False

    def holds_back_stop(self, quiet: int) -> bool:
        """Whether an iteration that labelled nothing should go on rather than stop: the guard is on and its
        patience is not spent yet (it fires in a later iteration if nothing changes)."""
        return self.samples > 0 and quiet < self.patience

    def pick(self, eligible: Sequence[bool], rng: np.random.Generator) -> list[int]:
        """``samples`` indices drawn uniformly without replacement among the eligible frames (all of them when
        fewer), sorted."""
        candidates = np.flatnonzero(np.asarray(eligible, dtype=bool))
        if candidates.size <= self.samples:
            return [int(i) for i in candidates]
        return sorted(int(i) for i in rng.choice(candidates, self.samples, replace=False))
