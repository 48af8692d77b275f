"""Learning-curve arithmetic shared by the benchmarks (pure: no almat import)."""

from __future__ import annotations

import math
from typing import Sequence


def error_at(labels: Sequence[float], rmse: Sequence[float], n: float) -> float | None:
    """A curve's RMSE at ``n`` labels (log-linear between points; None outside the curve)."""
    points = [(x, y) for x, y in zip(labels, rmse) if y is not None and y > 0]
    if not points or n < points[0][0] or n > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= n <= x1:
            t = 0.0 if x1 == x0 else (n - x0) / (x1 - x0)
            return float(math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))))
    return float(points[-1][1])
