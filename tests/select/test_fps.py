import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.distance import cdist

from almat.learner.descriptors import structure_descriptors
from almat.sampler.jobs import CandidateFrame
from almat.schemas import to_structure
from almat.select import SELECTION_POLICIES, MaxDeviationSelection, get_policy

from almat.select.fps import (
    DiversityFilter,
    FPSSelection,
    SelectionContext,
    build_selection_context,
    call_policy,
    descriptor_scale,
    diversity_filter,
    farthest_point_sampling,
    min_distances,
)


def _cell(strain, rattle, seed):
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, size=atoms.positions.shape)
    return atoms


def _trajectory(strain, rattle, seed, n=4, jitter=0.003):
    """``n`` consecutive-frame-like near-copies of one configuration."""
    base = _cell(strain, rattle, seed)
    rng = np.random.default_rng(seed + 1000)
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, jitter, size=a.positions.shape)
        frames.append(a)
    return frames


def _candidates(frames, deviations, temperature=300.0):
    return [
        CandidateFrame(structure=to_structure(a), step=10 * i, model_deviation=float(d), energy_deviation=0.0,
                       temperature=temperature)
        for i, (a, d) in enumerate(zip(frames, deviations))
    ]


@pytest.fixture(scope="module")
def pool(tiny_committee, cu_data):
    """Training set (the 24 fixture frames); candidates: 3 exact copies of training frames, then
    three 'trajectories' of 4 near-identical frames each, far from each other."""
    committee, _ = tiny_committee
    train = cu_data[0]
    copies = [train[i].copy() for i in (0, 5, 10)]
    trajs = _trajectory(-0.05, 0.10, 1) + _trajectory(0.05, 0.10, 2) + _trajectory(0.0, 0.20, 3)
    frames = copies + trajs
    cluster = np.array([-1, -1, -1] + [0] * 4 + [1] * 4 + [2] * 4)
    deviations = committee.predict(frames).model_deviation
    context = build_selection_context(_candidates(frames, deviations), committee, train, iteration=2)
    return {"frames": frames, "cluster": cluster, "deviations": deviations, "context": context,
            "candidates": _candidates(frames, deviations), "committee": committee}


def test_context_descriptors_match_the_descriptor_module(pool, cu_data):
    ctx = pool["context"]
    assert ctx.candidate_descriptors.shape[0] == 15 and ctx.training_descriptors.shape[0] == 24
    assert ctx.iteration == 2
    np.testing.assert_allclose(ctx.candidate_descriptors[:3], ctx.training_descriptors[[0, 5, 10]], atol=1e-6)
    np.testing.assert_allclose(ctx.describe(cu_data[1][:2]), structure_descriptors(pool["committee"], cu_data[1][:2]))
    with pytest.raises(ValueError, match="not the same model"):
        SelectionContext(np.zeros((2, 3)), np.zeros((4, 5)))


def test_min_distances_is_the_nearest_reference_distance(pool):
    ctx = pool["context"]
    expected = cdist(ctx.candidate_descriptors, ctx.training_descriptors).min(axis=1)
    np.testing.assert_allclose(min_distances(ctx.candidate_descriptors, ctx.training_descriptors, chunk=5),
                               expected, atol=1e-6)
    assert np.all(np.isinf(min_distances(ctx.candidate_descriptors, None)))


def test_fps_takes_one_frame_per_trajectory_and_never_a_training_copy(pool):
    ctx, cluster = pool["context"], pool["cluster"]
    picks = FPSSelection().select(pool["candidates"], 3, np.random.default_rng(0), context=ctx)
    assert sorted(cluster[picks]) == [0, 1, 2]
    # asking for everything: the 12 new frames come, the 3 copies of training structures never do
    all_picks = FPSSelection().select(pool["candidates"], 15, np.random.default_rng(0), context=ctx)
    assert sorted(all_picks) == list(range(3, 15))
    # the same with a distance floor between "a trajectory's frames" and "different trajectories"
    floor = 0.2 * cdist(ctx.candidate_descriptors[3:], ctx.candidate_descriptors[3:])[cluster[3:, None] != cluster[None, 3:]].min()
    assert sorted(cluster[FPSSelection(min_distance=floor).select(pool["candidates"], 15, None, context=ctx)]) == [0, 1, 2]


