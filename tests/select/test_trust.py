import pytest

from almat.select.trust import adaptive_lo, classify


def test_adaptive_lo_makes_the_asked_number_or_fraction_of_candidates():
    devs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.5, 0.9]
    his = [0.3] * 7
    lo = adaptive_lo(devs, his, number=2)
    assert lo == 0.04 and classify(devs, lo, 0.3).count("candidate") == 2
    # a fraction counts the frames below hi only (5 here): ceil(0.5 x 5) = 3
    assert adaptive_lo(devs, his, fraction=0.5) == 0.03
    # per-walker hi: the 0.5 frame is below its walker's hi of 0.6 and becomes the most uncertain candidate
    assert adaptive_lo(devs, [0.3] * 5 + [0.6, 0.6], number=1) == 0.5
    assert adaptive_lo(devs, his, number=100) == 0.01  # more than there are: every frame below hi
    assert adaptive_lo(devs, his, number=2, lo_max=0.035, lo_min=0.0) == 0.035
    assert adaptive_lo(devs, his, number=4, lo_min=0.025) == 0.025
    assert adaptive_lo([0.5, float("nan")], [0.3, 0.3], number=1) is None  # nothing below hi
    with pytest.raises(ValueError, match="exactly one"):
        adaptive_lo(devs, his)


def test_classify():
    assert classify([0.01, 0.1, 0.3, float("inf")], 0.05, 0.3) == ["accurate", "candidate", "failed", "failed"]
