"""Model deviation and trust levels (DP-GEN's definitions).

For a committee of M models predicting forces F_k,i on atom i:

- the force deviation of atom i is sqrt(mean_k |F_k,i - <F_i>|^2), the norm of the per-atom force
  standard deviation across models;
- the *model deviation* of a frame is the max of that over atoms (DP-GEN's ``max_devi_f``), in eV/Å;
- the energy deviation of a frame is the standard deviation across models of the energy per atom (eV/atom).

Trust levels ``lo`` < ``hi`` classify a frame: accurate (dev < lo), candidate (lo <= dev < hi) or
failed (dev >= hi, the committee is lost there and the frame is not worth an oracle call).
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class FrameClass(str, Enum):
    accurate = "accurate"
    candidate = "candidate"
    failed = "failed"


class TrustLevels(BaseModel):
    """Trust levels on the model deviation (eV/Å)."""

    model_config = ConfigDict(extra="forbid")

    lo: float = Field(0.05, gt=0)
    hi: float = Field(0.30, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.lo < self.hi:
            raise ValueError(f"trust levels need lo < hi, got lo={self.lo}, hi={self.hi}")
        return self

    def classify(self, deviation: float) -> FrameClass:
        if not np.isfinite(deviation) or deviation >= self.hi:
            return FrameClass.failed
        if deviation < self.lo:
            return FrameClass.accurate
        return FrameClass.candidate


def atomic_force_deviation(forces: np.ndarray) -> np.ndarray:
    """Per-atom force deviation from committee forces ``[n_models, n_atoms, 3]`` -> ``[n_atoms]``."""
    forces = np.asarray(forces, dtype=float)
    if forces.ndim != 3 or forces.shape[-1] != 3:
        raise ValueError(f"expected forces of shape [n_models, n_atoms, 3], got {forces.shape}")
    mean = forces.mean(axis=0)
    return np.sqrt(np.mean(np.sum((forces - mean) ** 2, axis=-1), axis=0))


def max_force_deviation(forces: np.ndarray) -> float:
    """DP-GEN's model deviation: max over atoms of the per-atom force deviation (eV/Å)."""
    return float(atomic_force_deviation(forces).max())


def energy_deviation(energies: np.ndarray, natoms: int) -> float:
    """Standard deviation across models of the energy per atom (eV/atom)."""
    return float(np.std(np.asarray(energies, dtype=float) / natoms))
