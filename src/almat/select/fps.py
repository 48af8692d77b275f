"""Diversity in descriptor space: farthest point sampling (FPS) and a near-duplicate filter.

Distances are Euclidean distances between per-structure descriptors
(:func:`almat.learner.descriptors.structure_descriptors`). "Far" always means far from what the
committee already knows as well as from what is picked in this batch: the training set's
descriptors seed the FPS, so a candidate identical to a training structure has distance 0 and is
never preferred over anything new.

The policy interface of :mod:`almat.select.policies` sees only the candidates. Policies here also
take a :class:`SelectionContext` (candidate and training descriptors, the committee, the
iteration): ``select(candidates, max_select, rng, context=None)``. Use :func:`call_policy` to call
any policy, old or new, with a context.

Why not ``skmatter.sample_selection.FPS``: scikit-matter (PyPI name ``skmatter``, 0.4.1) pins
``scikit-learn<1.9`` and would downgrade the environment's scikit-learn; it also selects among one
set of points only, whereas here the training set must seed the distances without being
selectable. The greedy loop below is O(n_picks x n_candidates x n_features) and vectorised.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from almat.select.policies import get_policy, register_policy

#: distances below this fraction of the descriptor scale count as "the same structure" (float32 noise
#: of MACE descriptors is ~1e-7 of their norm; rattles of 0.005 Å give ~1e-4 of the spread)
DUPLICATE_TOLERANCE = 1e-6


@dataclass
class SelectionContext:
    """What a descriptor-aware policy may look at besides the candidates.

    ``candidate_descriptors[i]`` belongs to ``candidates[i]``; ``training_descriptors`` are the
    descriptors of the structures the committee was trained on (same model, same features).
    ``describe`` maps a list of structures (Atoms, Structures, frames) to descriptors in the same
    space, for policies that need descriptors of something else (a target structure).
    """

    candidate_descriptors: np.ndarray | None = None
    training_descriptors: np.ndarray | None = None
    committee: Any = None
    iteration: int = 0
    describe: Callable[[Sequence[Any]], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.candidate_descriptors is not None:
            self.candidate_descriptors = np.atleast_2d(np.asarray(self.candidate_descriptors, dtype=float))
        if self.training_descriptors is not None:
            t = np.asarray(self.training_descriptors, dtype=float)
            self.training_descriptors = t.reshape(0, 0) if t.size == 0 else np.atleast_2d(t)
            if (self.candidate_descriptors is not None and self.training_descriptors.size
                    and self.training_descriptors.shape[1] != self.candidate_descriptors.shape[1]):
                raise ValueError(
                    f"training descriptors have {self.training_descriptors.shape[1]} features, "
                    f"candidate descriptors {self.candidate_descriptors.shape[1]}: not the same model?"
                )

    def require_candidate_descriptors(self, n_candidates: int, policy: str) -> np.ndarray:
        if self.candidate_descriptors is None:
            raise ValueError(f"policy {policy!r} needs candidate descriptors: pass a SelectionContext")
        if len(self.candidate_descriptors) != n_candidates:
            raise ValueError(
                f"{len(self.candidate_descriptors)} candidate descriptors for {n_candidates} candidates"
            )
        return self.candidate_descriptors

    @property
    def reference(self) -> np.ndarray | None:
        t = self.training_descriptors
        return t if t is not None and t.size else None


def build_selection_context(
    candidates: Sequence[Any],
    committee=None,
    training_frames: Sequence[Any] = (),
    iteration: int = 0,
    batch_size: int = 16,
) -> SelectionContext:
    """Descriptors of the candidates and the training frames from the committee's first member.

    ``candidates`` have a ``structure`` (``CandidateFrame``) or are Atoms/Structures;
    ``training_frames`` likewise (``LabelDoc.to_atoms()`` results, for instance). Without a
    committee the context carries the iteration only (enough for uncertainty-only policies).
    """
    if committee is None:
        return SelectionContext(iteration=iteration)
    from almat.learner.descriptors import structure_descriptors  # torch: only with a committee

    def describe(frames: Sequence[Any]) -> np.ndarray:
        return structure_descriptors(committee, list(frames), batch_size=batch_size)

    cand = describe(candidates)
    train = describe(training_frames) if len(training_frames) else np.zeros((0, cand.shape[1]))
    return SelectionContext(cand, train, committee, iteration, describe)


def call_policy(policy, candidates, max_select: int, rng: np.random.Generator,
                context: SelectionContext | None = None) -> list[int]:
    """``policy.select`` with the context when the policy takes one, without it otherwise."""
    try:
        params = inspect.signature(policy.select).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}
    takes_context = "context" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if takes_context:
        return list(policy.select(candidates, max_select, rng, context=context))
    return list(policy.select(candidates, max_select, rng))


def policy_needs_descriptors(policy, iteration: int = 0) -> bool:
    """Whether ``policy`` wants descriptors at ``iteration`` (so that the caller computes them only then).

    Policies say so with a ``needs_descriptors`` attribute: a bool or a method of the iteration.
    """
    flag = getattr(policy, "needs_descriptors", False)
    return bool(flag(iteration) if callable(flag) else flag)


def min_distances(points: np.ndarray, reference: np.ndarray | None, chunk: int = 2048) -> np.ndarray:
    """Distance from each of ``points`` to its nearest ``reference`` point (``inf`` without reference)."""
    points = np.asarray(points, dtype=float)
    out = np.full(len(points), np.inf)
    if reference is None or len(reference) == 0 or len(points) == 0:
        return out
    reference = np.asarray(reference, dtype=float)
    p2 = np.einsum("ij,ij->i", points, points)
    for start in range(0, len(reference), chunk):
        r = reference[start:start + chunk]
        d2 = p2[:, None] + np.einsum("ij,ij->i", r, r)[None, :] - 2.0 * points @ r.T
        out = np.minimum(out, d2.min(axis=1))
    return np.sqrt(np.clip(out, 0.0, None))


def _distances_to(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points - x[None, :], axis=1)


def farthest_point_sampling(
    points: np.ndarray,
    n_select: int,
    reference: np.ndarray | None = None,
    first: int | None = None,
    min_distance: float = 0.0,
) -> tuple[list[int], np.ndarray]:
    """Greedy FPS: indices of up to ``n_select`` points, each the farthest from all earlier picks
    and from ``reference``; also the distance each pick had when it was picked.

    Without a reference the first pick is ``first`` or, by default, the point farthest from the
    points' centroid (deterministic). Picking stops early when no point is farther than
    ``min_distance`` from what is already known, and never takes a point at (numerically) zero
    distance: duplicates add nothing.
    """
    points = np.asarray(points, dtype=float)
    n = len(points)
    n_select = min(max(int(n_select), 0), n)
    if n_select == 0:
        return [], np.zeros(0)
    d = min_distances(points, reference)
    picks: list[int] = []
    gaps: list[float] = []
    if not np.isfinite(d).any():  # no reference: start from the most atypical point (or the one asked)
        i = int(first) if first is not None else int(np.argmax(_distances_to(points, points.mean(axis=0))))
        picks.append(i)
        gaps.append(np.inf)
        d = _distances_to(points, points[i])
    scale = float(np.max(d[np.isfinite(d)])) if np.isfinite(d).any() else 0.0
    tol = DUPLICATE_TOLERANCE * max(scale, float(np.abs(points).max(initial=0.0)), 1e-300)
    d[picks] = -np.inf
    while len(picks) < n_select:
        i = int(np.argmax(d))
        if d[i] <= max(min_distance, tol):
            break
        picks.append(i)
        gaps.append(float(d[i]))
        d = np.minimum(d, _distances_to(points, points[i]))
        d[picks] = -np.inf
    return picks, np.array(gaps)


def diversity_filter(
    points: np.ndarray,
    order: Sequence[int],
    min_distance: float,
    reference: np.ndarray | None = None,
    max_keep: int | None = None,
) -> list[int]:
    """Walk ``order`` (indices into ``points``, best first) and keep an index only if its point is at
    least ``min_distance`` from every point kept so far and from ``reference``.

    Near-identical frames of one trajectory then yield one label, not one each.
    """
    points = np.asarray(points, dtype=float)
    d = min_distances(points, reference)
    kept: list[int] = []
    for i in order:
        i = int(i)
        if max_keep is not None and len(kept) >= max_keep:
            break
        if d[i] < min_distance or i in kept:
            continue
        kept.append(i)
        d = np.minimum(d, _distances_to(points, points[i]))
    return kept


def _nearest_neighbour_distances(points: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distance of each point to its nearest other point (``inf`` for a single point)."""
    n = len(points)
    out = np.full(n, np.inf)
    sq = np.einsum("ij,ij->i", points, points)
    for start in range(0, n, chunk):
        block = points[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ points.T
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf  # not its own neighbour
        out[start:start + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def descriptor_scale(candidates: np.ndarray, reference: np.ndarray | None = None) -> float:
    """A typical distance between distinct structures, for thresholds that do not depend on the
    units of the model's features.

    With at least two reference (training) structures: the median distance of a training
    structure to its nearest other training structure. Otherwise the median pairwise distance of
    the candidates. (Not the candidates' nearest-neighbour distances: when most candidates are
    near-duplicate MD frames, which is the case the filter exists for, those are tiny.)
    """
    if reference is not None and len(reference) >= 2:
        nn = _nearest_neighbour_distances(np.asarray(reference, dtype=float))
        nn = nn[nn > 0]
        if nn.size:
            return float(np.median(nn))
    candidates = np.asarray(candidates, dtype=float)
    if len(candidates) < 2:
        return 0.0
    i, j = np.triu_indices(len(candidates), 1)
    if i.size > 200_000:  # a random subset of pairs is plenty for a median
        keep = np.random.default_rng(0).choice(i.size, 200_000, replace=False)
        i, j = i[keep], j[keep]
    return float(np.median(np.linalg.norm(candidates[i] - candidates[j], axis=1)))


@dataclass
class FPSSelection:
    """Diversity only: farthest point sampling in descriptor space, seeded by the training set.

    For the first iterations, while the committee's deviation is not yet a trustworthy measure of
    its error. ``min_distance`` (descriptor units) stops the picking once nothing left is that far
    from the training set and the picks; 0 only skips exact duplicates.
    """

    name: str = "fps"
    min_distance: float = 0.0
    needs_descriptors: ClassVar[bool] = True

    def select(self, candidates, max_select, rng, context: SelectionContext | None = None):
        if not len(candidates) or max_select <= 0:
            return []
        if context is None:
            raise ValueError("policy 'fps' needs descriptors: pass a SelectionContext (see build_selection_context)")
        x = context.require_candidate_descriptors(len(candidates), self.name)
        picks, _ = farthest_point_sampling(x, max_select, reference=context.reference,
                                           min_distance=self.min_distance)
        return picks


@dataclass
class DiversityFilter:
    """Another policy's ranking with near-duplicates removed.

    The ``base`` policy (by name, default ``max_deviation``) ranks all candidates; walking that
    ranking, a candidate is kept only if it is at least ``min_distance`` away from the training set
    and from the candidates already kept. With ``relative=True`` (default) ``min_distance`` is a
    fraction of :func:`descriptor_scale` (the median nearest-neighbour distance within the training
    set), so it does not depend on the units of the model's features.
    """

    name: str = "diverse"
    base: str = "max_deviation"
    min_distance: float = 0.5
    relative: bool = True
    needs_descriptors: ClassVar[bool] = True

    def select(self, candidates, max_select, rng, context: SelectionContext | None = None):
        if not len(candidates) or max_select <= 0:
            return []
        if context is None:
            raise ValueError("policy 'diverse' needs descriptors: pass a SelectionContext")
        x = context.require_candidate_descriptors(len(candidates), self.name)
        base = get_policy(self.base) if isinstance(self.base, str) else self.base
        order = call_policy(base, candidates, len(candidates), rng, context)
        threshold = self.min_distance * (descriptor_scale(x, context.reference) if self.relative else 1.0)
        return diversity_filter(x, order, threshold, reference=context.reference, max_keep=max_select)


def _register() -> None:
    register_policy("fps", FPSSelection)
    register_policy("diverse", DiversityFilter)


_register()
