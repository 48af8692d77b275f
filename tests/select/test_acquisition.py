import numpy as np
import pytest
from ase.build import bulk

from almat.sampler.jobs import CandidateFrame
from almat.schemas import to_structure
from almat.select import SELECTION_POLICIES, MaxDeviationSelection, get_policy

from almat.select.acquisition import WeightedAcquisition, WeightSchedule, greedy_acquisition
from almat.select.fps import (
    FPSSelection,
    SelectionContext,
    build_selection_context,
    min_distances,
    policy_needs_descriptors,
)


def _cell(strain, rattle, seed):
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, size=atoms.positions.shape)
    return atoms


def _candidates(frames, deviations, temperatures):
    return [
        CandidateFrame(structure=to_structure(a), step=i, model_deviation=float(d), energy_deviation=0.0,
                       temperature=float(t))
        for i, (a, d, t) in enumerate(zip(frames, deviations, temperatures))
    ]


@pytest.fixture(scope="module")
def explored(tiny_committee, cu_data):
    """20 MD-like frames with their real committee deviations, half at 300 K and half at 1200 K."""
    committee, _ = tiny_committee
    rng = np.random.default_rng(3)
    frames = [_cell(s, r, 50 + i) for i, (s, r) in enumerate(zip(rng.uniform(-0.05, 0.05, 20), rng.uniform(0.03, 0.2, 20)))]
    deviations = committee.predict(frames).model_deviation
    temperatures = [300.0] * 10 + [1200.0] * 10
    candidates = _candidates(frames, deviations, temperatures)
    context = build_selection_context(candidates, committee, cu_data[0], iteration=0)
    return frames, candidates, context


def test_schedule_moves_from_w0_to_w1():
    lin = WeightSchedule(w0=0.1, w1=0.9, n_iterations=4, kind="linear")
    assert [lin(i) for i in range(6)] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9, 0.9])
    exp = WeightSchedule(w0=0.1, w1=0.9, n_iterations=4, kind="exponential", sharpness=3.0)
    w = [exp(i) for i in range(6)]
    assert w[0] == pytest.approx(0.1) and w[4] == pytest.approx(0.9) and w[5] == pytest.approx(0.9)
    assert np.all(np.diff(w[:5]) > 0)
    assert all(w[i] > lin(i) for i in (1, 2, 3))  # front-loaded
    assert np.diff(w[:5])[0] > np.diff(w[:5])[-1]
    assert WeightSchedule(0.3, 0.9, kind="constant")(7) == 0.3
    assert WeightSchedule(0.8, 0.2, n_iterations=2)(1) == pytest.approx(0.5)  # may go either way
    for bad in ({"w0": -0.1}, {"w1": 1.5}, {"kind": "cosine"}, {"n_iterations": -1}, {"sharpness": 0}):
        with pytest.raises(ValueError):
            WeightSchedule(**bad)


def test_weight_one_is_max_deviation_order(explored):
    _, candidates, context = explored
    expected = MaxDeviationSelection().select(candidates, 8, None)
    policy = WeightedAcquisition(w0=1.0, w1=1.0)
    assert policy.select(candidates, 8, np.random.default_rng(0), context=context) == expected
    # without descriptors too, since there is no diversity term
    assert policy.select(candidates, 8, np.random.default_rng(0)) == expected


def test_weight_zero_is_fps_seeded_by_training(explored):
    _, candidates, context = explored
    expected = FPSSelection().select(candidates, 8, None, context=context)
    assert WeightedAcquisition(w0=0.0, w1=0.0).select(candidates, 8, None, context=context) == expected
    assert expected != MaxDeviationSelection().select(candidates, 8, None)  # the two really differ here


