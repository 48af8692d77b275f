"""The hyperparameters of almat's learners, without importing torch (a campaign file validates with them).

A hyperparameters class is a ``Section`` (unknown keys are refused; jobflow serialises it) with a ``device``
(the torch device its models run on). ``shorthands`` names keys that a campaign file may also write in the
``learner`` section itself (``learner.foundation: PATH``), with what they are.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from almat.schemas.section import Section


STRESS_WEIGHT_HELP = (
    "Weight of the squared stress error in GPa² (per configuration, over the labels that carry a stress; "
    "0: stresses are not trained on). NPT exploration and densities need it: forces alone leave the "
    "equilibrium volume loose. Not given, in a campaign with an NPT stage: 0.1 (NPT_STRESS_WEIGHT)")

#: ``stress_weight`` (GPa²) of a campaign with an NPT stage that does not give one (MACE committees; a shallow
#: ensemble trains no stresses). 1 GPa of stress error then costs as much as 0.1 eV/Å of force error (with
#: ``forces_weight`` 10). Measured for densities only (docs/exploration.md: the Li6PS5Cl committee's 0 K densities
#: from +8.2 / +3.3 % to -2.4 / -0.4 % of GFN1-xTB's, for a force RMSE 5 % higher); its effect on the number of
#: iterations to converge is not yet measured over seeds (issue 23).
NPT_STRESS_WEIGHT = 0.1


class MaceHyperParameters(Section):
    """Model and training settings. The defaults are a small, fast model for CPU demos."""

    r_max: float = Field(4.5, gt=0, description="Cutoff radius (Å)")
    num_channels: int = Field(16, ge=1)
    max_L: int = Field(0, ge=0, le=3, description="Max L of the hidden equivariant features")
    num_interactions: int = Field(2, ge=1)
    correlation: int = Field(2, ge=1)
    max_ell: int = Field(2, ge=1)
    num_radial_basis: int = Field(8, ge=1)
    num_cutoff_basis: int = Field(5, ge=1)
    radial_mlp: list[int] = Field(default_factory=lambda: [32, 32])
    mlp_irreps: str = "16x0e"
    pair_repulsion: bool = Field(
        True, description="Add MACE's ZBL pair repulsion, so that MD with an early committee stays physical "
        "at short range where there are no data yet"
    )
    epochs: int = Field(60, ge=1, description="Epochs when training from scratch")
    warm_start_epochs: int = Field(25, ge=0, description="Epochs when continuing from a previous model")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.01, gt=0)
    lr_final_fraction: float = Field(0.05, gt=0, le=1, description="Cosine decay of the lr down to lr * this")
    energy_weight: float = Field(1.0, ge=0)
    forces_weight: float = Field(10.0, ge=0)
    stress_weight: float = Field(0.0, ge=0, description=STRESS_WEIGHT_HELP)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    eval_every: int = Field(5, ge=1, description="Validate every N epochs and keep the best state")
    dtype: str = Field("float32", pattern="^(float32|float64)$")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch default)")

    def hidden_irreps(self) -> str:
        parity = {0: "e", 1: "o", 2: "e", 3: "o"}
        return "+".join(f"{self.num_channels}x{ell}{parity[ell]}" for ell in range(self.max_L + 1))


class ChgnetHyperParameters(Section):
    """Fine-tuning settings of CHGNet from its bundled pretrained weights (a few epochs suffice)."""

    pretrained: str = Field("0.3.0", description="Version of the weights shipped in the chgnet package")
    epochs: int = Field(10, ge=1, description="Epochs of the first fine-tuning from the pretrained weights")
    warm_start_epochs: int = Field(5, ge=0, description="Epochs when continuing from a previous member")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    energy_weight: float = Field(1.0, ge=0, description="Weight of the energy per atom (eV/atom)²")
    forces_weight: float = Field(1.0, ge=0)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    device: str = Field("cpu", description="torch device (cpu only is tested)")


class FoundationSettings(Section):
    """A MACE foundation model on disk (``.model``, as ``mace_run_train`` writes them) and how to fine-tune it.

    ``naive``: every weight continues from the foundation on the campaign's labels. ``multihead``: a second
    readout head (``pt_head``) keeps fitting replay configurations (``replay``: an extxyz file; its own
    energies and forces, or the foundation's predictions where it has none) while the campaign head fits
    the labels, so the shared layers do not forget; the pt head is dropped after training.
    """

    path: str = Field(..., min_length=1, description="The foundation .model file (relative: to the campaign file)")
    mode: Literal["naive", "multihead"] = "naive"
    replay: str | None = Field(None, description="extxyz of replay configurations (multihead)")
    replay_samples: int = Field(64, ge=1, description="Replay configurations drawn per member (multihead)")
    replay_weight: float = Field(1.0, ge=0, description="Weight of the replay head's loss (multihead)")

    @model_validator(mode="after")
    def _replay_for_multihead(self):
        if self.mode == "multihead" and not self.replay:
            raise ValueError("foundation.mode multihead needs foundation.replay (an extxyz of replay configurations)")
        return self


class MaceFinetuneHyperParameters(Section):
    """Fine-tuning of a MACE foundation model: its architecture is the foundation's, so only training settings."""

    shorthands: ClassVar[dict[str, str]] = {"foundation": "a foundation file"}

    foundation: FoundationSettings
    epochs: int = Field(20, ge=1, description="Epochs of the first fine-tuning from the foundation")
    warm_start_epochs: int = Field(10, ge=0, description="Epochs when continuing from a previous member (naive)")
    bootstrap: bool = Field(True, description="Each member trains on a bootstrap resample of the training "
                            "labels, so that members fine-tuned from the same weights disagree where data are thin")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_final_fraction: float = Field(0.1, gt=0, le=1)
    energy_weight: float = Field(1.0, ge=0)
    forces_weight: float = Field(10.0, ge=0)
    stress_weight: float = Field(0.0, ge=0, description=STRESS_WEIGHT_HELP)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    eval_every: int = Field(5, ge=1)
    dtype: str = Field("float64", pattern="^(float32|float64)$")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    num_threads: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _foundation_path(cls, data: Any) -> Any:
        """``foundation`` is required; a path alone stands for ``{path: PATH}``."""
        if isinstance(data, dict):
            if "foundation" not in data:
                raise ValueError("learner kind mace-finetune needs foundation: the path of a MACE .model file")
            if isinstance(data["foundation"], str):
                data = {**data, "foundation": {"path": data["foundation"]}}
        return data


class SevennetHyperParameters(Section):
    """Fine-tuning of SevenNet-0 from the weights the sevenn package ships (``pip install almat[sevennet]``)."""

    pretrained: Literal["7net-0", "7net-0_11Jul2024", "7net-0_22May2024", "7net-l3i5"] = Field(
        "7net-0", description="Which bundled SevenNet checkpoint to start from (7net-0 is 7net-0_11Jul2024)")
    epochs: int = Field(10, ge=1, description="Epochs of the first fine-tuning from the pretrained weights")
    warm_start_epochs: int = Field(5, ge=0, description="Epochs when continuing from a previous member")
    bootstrap: bool = Field(True, description="Each member trains on a bootstrap resample of the training "
                            "labels, so that members fine-tuned from the same weights disagree where data are thin")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(2e-4, gt=0, description="Adam's learning rate (SevenNet's trainer)")
    lr_final_fraction: float = Field(0.1, gt=0, le=1, description="Linear decay of the lr down to lr * this")
    energy_weight: float = Field(1.0, ge=0, description="Weight of the energy per atom (eV/atom)²")
    forces_weight: float = Field(1.0, ge=0)
    stress_weight: float = Field(0.0, ge=0, description=STRESS_WEIGHT_HELP)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    device: str = Field("cpu", description="torch device (cpu only is tested)")
