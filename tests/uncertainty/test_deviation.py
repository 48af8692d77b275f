import numpy as np
import pytest
from pydantic import ValidationError

from almat.uncertainty import FrameClass, TrustLevels, atomic_force_deviation, energy_deviation, max_force_deviation


def test_model_deviation_matches_dpgen_definition():
    # two models, two atoms: atom 0 agrees, atom 1 differs by (2, 0, 0)
    forces = np.array([[[1.0, 0, 0], [0, 0, 0]], [[1.0, 0, 0], [2.0, 0, 0]]])
    per_atom = atomic_force_deviation(forces)
    np.testing.assert_allclose(per_atom, [0.0, 1.0])  # sqrt(mean |F - <F>|^2) = sqrt((1 + 1) / 2)
    assert max_force_deviation(forces) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 5, 3))
    expected = np.max(np.linalg.norm(np.std(f, axis=0), axis=1))  # norm of the per-atom std
    assert max_force_deviation(f) == pytest.approx(expected)


def test_energy_deviation_per_atom():
    assert energy_deviation(np.array([-10.0, -12.0]), natoms=2) == pytest.approx(0.5)


def test_trust_levels_classify():
    trust = TrustLevels(lo=0.1, hi=0.3)
    assert trust.classify(0.05) == FrameClass.accurate
    assert trust.classify(0.1) == FrameClass.candidate
    assert trust.classify(0.29) == FrameClass.candidate
    assert trust.classify(0.3) == FrameClass.failed
    assert trust.classify(float("nan")) == FrameClass.failed
    with pytest.raises(ValidationError, match="lo < hi"):
        TrustLevels(lo=0.3, hi=0.1)


def test_bad_force_shape():
    with pytest.raises(ValueError, match="n_models, n_atoms, 3"):
        atomic_force_deviation(np.zeros((3, 4)))
