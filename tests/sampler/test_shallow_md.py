"""MD with a shallow ensemble: the heads' forces (the deviation) only where a frame is recorded, the mean alone
(one model's cost) in between; the trajectory is the one with every head at every step."""

import numpy as np

from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.shallow import train_shallow_mace
from almat.sampler import ExplorationSettings, Walker, run_exploration, run_walkers
from almat.uncertainty import TrustLevels


class Counting(Committee):
    """The committee, noting whether each call asked for the deviations."""

    def __init__(self, models):
        super().__init__(models)
        self.asked: list[bool] = []

    def evaluate(self, atoms_list, compute_stress=False, deviation=True):
        self.asked.append(deviation)
        return super().evaluate(atoms_list, compute_stress, deviation)


class EveryStep:
    """The same committee, evaluated with every head at every step (the sampler sees no shallow ensemble)."""

    shallow = False

    def __init__(self, committee):
        self.committee, self.calls = committee, 0

    def evaluate(self, atoms_list, compute_stress=False):
        self.calls += 1
        return self.committee.evaluate(atoms_list, compute_stress)


def test_recorded_frames_carry_the_deviation_and_the_trajectory_is_unchanged(cu_data):
    train, _ = cu_data
    hp = MaceHyperParameters(num_channels=8, epochs=8, batch_size=6, eval_every=4)
    committee = Counting([train_shallow_mace(train, [str(i) for i in range(len(train))], hp, seed=0, n_heads=3).model])
    settings = ExplorationSettings(temperature=500.0, steps=12, sample_every=4, seed=3)
    walkers = [Walker(train[0], settings, TrustLevels(lo=50.0, hi=100.0), name=f"w{k}") for k in range(2)]
    cheap, _ = run_walkers(walkers, committee)
    # 4 recorded frames: every head there; the 3 steps between two of them: the mean only
    assert committee.asked.count(False) > committee.asked.count(True) >= 4
    reference = EveryStep(committee)
    full, _ = run_walkers(walkers, reference)
    for a, b in zip(cheap, full):
        assert [f.step for f in a.frames] == [f.step for f in b.frames] == [0, 4, 8, 12]
        assert all(f.model_deviation > 0 for f in a.frames)  # three heads that disagree, at every recorded frame
        assert np.allclose([f.model_deviation for f in a.frames], [f.model_deviation for f in b.frames], atol=1e-4)
        assert all(np.allclose(f.positions, g.positions, atol=1e-4) for f, g in zip(a.frames, b.frames))
    # the single-walker path (ASE calculator in the main thread) does the same
    single = run_exploration(train[0], committee.calculator(), TrustLevels(lo=50.0, hi=100.0), settings)
    assert np.allclose([f.model_deviation for f in single.frames], [f.model_deviation for f in cheap[0].frames],
                       atol=1e-4)
