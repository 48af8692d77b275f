from dataclasses import dataclass

import numpy as np
import pytest

from almat.select import SELECTION_POLICIES, MaxDeviationSelection, RandomSelection, SelectionPolicy, get_policy


@dataclass
class C:
    model_deviation: float


CANDS = [C(0.1), C(0.25), C(0.05), C(0.2), C(0.15)]


def test_max_deviation_highest_first():
    picks = MaxDeviationSelection().select(CANDS, 3, np.random.default_rng(0))
    assert picks == [1, 3, 4]
    assert MaxDeviationSelection().select(CANDS, 10, np.random.default_rng(0)) == [1, 3, 4, 0, 2]


def test_random_is_a_seeded_subset():
    a = RandomSelection().select(CANDS, 3, np.random.default_rng(1))
    b = RandomSelection().select(CANDS, 3, np.random.default_rng(1))
    assert a == b and len(set(a)) == 3 and set(a) <= set(range(5))
    assert RandomSelection().select(CANDS, 0, np.random.default_rng(1)) == []
    assert sorted(RandomSelection().select(CANDS, 9, np.random.default_rng(1))) == [0, 1, 2, 3, 4]


def test_policies_satisfy_the_interface():
    for name in SELECTION_POLICIES:
        assert isinstance(get_policy(name), SelectionPolicy)


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: diverse, fps, max_deviation, random, weighted"):
        get_policy("fps-typo")
