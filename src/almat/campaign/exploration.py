"""The exploration report of an MD iteration (in the spirit of dpgen2's ``ExplorationReport``): how many
explored frames fell in each trust class, their ratios, and the histogram of model deviation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from almat.schemas import DeviationHistogram

#: bin edges (eV/Å) of the stored model-deviation histograms
DEVIATION_BINS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 1e9]
#: the trust classes of an explored frame (``almat.select.trust.classify``)
CLASSES = ("accurate", "candidate", "failed")


@dataclass(frozen=True)
class ExplorationReport:
    """Frames per trust class and the max atomic force deviation (eV/Å) of every explored frame."""

    counts: dict[str, int]
    deviations: np.ndarray = field(default_factory=lambda: np.array([]))

    @classmethod
    def from_walkers(cls, explored: Iterable) -> ExplorationReport:
        """From the walkers' summaries: anything with ``counts`` (class -> frames) and ``model_deviation``
        (per frame), e.g. ``ExploreDoc``."""
        explored = list(explored)
        deviations = np.array([d for doc in explored for d in doc.model_deviation])
        return cls({k: sum(doc.counts.get(k, 0) for doc in explored) for k in CLASSES}, deviations)

    @property
    def n_frames(self) -> int:
        return int(sum(self.counts.get(k, 0) for k in CLASSES))

    @property
    def ratios(self) -> dict[str, float]:
        """Fraction of the explored frames in each class (all 0 without frames)."""
        n = self.n_frames
        return {k: (self.counts.get(k, 0) / n if n else 0.0) for k in CLASSES}

    def histogram(self, bins: Sequence[float] = DEVIATION_BINS) -> DeviationHistogram:
        """Frames per bin of model deviation (the last bin is open: 1e9)."""
        counts = np.histogram(self.deviations, bins=bins)[0] if self.deviations.size else np.zeros(len(bins) - 1)
        return DeviationHistogram(bin_edges=list(bins), counts=[int(c) for c in counts])
