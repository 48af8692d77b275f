"""Which explored frames are candidates: per-walker trust levels, and DP-GEN's adaptive lower level."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def adaptive_lo(deviations: Sequence[float], his: Sequence[float], number: int | None = None,
                fraction: float | None = None, lo_min: float = 0.0, lo_max: float | None = None) -> float | None:
    """The lower trust level that makes ``number`` frames (or ``fraction`` of the frames below their ``hi``)
    candidates: the deviation of the ``n``-th most uncertain frame below ``hi``, kept within
    ``[lo_min, lo_max]``. ``None`` when no frame is below its ``hi``. Frames with equal deviations are
    all candidates or none, so ties may add a few beyond ``n``."""
    if (number is None) == (fraction is None):
        raise ValueError("give exactly one of number or fraction")
    d, h = np.asarray(deviations, dtype=float), np.asarray(his, dtype=float)
    below = np.sort(d[np.isfinite(d) & (d < h)])[::-1]
    if below.size == 0:
        return None
    n = number if number is not None else math.ceil(fraction * below.size)
    lo = float(below[min(max(n, 1), below.size) - 1])
    if lo_max is not None:
        lo = min(lo, lo_max)
    return max(lo, lo_min)


def classify(deviations: Sequence[float], lo: float, hi: float) -> list[str]:
    """``accurate`` (< lo), ``candidate`` or ``failed`` (>= hi, or not finite) per frame."""
    return ["failed" if not np.isfinite(x) or x >= hi else "accurate" if x < lo else "candidate" for x in deviations]
