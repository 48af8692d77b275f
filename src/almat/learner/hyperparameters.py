"""MACE model and training settings, without importing torch (a campaign file validates with them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MaceHyperParameters(BaseModel):
    """Model and training settings. The defaults are a small, fast model for CPU demos."""

    model_config = ConfigDict(extra="forbid")

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
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    eval_every: int = Field(5, ge=1, description="Validate every N epochs and keep the best state")
    dtype: str = Field("float32", pattern="^(float32|float64)$")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch default)")

    def hidden_irreps(self) -> str:
        parity = {0: "e", 1: "o", 2: "e", 3: "o"}
        return "+".join(f"{self.num_channels}x{ell}{parity[ell]}" for ell in range(self.max_L + 1))


class ChgnetHyperParameters(BaseModel):
    """Fine-tuning settings of CHGNet from its bundled pretrained weights (a few epochs suffice)."""

    model_config = ConfigDict(extra="forbid")

    pretrained: str = Field("0.3.0", description="Version of the weights shipped in the chgnet package")
    epochs: int = Field(10, ge=1, description="Epochs of the first fine-tuning from the pretrained weights")
    warm_start_epochs: int = Field(5, ge=0, description="Epochs when continuing from a previous member")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    energy_weight: float = Field(1.0, ge=0, description="Weight of the energy per atom (eV/atom)²")
    forces_weight: float = Field(1.0, ge=0)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    device: str = Field("cpu", description="torch device (cpu only is tested)")


#: learner kind -> its hyperparameters: MACE from scratch, or CHGNet fine-tuned from its bundled weights
HYPERPARAMETERS: dict[str, type[BaseModel]] = {"mace": MaceHyperParameters, "chgnet-finetune": ChgnetHyperParameters}
