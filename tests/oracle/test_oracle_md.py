"""Initial data from the oracle's own MD (``initial.method: oracle-md``): subsampling, labels that come out of
the trajectory, a campaign that starts from them, and the oracles that cannot do it yet."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from almat.campaign import load_config, run_campaign
from almat.campaign.config import ConfigError
from almat.campaign.flow import CampaignMaker
from almat.oracle.calculators import CalculatorSpec
from almat.oracle.md import AseOracleMdMaker, distance_fingerprint, farthest_points, subsample
from almat.schemas import LabelDoc, StructureSource, to_atoms
from almat.stores import CampaignDB


def test_farthest_points_picks_the_outliers_first():
    x = np.array([[0.0], [0.1], [0.2], [5.0], [10.0]])
    assert farthest_points(x, 3, first=0) == [0, 3, 4]
    assert farthest_points(x, 10) == [0, 1, 2, 3, 4]  # fewer rows than asked: all of them


def test_subsample_by_stride_and_by_fps():
    frames = []
    for k in range(9):
        atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
        atoms.positions += np.random.default_rng(k).normal(0, 0.02 if k != 4 else 0.4, atoms.positions.shape)
        frames.append(atoms)
    assert subsample(frames, 3, "stride") == [0, 4, 8]
    fps = subsample(frames, 2, "fps")
    assert len(fps) == 2 and 4 in fps and 8 in fps  # the last frame, then the one that stands out
    assert subsample(frames, 20, "fps") == list(range(9))
    # the fingerprint does not depend on the order of the atoms
    shuffled = frames[4][np.random.default_rng(1).permutation(len(frames[4]))]
    assert np.allclose(distance_fingerprint(shuffled), distance_fingerprint(frames[4]))


def test_oracle_md_frames_come_labelled_by_the_step_that_made_them():
    maker = AseOracleMdMaker(calculator=CalculatorSpec("ase.calculators.emt", "EMT"), temperature=800, steps=40,
                             stride=5, n_frames=4, seed=3)
    start = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    frames = maker._trajectory(start.copy(), seed=3)
    assert len(frames) == 9  # the start and every 5th of 40 steps
    for frame in frames[1:]:
        check = frame.copy()
        check.calc = EMT()
        assert frame.info["oracle_results"]["energy"] == pytest.approx(check.get_potential_energy(), abs=1e-10)
        assert np.allclose(frame.info["oracle_results"]["forces"], check.get_forces(), atol=1e-10)
    assert not np.allclose(frames[-1].positions, start.positions)  # it moved


CONFIG = {
    "name": "cu-oracle-md",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"method": "oracle-md", "n_per_structure": 6, "md_steps": 60, "md_stride": 5, "subsample": "fps",
                "md_temperature": 900},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 10, "batch_size": 4}},
    "sampler": {"temperatures": [600], "steps": 20, "sample_every": 5, "trust_lo": 0.01, "trust_hi": 5.0},
    "selection": {"max_select": 2},
    "convergence": {"force_tolerance": 0.05, "calibration_samples": 2, "max_iterations": 1},
}


@pytest.mark.slow
def test_a_campaign_starts_from_the_oracles_md(settings):
    run_campaign(load_config(CONFIG), settings)
    with CampaignDB.from_settings(settings) as db:
        initial = [LabelDoc.from_store(d) for d in db.labels.query({"campaign": "cu-oracle-md", "iteration": -1})]
        assert len(initial) == 6 and all(lab.ok and lab.source == StructureSource.md for lab in initial)
        for lab in initial[:2]:  # the stored label is EMT's answer for that frame
            atoms = to_atoms(lab.structure)
            atoms.calc = EMT()
            assert lab.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        it0 = db.iterations.query_one({"campaign": "cu-oracle-md", "iteration": 0})
        assert it0["n_train_labels"] == 6


def test_oracle_md_is_refused_where_it_is_not_supported():
    with pytest.raises(ConfigError, match=r"^initial.method: oracle-md with VASP is not supported yet") as err:
        CampaignMaker.from_config({**CONFIG, "oracle": {"kind": "vasp"}})
    assert "\n" not in str(err.value)
    # old campaign files keep their fingerprint: the new settings are left out for the other methods
    rattle = {**CONFIG, "initial": {"n_per_structure": 6}}
    a = load_config(rattle).fingerprint()
    b = load_config({**rattle, "initial": {"n_per_structure": 6, "md_stride": 3}}).fingerprint()
    assert a == b  # md_stride means nothing without oracle-md
