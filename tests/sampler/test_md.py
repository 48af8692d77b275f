import numpy as np
from ase.build import bulk

from almat.sampler import ExplorationSettings, run_exploration
from almat.sampler.md import decode_trajectory
from almat.uncertainty import FrameClass, TrustLevels


def test_exploration_records_frames_with_deviation(tiny_committee):
    committee, _ = tiny_committee
    atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
    settings = ExplorationSettings(temperature=300, steps=20, sample_every=5, seed=1)
    traj = run_exploration(atoms, committee.calculator(), TrustLevels(lo=1e-4, hi=10.0), settings)
    assert [f.step for f in traj.frames] == [0, 5, 10, 15, 20]
    assert not traj.stopped_early and not traj.exploded
    devs = np.array([f.model_deviation for f in traj.frames])
    assert np.all(devs > 0) and np.all(np.isfinite(devs))
    # the recorded deviation is the committee's on that very frame
    pred = committee.predict([traj.atoms(2)])
    assert traj.frames[2].model_deviation == np.float64(pred.model_deviation[0]).item() or \
        abs(traj.frames[2].model_deviation - pred.model_deviation[0]) < 1e-5
    blob = decode_trajectory(traj.to_blob())  # positions and cells as compact arrays
    assert blob["positions"].shape == (5, 8, 3) and blob["frame_class"][0] in {c.value for c in FrameClass}
    np.testing.assert_array_equal(blob["positions"][2], traj.frames[2].positions)


def test_trajectory_stops_beyond_hi(tiny_committee):
    committee, _ = tiny_committee
    atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
    atoms.rattle(0.1, seed=0)
    traj = run_exploration(atoms, committee.calculator(), TrustLevels(lo=1e-7, hi=2e-7),
                           ExplorationSettings(steps=50, sample_every=5))
    assert len(traj.frames) == 1 and traj.stopped_early and not traj.exploded
    assert traj.frames[0].frame_class == FrameClass.failed and "beyond hi" in traj.stop_reason


def test_exploding_md_ends_the_trajectory_not_the_campaign(tiny_committee):
    committee, _ = tiny_committee
    atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
    atoms.positions[1] = atoms.positions[0] + [0.2, 0, 0]  # atoms on top of each other
    traj = run_exploration(atoms, committee.calculator(), TrustLevels(lo=0.05, hi=10.0),
                           ExplorationSettings(steps=50, sample_every=5))
    assert traj.exploded and traj.frames == [] and "exploded" in traj.stop_reason and "apart" in traj.stop_reason