def test_training_set_seeds_the_distances(pool):
    """Without the training set an FPS would happily start from a copy of a training structure."""
    ctx = pool["context"]
    x = ctx.candidate_descriptors
    d_train = min_distances(x, ctx.training_descriptors)
    picks, gaps = farthest_point_sampling(x, 4, reference=ctx.training_descriptors)
    assert picks[0] == int(np.argmax(d_train))  # the first pick is the least known candidate
    assert gaps[0] == pytest.approx(d_train.max())
    assert np.all(np.diff(gaps) <= 1e-12)  # each pick is no farther than the one before


def test_fps_spreads_better_than_random_subsets(tiny_committee):
    committee, _ = tiny_committee
    rng = np.random.default_rng(7)
    frames = [_cell(s, r, i) for i, (s, r) in enumerate(zip(rng.uniform(-0.05, 0.05, 30), rng.uniform(0.02, 0.2, 30)))]
    x = structure_descriptors(committee, frames)
    k = 5
    picks, gaps = farthest_point_sampling(x, k)
    assert len(set(picks)) == k
    full = cdist(x, x)

    def covering_radius(subset):
        return full[:, subset].min(axis=1).max()

    def separation(subset):
        sub = full[np.ix_(subset, subset)]
        return sub[np.triu_indices(len(subset), 1)].min()

    # FPS invariants: no point is farther from the picks than the last pick was, and the picks
    # are at least that far apart; hence the covering radius is within 2x the best possible one
    assert covering_radius(picks) <= gaps[-1] + 1e-9
    assert separation(picks) >= gaps[-1] - 1e-9
    random_subsets = [rng.choice(len(x), k, replace=False) for _ in range(300)]
    assert covering_radius(picks) <= 2 * min(covering_radius(s) for s in random_subsets)
    assert separation(picks) > np.percentile([separation(s) for s in random_subsets], 90)


def test_diversity_filter_keeps_one_frame_per_trajectory(pool):
    ctx, cluster = pool["context"], pool["cluster"]
    ranking = MaxDeviationSelection().select(pool["candidates"], 15, None)
    picks = DiversityFilter(min_distance=0.5).select(pool["candidates"], 10, np.random.default_rng(0), context=ctx)
    assert picks[0] == ranking[0] or cluster[ranking[0]] == -1  # the most uncertain new frame leads
    new = [i for i in picks if cluster[i] >= 0]
    assert sorted(cluster[new]) == [0, 1, 2]  # one per trajectory
    assert all(cluster[i] >= 0 for i in picks)  # copies of training structures are filtered out
    assert picks == [i for i in ranking if i in picks]  # kept in the base policy's order
    # the plain function: threshold 0 keeps the ranking as is
    assert diversity_filter(ctx.candidate_descriptors, ranking, 0.0) == ranking
    scale = descriptor_scale(ctx.candidate_descriptors, ctx.training_descriptors)
    assert 0 < scale < cdist(ctx.candidate_descriptors[3:], ctx.candidate_descriptors[3:]).max()


def test_policies_need_a_context_and_old_policies_still_work(pool):
    cands = pool["candidates"]
    with pytest.raises(ValueError, match="needs descriptors"):
        FPSSelection().select(cands, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 candidate descriptors for 15"):
        FPSSelection().select(cands, 3, None, context=SelectionContext(np.zeros((3, 4))))
    ctx = pool["context"]
    # call_policy passes the context only to policies that take one
    assert call_policy(MaxDeviationSelection(), cands, 4, np.random.default_rng(0), ctx) == \
        MaxDeviationSelection().select(cands, 4, np.random.default_rng(0))
    assert call_policy(FPSSelection(), cands, 3, np.random.default_rng(0), ctx) == \
        FPSSelection().select(cands, 3, None, context=ctx)
    assert FPSSelection().select([], 3, None, context=ctx) == []


def test_the_package_registers_the_policies():
    assert {"fps", "diverse"} <= set(SELECTION_POLICIES)
    assert isinstance(get_policy("fps"), FPSSelection)
    assert get_policy("diverse", min_distance=0.3).min_distance == 0.3
    assert "fps" in str(pytest.raises(ValueError, get_policy, "nope").value)
