"""Many walkers in one batched committee forward: NVT and NPT, the same frames as one by one, failures alone."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from almat.sampler import ExplorationSettings, Walker, run_exploration, run_walkers
from almat.sampler.md import decode_trajectory
from almat.uncertainty import TrustLevels

WIDE = TrustLevels(lo=1e-4, hi=10.0)


def _cu(seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.03, seed=seed)
    return atoms


def test_batched_walkers_follow_their_sequential_trajectories(tiny_committee):
    committee, _ = tiny_committee
    walkers = [Walker(_cu(k), ExplorationSettings(temperature=t, steps=8, sample_every=4, seed=k, ensemble=e,
                                                  pressure_bar=p), WIDE, name=f"w{k}")
               for k, (t, e, p) in enumerate([(300, "nvt", None), (900, "nvt", None), (600, "npt", 1e4),
                                              (600, "npt_aniso", 1.0)])]
    batched, info = run_walkers(walkers, committee)
    assert info["batched_calls"] == 9  # one committee call per MD step for all walkers (+ the start)
    for w, traj in zip(walkers[1:], batched[1:]):  # nvt, npt, npt_aniso
        alone = run_exploration(w.atoms, committee.calculator(stress=w.settings.npt), w.trust, w.settings)
        assert [f.step for f in traj.frames] == [f.step for f in alone.frames] == [0, 4, 8]
        for a, b in zip(traj.frames, alone.frames):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
            np.testing.assert_allclose(a.cell, b.cell, atol=1e-6)
            assert a.model_deviation == pytest.approx(b.model_deviation, rel=1e-4, abs=1e-7)
    # the same seed gives the same walk; another seed another one
    again, _ = run_walkers(walkers[:1], committee)
    np.testing.assert_allclose(again[0].frames[-1].positions, batched[0].frames[-1].positions, atol=1e-6)
    assert np.abs(batched[0].frames[-1].positions - batched[1].frames[-1].positions).max() > 1e-3


def test_npt_changes_the_cell_and_stores_it_per_frame(tiny_committee):
    committee, _ = tiny_committee
    settings = ExplorationSettings(temperature=300, steps=40, sample_every=10, seed=3, ensemble="npt",
                                   pressure_bar=5e4, barostat_time_fs=50.0)  # 5 GPa, a fast barostat
    (traj,), _ = run_walkers([Walker(_cu(), settings, WIDE)], committee)
    volumes = [abs(np.linalg.det(f.cell)) for f in traj.frames]
    assert len(volumes) == 5 and not traj.stopped_early
    assert volumes[-1] < volumes[0] * 0.999  # compressed
    assert all(f.stress is not None and f.stress.shape == (6,) for f in traj.frames)
    blob = decode_trajectory(traj.to_blob())
    assert blob["cells"].shape == (5, 3, 3) and blob["stress"].shape == (5, 6)
    np.testing.assert_allclose(blob["cells"][-1], traj.frames[-1].cell)


def test_a_cell_that_collapses_stops_its_walker_and_keeps_its_frames(tiny_committee):
    committee, _ = tiny_committee
    settings = ExplorationSettings(temperature=300, steps=60, sample_every=5, seed=1, ensemble="npt",
                                   pressure_bar=2e5, barostat_time_fs=20.0, max_volume_factor=1.03)
    (traj,), _ = run_walkers([Walker(_cu(), settings, WIDE)], committee)
    assert traj.exploded and traj.stopped_early and "cell volume" in traj.stop_reason and "collapsed" in traj.stop_reason
    assert len(traj.frames) >= 1 and traj.frames[-1].step < 60


def test_a_failing_walker_stops_alone(tiny_committee):
    committee, _ = tiny_committee
    silver = bulk("Ag", "fcc", a=4.09, cubic=True)  # an element the committee never saw: its forward fails
    squeezed = _cu()
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0, 0]  # explodes at once
    settings = ExplorationSettings(temperature=300, steps=8, sample_every=4, seed=0)
    trajs, _ = run_walkers([Walker(_cu(1), settings, WIDE), Walker(silver, settings, WIDE),
                            Walker(squeezed, settings, WIDE), Walker(_cu(2), settings, WIDE)], committee)
    ok, failed, exploded, ok2 = trajs
    assert [f.step for f in ok.frames] == [f.step for f in ok2.frames] == [0, 4, 8]
    assert failed.exploded and failed.frames == [] and "not trained on Ag" in failed.stop_reason
    assert exploded.exploded and "apart" in exploded.stop_reason


def test_bad_walkers_are_refused():
    with pytest.raises(ValueError, match="unknown ensemble 'nve'; valid: nvt, npt, npt_aniso"):
        ExplorationSettings(ensemble="nve")
    with pytest.raises(ValueError, match="needs a pressure"):
        ExplorationSettings(ensemble="npt")
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]], cell=[10, 10, 10], pbc=False)
    with pytest.raises(ValueError, match="npt needs a cell periodic along a, b and c.*use nvt"):
        Walker(cluster, ExplorationSettings(ensemble="npt", pressure_bar=1.0), WIDE)
