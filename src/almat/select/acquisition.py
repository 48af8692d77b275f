"""Weighted explore/exploit acquisition: uncertainty and diversity in one score.

For candidate ``i``::

    score_i = w * exploit_i + (1 - w) * diversity_i

* ``exploit_i``: the committee's model deviation, min-max normalised over the candidates to
  [0, 1] (all equal: 1), times an optional closeness to a target region (a structure, through
  its descriptor distance, and/or a temperature), each a Gaussian ``exp(-(x/width)^2 / 2)``.
* ``diversity_i``: the descriptor distance of candidate ``i`` to its nearest neighbour among the
  training set and the candidates already picked in this batch, divided by the largest such
  distance before the first pick, so in [0, 1]; it is updated after every pick (greedy batch), so
  a second frame next to a picked one loses its diversity.

``w`` follows a :class:`WeightSchedule` across iterations: exploratory (small ``w``) while the
committee's deviation is not trustworthy, exploitative later. ``w = 1`` reproduces the
``max_deviation`` order, ``w = 0`` is farthest point sampling seeded by the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from almat.schemas import to_structure
from almat.select.fps import DUPLICATE_TOLERANCE, SelectionContext, min_distances
from almat.select.policies import register_policy

SCHEDULE_KINDS = ("constant", "linear", "exponential")


@dataclass(frozen=True)
class WeightSchedule:
    """The exploitation weight ``w`` as a function of the iteration.

    * ``constant``: ``w0`` always.
    * ``linear``: from ``w0`` at iteration 0 to ``w1`` at ``n_iterations``, then ``w1``.
    * ``exponential``: ``w0 + (w1 - w0) * (1 - exp(-k t / n)) / (1 - exp(-k))`` with
      ``k = sharpness``: equal to ``w0`` at 0 and ``w1`` at ``n_iterations``, but most of the
      change happens early (``k -> 0`` is the linear schedule).
    """

    w0: float = 0.2
    w1: float = 0.9
    n_iterations: int = 5
    kind: str = "linear"
    sharpness: float = 3.0

    def __post_init__(self):
        for label, w in (("w0", self.w0), ("w1", self.w1)):
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {w}")
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; valid: {', '.join(SCHEDULE_KINDS)}")
        if self.n_iterations < 0:
            raise ValueError(f"n_iterations must be >= 0, got {self.n_iterations}")
        if self.sharpness <= 0:
            raise ValueError(f"sharpness must be > 0, got {self.sharpness}")

    def weight(self, iteration: int) -> float:
        if self.kind == "constant":
            return float(self.w0)
        if self.n_iterations == 0 or iteration >= self.n_iterations:
            return float(self.w1)
        t = max(iteration, 0) / self.n_iterations
        if self.kind == "linear":
            f = t
        else:
            k = self.sharpness
            f = (1.0 - math.exp(-k * t)) / (1.0 - math.exp(-k))
        return float(self.w0 + (self.w1 - self.w0) * f)

    __call__ = weight


def normalise_uncertainty(uncertainty: Sequence[float]) -> np.ndarray:
    """Min-max normalisation to [0, 1]; all equal (or a single value) gives 1 each."""
    u = np.asarray(uncertainty, dtype=float)
    if u.size == 0:
        return u
    span = float(np.ptp(u))
    return (u - u.min()) / span if span > 0 else np.ones_like(u)


def closeness(distance: np.ndarray, width: float) -> np.ndarray:
    """Gaussian closeness ``exp(-(d / width)^2 / 2)`` in (0, 1]."""
    if not width > 0:
        raise ValueError(f"the width of a target region must be > 0, got {width}")
    return np.exp(-0.5 * np.square(np.asarray(distance, dtype=float) / width))


def greedy_acquisition(
    uncertainty: Sequence[float],
    descriptors: np.ndarray | None,
    n_select: int,
    weight: float,
    reference: np.ndarray | None = None,
    target: np.ndarray | None = None,
    min_diversity: float = DUPLICATE_TOLERANCE,
) -> tuple[list[int], list[float]]:
    """Greedy batch: pick the best score, update diversity, repeat. Returns picks and their scores.

    ``target`` (in [0, 1] per candidate, default 1) multiplies the normalised uncertainty.
    Candidates whose normalised diversity is below ``min_diversity`` (by default only numerical
    duplicates of the training set or of a pick) are not taken. ``descriptors`` may be ``None``
    only for ``weight == 1`` (no diversity term).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    u = normalise_uncertainty(uncertainty)
    n = len(u)
    n_select = min(max(int(n_select), 0), n)
    exploit = u if target is None else u * np.asarray(target, dtype=float)
    if n_select == 0:
        return [], []
    if descriptors is None:
        if weight < 1.0:
            raise ValueError("the diversity term (weight < 1) needs candidate descriptors")
        order = np.argsort(-exploit, kind="stable")[:n_select]
        return [int(i) for i in order], [float(exploit[i]) for i in order]
    x = np.asarray(descriptors, dtype=float)
    if len(x) != n:
        raise ValueError(f"{len(x)} descriptors for {n} candidates")

    d = min_distances(x, reference)
    no_reference = not np.isfinite(d).any()
    if no_reference:  # nothing known yet: distance to the candidates' centroid ranks novelty for the first pick
        d = np.linalg.norm(x - x.mean(axis=0), axis=1)
    scale = float(d.max())
    scale = scale if scale > 0 else 1.0

    picks: list[int] = []
    scores: list[float] = []
    available = np.ones(n, dtype=bool)
    while len(picks) < n_select:
        diversity = np.clip(d / scale, 0.0, 1.0)
        score = weight * exploit + (1.0 - weight) * diversity
        allowed = available & (diversity >= min_diversity) if min_diversity > 0 else available
        if not allowed.any():
            break
        score = np.where(allowed, score, -np.inf)
        i = int(np.argmax(score))  # ties: the lowest index, as the stable sort of max_deviation
        picks.append(i)
        scores.append(float(score[i]))
        available[i] = False
        to_pick = np.linalg.norm(x - x[i], axis=1)
        d = to_pick if (no_reference and len(picks) == 1) else np.minimum(d, to_pick)
    return picks, scores


