"""The DeePMD learner's hyperparameters (no deepmd, no tensorflow, no torch: a campaign file validates with it).

They map one to one onto deepmd-kit's ``input.json`` (``almat.learner.deepmd.input_script``): an
``se_e2_a`` descriptor, an energy fitting net, an exponentially decaying learning rate and the ``ener`` loss
with its start/limit prefactors. Committee members differ by seed (network initialisation, batch order and
their train/validation split).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from almat.schemas.section import Section


class DeepmdHyperParameters(Section):
    """DeePMD (deepmd-kit's TensorFlow backend) trained from scratch with ``dp train``."""

    descriptor: Literal["se_e2_a"] = Field("se_e2_a", description="deepmd descriptor type")
    rcut: float = Field(5.0, gt=0, description="Cut-off radius (Å)")
    rcut_smth: float = Field(2.0, ge=0, description="Where the smooth switch-off starts (Å)")
    sel: list[int] | None = Field(None, description="Most neighbours per element within rcut; None: 1.5x the "
                                                    "most seen in the first training set (then kept)")
    neuron: list[int] = Field([10, 20, 40], min_length=1, description="Embedding net widths")
    axis_neuron: int = Field(8, ge=1, description="Columns of the embedding matrix kept (≤ last embedding width)")
    fitting_neuron: list[int] = Field([64, 64], min_length=1, description="Fitting net widths")
    precision: Literal["float64", "float32"] = "float64"
    numb_steps: int = Field(2000, ge=1, description="Training steps from scratch")
    warm_start_steps: int = Field(500, ge=1, description="Training steps when continuing from a previous member "
                                                         "(dp train --init-frz-model)")
    batch_size: int = Field(1, ge=1, description="Frames per step")
    start_lr: float = Field(1e-3, gt=0)
    stop_lr: float = Field(1e-5, gt=0)
    decay_steps: int | None = Field(None, ge=1, description="None: numb_steps // 20")
    start_pref_e: float = Field(0.02, ge=0)
    limit_pref_e: float = Field(1.0, ge=0)
    start_pref_f: float = Field(1000.0, ge=0)
    limit_pref_f: float = Field(1.0, ge=0)
    start_pref_v: float = Field(0.0, ge=0, description="Virial weight; used where the labels have stresses")
    limit_pref_v: float = Field(0.0, ge=0)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    device: str = Field("cpu", description="cpu only is tested")

    @model_validator(mode="after")
    def _consistent(self):
        if self.rcut_smth >= self.rcut:
            raise ValueError(f"rcut_smth ({self.rcut_smth}) must be below rcut ({self.rcut})")
        if self.axis_neuron > self.neuron[-1]:
            raise ValueError(f"axis_neuron ({self.axis_neuron}) must be at most neuron[-1] ({self.neuron[-1]})")
        if self.sel is not None and any(s < 1 for s in self.sel):
            raise ValueError("sel must be positive neighbour counts")
        return self
