"""``drive: first``: the first member drives the MD, the committee is evaluated only on recorded frames."""

import numpy as np
import pytest
from ase.build import bulk

from almat.campaign import load_config
from almat.learner.committee import Committee
from almat.sampler import ExplorationSettings, Walker, run_walkers
from almat.sampler.jobs import ExploreWalkersMaker
from almat.uncertainty import TrustLevels

WIDE = TrustLevels(lo=1e-4, hi=10.0)


def _walkers(steps=8, sample_every=4):
    out = []
    for k, t in enumerate((300.0, 900.0)):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.03, seed=k)
        out.append(Walker(atoms, ExplorationSettings(temperature=t, steps=steps, sample_every=sample_every, seed=k),
                          WIDE, name=f"w{k}"))
    return out


def test_the_first_member_drives_and_the_committee_judges_the_recorded_frames(tiny_committee):
    committee, _ = tiny_committee
    calls = []
    evaluate = committee.evaluate

    def counted(frames, compute_stress=False, deviation=True):
        calls.append(len(frames))
        return evaluate(frames, compute_stress=compute_stress, deviation=deviation)

    committee.evaluate = counted
    try:
        first, info = run_walkers(_walkers(), committee, drive="first")
    finally:
        del committee.evaluate
    assert info["batched_calls"] == 9 and calls == [2, 2, 2]  # the whole committee at steps 0, 4 and 8 only
    # the same walk as a committee whose members are all the first model (its mean is the first model)
    alone, _ = run_walkers(_walkers(), Committee([committee.models[0]] * 2), drive="mean")
    for a, b in zip(first, alone):
        assert [f.step for f in a.frames] == [f.step for f in b.frames] == [0, 4, 8]
        for fa, fb in zip(a.frames, b.frames):
            np.testing.assert_allclose(fa.positions, fb.positions, atol=1e-5)
    # the recorded deviation is the committee's at the recorded positions
    frame = first[1].frames[-1]
    atoms = _walkers()[1].atoms.copy()
    atoms.positions = frame.positions
    assert frame.model_deviation == pytest.approx(float(committee.evaluate([atoms]).model_deviation[0]), rel=1e-4)
    assert frame.model_deviation > 0
    mean, _ = run_walkers(_walkers(), committee)  # the default drive: another walk
    assert np.abs(mean[1].frames[-1].positions - frame.positions).max() > 1e-5


def test_bad_drive_is_refused_in_one_line(tiny_committee):
    with pytest.raises(ValueError, match="unknown drive 'last'; valid: mean, first"):
        run_walkers(_walkers(), tiny_committee[0], drive="last")
    with pytest.raises(ValueError, match="unknown drive 'last'; valid: mean, first"):
        ExploreWalkersMaker(drive="last")


def test_drive_setting_and_fingerprint():
    base = {"name": "d", "structures": [{"bulk": {"name": "Cu", "cubic": True}}]}
    default = load_config(base)
    assert default.sampler.drive == "mean"
    assert load_config({**base, "sampler": {"drive": "mean"}}).fingerprint() == default.fingerprint()
    first = load_config({**base, "sampler": {"drive": "first"}})
    assert first.fingerprint() != default.fingerprint()
    with pytest.raises(Exception) as info:
        load_config({**base, "sampler": {"drive": "last"}})
    assert "drive" in str(info.value) and "first" in str(info.value)