def test_the_schedule_drives_the_policy(explored):
    _, candidates, context = explored
    policy = WeightedAcquisition(w0=0.0, w1=1.0, n_iterations=3)
    early = policy.select(candidates, 6, None, context=context)
    late = policy.select(candidates, 6, None, context=SelectionContext(
        context.candidate_descriptors, context.training_descriptors, iteration=3))
    assert early == FPSSelection().select(candidates, 6, None, context=context)
    assert late == MaxDeviationSelection().select(candidates, 6, None)
    with pytest.raises(ValueError, match="needs descriptors"):
        policy.select(candidates, 6, None)  # iteration 0, w = 0
    # so the campaign computes descriptors only while they matter
    assert policy_needs_descriptors(policy, 0) and not policy_needs_descriptors(policy, 3)
    assert policy_needs_descriptors(FPSSelection(), 9) and not policy_needs_descriptors(MaxDeviationSelection(), 0)


def test_diversity_is_updated_after_each_pick(tiny_committee, cu_data):
    """Two near-identical frames with the two highest deviations: a mixed score takes only one of them."""
    committee, _ = tiny_committee
    a = _cell(0.04, 0.15, 1)
    twin = a.copy()
    twin.positions += np.random.default_rng(2).normal(0, 0.002, size=a.positions.shape)
    others = [_cell(s, 0.1, 10 + i) for i, s in enumerate((-0.04, -0.02, 0.0, 0.02))]
    frames = [a, twin, *others]
    deviations = [0.30, 0.29, 0.10, 0.12, 0.11, 0.13]
    candidates = _candidates(frames, deviations, [300.0] * 6)
    context = build_selection_context(candidates, committee, cu_data[0])
    exploit_only = WeightedAcquisition(w0=1.0, w1=1.0).select(candidates, 2, None, context=context)
    mixed = WeightedAcquisition(w0=0.4, w1=0.4).select(candidates, 2, None, context=context)
    assert exploit_only == [0, 1]
    assert mixed[0] == 0 and mixed[1] != 1
    # the same score with the diversity frozen at its value before the first pick would take the twin
    x, ref = context.candidate_descriptors, context.training_descriptors
    d0 = min_distances(x, ref)
    u = (np.array(deviations) - min(deviations)) / np.ptp(deviations)
    static = 0.4 * u + 0.6 * d0 / d0.max()
    assert list(np.argsort(-static)[:2]) == [0, 1]
    picks, scores = greedy_acquisition(deviations, x, 6, 0.4, reference=ref)
    assert picks[:2] == mixed and sorted(picks) == list(range(6))
    assert scores[0] == pytest.approx(static[0])


def test_exploitation_can_target_a_temperature_or_a_structure(explored):
    frames, candidates, context = explored
    hot = [i for i, c in enumerate(candidates) if c.temperature == 1200.0]
    cold = [i for i, c in enumerate(candidates) if c.temperature == 300.0]
    by_temperature = WeightedAcquisition(w0=1.0, w1=1.0, target_temperature=1200.0, temperature_width=100.0)
    picks = by_temperature.select(candidates, 5, None, context=context)
    assert set(picks) <= set(hot)
    assert picks == [i for i in MaxDeviationSelection().select(candidates, 20, None) if i in hot][:5]
    # near a given structure: its own frame (and nothing from the other end of the strain range) first
    target = frames[cold[-1]]
    near = WeightedAcquisition(w0=1.0, w1=1.0, target_structure=to_structure(target), target_width=1e-3)
    assert near.select(candidates, 1, None, context=context) == [cold[-1]]
    closeness = near.target_closeness(candidates, context)
    assert closeness[cold[-1]] == pytest.approx(1.0, abs=1e-6) and closeness.min() < 1e-3
    with pytest.raises(ValueError, match="describe"):
        near.select(candidates, 1, None, context=SelectionContext(context.candidate_descriptors))


def test_the_package_registers_weighted():
    assert "weighted" in SELECTION_POLICIES
    policy = get_policy("weighted", w0=0.3, w1=0.8, n_iterations=2, schedule="exponential")
    assert isinstance(policy, WeightedAcquisition)
    assert policy.weight(0) == pytest.approx(0.3) and policy.weight(2) == pytest.approx(0.8)
