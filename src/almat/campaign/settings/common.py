"""What every campaign kind's settings share: structure sources, pre-relaxation, initial data, and the
base of a campaign config (name, oracle, learner). Pure data: reading structures is
``almat.campaign.sources``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from ase import Atoms
from pydantic import Field, field_validator, model_validator
from pymatgen.core import Structure

from almat.campaign import sources
from almat.campaign.fingerprint import fingerprint
from almat.learner.registry import PRODUCTION_TRAINERS
from almat.learner.settings import LearnerSettings
from almat.oracle.settings import AseOracleSettings, OracleSettings
from almat.schemas import to_structure
from almat.schemas.section import Section

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


def structure_dict(obj: Any) -> dict[str, Any]:
    """A structure given from Python (Structure, Atoms or its dict) as a Structure dict."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (Atoms, Structure)):
        return to_structure(obj).as_dict()
    raise ValueError(f"expected a Structure, Atoms or a Structure dict, got {type(obj).__name__}")


class _Source(Section):
    """Exactly one source of structures (``sources`` names the choices), repeated by ``supercell``."""

    sources: ClassVar[tuple[str, ...]] = ("file", "bulk", "structure")
    file: Path | None = None
    bulk: dict[str, Any] | None = Field(None, description="kwargs of ase.build.bulk, e.g. {name: Cu, cubic: true}")
    structure: dict[str, Any] | None = Field(None, description="Structure.as_dict(), for campaigns built in Python")
    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=3, max_length=3)

    @field_validator("structure", mode="before")
    @classmethod
    def _as_dict(cls, value):
        return None if value is None else structure_dict(value)

    @field_validator("supercell")
    @classmethod
    def _supercell(cls, value):
        if any(n < 1 for n in value):
            raise ValueError(f"supercell multiples must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in self.sources if getattr(self, k) is not None]
        if len(given) != 1:
            choices = ", ".join(repr(k) for k in self.sources[:-1]) + f" or {self.sources[-1]!r}"
            raise ValueError(f"give exactly one of {choices} for each source (got {', '.join(given) or 'none'})")
        return self


class StructureSource(_Source):
    """A start structure: a file (CIF, POSCAR, extxyz, ...), an ``ase.build.bulk`` prototype, or a
    pymatgen ``Structure`` (or its dict) given from Python."""


class PrerelaxSettings(Section):
    """Relax the start structures with the oracle before the initial data (off by default)."""

    enabled: bool = False
    fmax: float = Field(0.05, gt=0, description="eV/Å (ASE oracles; VASP uses MPRelaxSet's EDIFFG)")
    steps: int = Field(200, ge=1)
    relax_cell: bool = True
    trajectory_stride: int = Field(10, ge=1, description="label every n-th relaxation step (and the last)")


class InitialDataSettings(Section):
    """Initial data, labelled by the oracle: each start structure and ``n_per_structure - 1`` strained and
    rattled copies (``method: rattle``), or frames of MD with a pretrained model (``method: foundation-md``:
    the zero-shot start, what a universal potential visits before any label): the learner's own
    pretrained model (the foundation file of ``mace-finetune``, CHGNet's or SevenNet-0's bundled weights); or ``n_per_structure`` frames of the
    oracle's own MD (``method: oracle-md``, AIMD as a start: the frames come labelled,
    ``almat.oracle.md``)."""

    n_per_structure: int = Field(12, ge=2)
    method: Literal["rattle", "foundation-md", "oracle-md"] = "rattle"
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.03, ge=0, lt=0.5, description="max |linear strain|")
    md_temperature: float = Field(600.0, gt=0, description="K (foundation-md, oracle-md)")
    md_steps: int = Field(200, ge=1, description="MD steps of 2 fs per start structure (foundation-md, oracle-md)")
    md_stride: int = Field(10, ge=1, description="oracle-md: keep a frame every md_stride steps")
    subsample: Literal["stride", "fps"] = Field(
        "stride", description="oracle-md: which n_per_structure of the kept frames are labels: evenly spaced "
        "in time, or the most diverse (farthest point sampling)")
    seed: int = 0


class FinishSettings(Section):
    """The production model, trained when the campaign stops (``almat.learner.production``): one model on all
    the campaign's ok labels (its calibration frames held out to score it) by ``trainer``, a library's own
    trainer, with ``options`` (that trainer's own options, e.g. ``max_num_epochs: 400`` for
    ``mace_run_train``; an option it does not have is refused before any job runs)."""

    trainer: str = "mace_run_train"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("trainer")
    @classmethod
    def _known_trainer(cls, value: str) -> str:
        if value not in PRODUCTION_TRAINERS:
            raise ValueError(f"unknown trainer {value!r}; valid: {', '.join(PRODUCTION_TRAINERS)}")
        return value


class _Campaign(Section):
    """What every campaign kind has: a name, an oracle, a committee."""

    name: str = Field(..., min_length=1, pattern=NAME_PATTERN)
    description: str = ""
    oracle: OracleSettings = Field(default_factory=AseOracleSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    base_dir: Path | None = Field(None, description="Folder that relative structure paths start from")
    finish: FinishSettings | None = Field(None, description="The production model trained when the campaign stops")

    #: fields left out of the fingerprint (stopping settings and the production model: changing them may
    #: continue a campaign)
    unfingerprinted: ClassVar[tuple[str, ...]] = ("description", "base_dir", "convergence", "finish")
    #: whether a stopped campaign of this kind may be resumed (else only a failed or interrupted one)
    resumable_when_stopped: ClassVar[bool] = False

    def fingerprint(self) -> str:
        """Hash of what defines the campaign's data (not of its stopping settings): ``almat.campaign.fingerprint``."""
        return fingerprint(self)

    def iteration_limit(self) -> int:
        """The most iterations the campaign runs."""
        return self.convergence.max_iterations

    def load_structures(self) -> list[Structure]:
        """The start structures (``almat.campaign.sources.load_structures``)."""
        return sources.load_structures(self)