@dataclass
class WeightedAcquisition:
    """Explore/exploit by a weighted score, ``w`` scheduled over the iterations (see module doc).

    Exploitation can aim at a region: ``target_structure`` (a pymatgen ``Structure``, its dict,
    or ASE ``Atoms``; its descriptor comes from the context's ``describe``) or
    ``target_descriptor`` directly, with ``target_width`` in descriptor units (default: the median
    distance of the candidates to the target); and/or ``target_temperature`` (K) with
    ``temperature_width`` (K).
    """

    name: str = "weighted"
    w0: float = 0.2
    w1: float = 0.9
    n_iterations: int = 5
    schedule: str = "linear"
    sharpness: float = 3.0
    target_structure: Any = None
    target_descriptor: list[float] | None = None
    target_width: float | None = None
    target_temperature: float | None = None
    temperature_width: float = 100.0
    min_diversity: float = DUPLICATE_TOLERANCE

    def __post_init__(self):
        self.weight_schedule = WeightSchedule(self.w0, self.w1, self.n_iterations, self.schedule, self.sharpness)
        if self.target_width is not None and not self.target_width > 0:
            raise ValueError(f"target_width must be > 0, got {self.target_width}")
        if not self.temperature_width > 0:
            raise ValueError(f"temperature_width must be > 0, got {self.temperature_width}")

    def weight(self, iteration: int) -> float:
        return self.weight_schedule.weight(iteration)

    def needs_descriptors(self, iteration: int) -> bool:
        """Descriptors matter when there is a diversity term or a target structure."""
        return (self.weight(iteration) < 1.0 or self.target_structure is not None
                or self.target_descriptor is not None)

    def _target_descriptor(self, context: SelectionContext | None) -> np.ndarray | None:
        if self.target_descriptor is not None:
            return np.asarray(self.target_descriptor, dtype=float)
        if self.target_structure is None:
            return None
        if context is None or context.describe is None:
            raise ValueError("a target structure needs a SelectionContext with a describe function")
        target = self.target_structure if isinstance(self.target_structure, Atoms) else to_structure(self.target_structure)
        return np.asarray(context.describe([target]), dtype=float)[0]

    def target_closeness(self, candidates, context: SelectionContext | None) -> np.ndarray | None:
        """Closeness in [0, 1] of each candidate to the target region (``None``: no target)."""
        out = None
        t_desc = self._target_descriptor(context)
        if t_desc is not None:
            x = context.require_candidate_descriptors(len(candidates), self.name) if context else None
            if x is None:
                raise ValueError("a target structure needs candidate descriptors")
            dist = np.linalg.norm(x - t_desc[None, :], axis=1)
            width = self.target_width or float(np.median(dist)) or 1.0
            out = closeness(dist, width)
        if self.target_temperature is not None:
            temps = np.array([float(c.temperature) for c in candidates])
            c_t = closeness(temps - self.target_temperature, self.temperature_width)
            out = c_t if out is None else out * c_t
        return out

    def select(self, candidates, max_select, rng, context: SelectionContext | None = None):
        if not len(candidates) or max_select <= 0:
            return []
        iteration = context.iteration if context is not None else 0
        w = self.weight(iteration)
        descriptors = None
        reference = None
        if context is not None and context.candidate_descriptors is not None:
            descriptors = context.require_candidate_descriptors(len(candidates), self.name)
            reference = context.reference
        elif w < 1.0:
            raise ValueError(
                f"policy 'weighted' at iteration {iteration} (w={w:.2f} < 1) needs descriptors: "
                "pass a SelectionContext (see almat.select.fps.build_selection_context)"
            )
        picks, _ = greedy_acquisition(
            [float(c.model_deviation) for c in candidates], descriptors, max_select, w,
            reference=reference, target=self.target_closeness(candidates, context),
            min_diversity=self.min_diversity,
        )
        return picks


register_policy("weighted", WeightedAcquisition)
