"""Campaign configuration: one YAML file (or Python object) describes a whole campaign.

Every section forbids unknown keys, so a typo is an error naming the key, not a silent default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pymatgen.core import Structure

from almat.learner.mace import MaceHyperParameters
from almat.oracle.calculators import CalculatorSpec
from almat.sampler.deviation import TrustLevels
import almat.select  # noqa: F401  (registers every built-in policy)
from almat.select.policies import SELECTION_POLICIES

__all__ = [
    "CampaignConfig",
    "ConfigError",
    "ConvergenceSettings",
    "InitialDataSettings",
    "LearnerSettings",
    "OracleSettings",
    "PrerelaxSettings",
    "SamplerSettings",
    "SelectionSettings",
    "StructureSource",
    "format_validation_error",
    "load_config",
    "validate_campaign_file",
]


class ConfigError(ValueError):
    """The campaign configuration is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StructureSource(_Section):
    """A start structure: a file (CIF, POSCAR, extxyz, ...), an ``ase.build.bulk`` prototype, or a
    pymatgen ``Structure`` (or its dict) given from Python."""

    file: Path | None = None
    bulk: dict[str, Any] | None = Field(None, description="kwargs of ase.build.bulk, e.g. {name: Cu, cubic: true}")
    structure: dict[str, Any] | None = Field(None, description="Structure.as_dict(), for campaigns built in Python")
    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=3, max_length=3)

    @field_validator("structure", mode="before")
    @classmethod
    def _structure_dict(cls, value):
        return value.as_dict() if isinstance(value, Structure) else value

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.file, self.bulk, self.structure)) != 1:
            raise ValueError("give exactly one of 'file', 'bulk' or 'structure' for each structure")
        if any(n < 1 for n in self.supercell):
            raise ValueError(f"supercell multiples must be >= 1, got {self.supercell}")
        return self

    def load(self, base_dir: Path | None = None) -> Structure:
        from almat.schemas import to_structure

        if self.bulk is not None:
            from ase.build import bulk

            try:
                atoms = bulk(**self.bulk)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"cannot build bulk({self.bulk}): {exc}") from None
            structure = to_structure(atoms)
        elif self.structure is not None:
            try:
                structure = Structure.from_dict(self.structure)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"cannot read the structure given inline: {exc}") from None
            if not structure.is_ordered:
                raise ConfigError("an inline structure is disordered: enumerate ordered structures first")
        else:
            path = self.file if self.file.is_absolute() or base_dir is None else base_dir / self.file
            if not path.is_file():
                raise ConfigError(f"structure file not found: {path}")
            try:
                structure = Structure.from_file(path)
            except Exception as exc:  # noqa: BLE001 - any parser error
                raise ConfigError(f"cannot read structure file {path}: {type(exc).__name__}: {exc}") from None
            if not structure.is_ordered:
                raise ConfigError(f"{path} is disordered: enumerate ordered structures first (almat enumerate)")
        return structure * self.supercell if self.supercell != [1, 1, 1] else structure


class CalculatorConfig(_Section):
    module: str
    class_: str = Field(..., alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def spec(self) -> CalculatorSpec:
        return CalculatorSpec(self.module, self.class_, dict(self.kwargs))


class OracleSettings(_Section):
    """The oracle: an ASE calculator (``kind: ase``) or VASP through atomate2 (``kind: vasp``,
    MPStaticSet labels and MPRelaxSet pre-relaxations)."""

    kind: Literal["ase", "vasp"] = "ase"
    calculator: CalculatorConfig = Field(
        default_factory=lambda: CalculatorConfig(module="ase.calculators.emt", **{"class": "EMT"})
    )
    compute_stress: bool = True

    def label_maker(self):
        """The Maker whose ``make(structure, campaign, iteration)`` labels one structure."""
        if self.kind == "vasp":
            from almat.oracle.vasp import VaspStaticOracleMaker

            return VaspStaticOracleMaker()
        from almat.oracle.jobs import AseOracleMaker

        return AseOracleMaker(calculator=self.calculator.spec(), compute_stress=self.compute_stress)

    def relax_maker(self, prerelax: "PrerelaxSettings"):
        """The Maker that relaxes a start structure with this oracle."""
        if self.kind == "vasp":
            from almat.oracle.vasp import VaspRelaxFlowMaker

            return VaspRelaxFlowMaker(trajectory_stride=prerelax.trajectory_stride)
        from almat.oracle.relax import AseRelaxMaker

        return AseRelaxMaker(calculator=self.calculator.spec(), fmax=prerelax.fmax, steps=prerelax.steps,
                             relax_cell=prerelax.relax_cell, trajectory_stride=prerelax.trajectory_stride)

    @property
    def name(self) -> str:
        return self.label_maker().oracle_name

    @property
    def fingerprint(self) -> str:
        return self.label_maker().fingerprint


class PrerelaxSettings(_Section):
    """Relax the start structures with the oracle before the initial data (off by default)."""

    enabled: bool = False
    fmax: float = Field(0.05, gt=0, description="eV/Å (ASE oracles; VASP uses MPRelaxSet's EDIFFG)")
    steps: int = Field(200, ge=1)
    relax_cell: bool = True
    trajectory_stride: int = Field(10, ge=1, description="label every n-th relaxation step (and the last)")


class InitialDataSettings(_Section):
    """Initial data: strained and rattled copies of each start structure, labelled by the oracle."""

    n_per_structure: int = Field(12, ge=2)
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.03, ge=0, lt=0.5, description="max |linear strain|")
    seed: int = 0


class LearnerSettings(_Section):
    n_models: int = Field(4, ge=2)
    warm_start: bool = True
    seed: int = 0
    hyperparameters: MaceHyperParameters = Field(default_factory=MaceHyperParameters)

    def train_job(self, label_ids: Any, campaign: Any, iteration: int, previous_model_ids: Any = None):
        """The ``train it<iteration>`` job of a campaign: this committee, trained on ``label_ids``."""
        from almat.learner.jobs import TrainCommitteeMaker

        job = TrainCommitteeMaker(
            name=f"train it{iteration}",
            n_models=self.n_models,
            hyperparameters=self.hyperparameters.model_dump(),
            base_seed=self.seed,
            warm_start=self.warm_start,
        ).make(label_ids, campaign=campaign, iteration=iteration, previous_model_ids=previous_model_ids)
        job.name = f"train it{iteration}"
        return job


class SamplerSettings(_Section):
    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1)
    steps: int = Field(300, ge=1)
    timestep_fs: float = Field(2.0, gt=0)
    friction_per_fs: float = Field(0.02, gt=0)
    sample_every: int = Field(10, ge=1)
    trust_lo: float = Field(0.05, gt=0)
    trust_hi: float = Field(0.30, gt=0)
    stop_after_failed: int = Field(1, ge=1)
    min_distance_factor: float = Field(0.7, gt=0, lt=1, description="MD stops when two atoms come closer than this x the shortest distance of the start structure")
    seed: int = 0

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value):
        if any(t <= 0 for t in value):
            raise ValueError(f"temperatures must be > 0 K, got {value}")
        return value

    @model_validator(mode="after")
    def _trust(self):
        TrustLevels(lo=self.trust_lo, hi=self.trust_hi)
        return self


class SelectionSettings(_Section):
    policy: str = "max_deviation"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the policy")
    max_select: int = Field(10, ge=1)
    seed: int = 0

    @field_validator("policy")
    @classmethod
    def _known(cls, value):
        if value not in SELECTION_POLICIES:
            raise ValueError(f"unknown selection policy {value!r}; valid: {', '.join(sorted(SELECTION_POLICIES))}")
        return value

    @model_validator(mode="after")
    def _options(self):
        from almat.select import get_policy

        try:
            get_policy(self.policy, **self.options)  # fail at load time, not in the select job
        except TypeError as exc:
            raise ValueError(f"bad options for selection policy {self.policy!r}: {exc}") from None
        return self


class ConvergenceSettings(_Section):
    """When a campaign stops.

    ``rule: calibrated`` (default): every iteration labels ``calibration_samples`` held-out explored
    frames, spread over the whole range of model deviation (low-uncertainty frames included: that is
    where a miscalibrated committee lies); on them it fits the recalibration factor ``k`` (error ~ k x
    deviation), the split-conformal quantile ``q`` at ``calibration_coverage`` and the Spearman
    correlation. The campaign converges when the calibrated uncertainty (``k u``, or ``q k u`` with
    ``bound: conformal``) of the explored frames is below ``force_tolerance`` for a fraction
    ``>= conv_accuracy`` of them.

    ``rule: accurate_ratio``: DP-GEN's rule, stop when the fraction of frames below ``trust_lo``
    reaches ``conv_accuracy`` (the calibration is still recorded when ``calibration_samples > 0``).

    Either way the campaign stops at ``max_iterations``.
    """

    rule: Literal["calibrated", "accurate_ratio"] = "calibrated"
    conv_accuracy: float = Field(0.95, gt=0, le=1, description="Fraction of explored frames that must pass the rule")
    max_iterations: int = Field(10, ge=1)
    force_tolerance: float = Field(0.15, gt=0, description="eV/Å: target max atomic force error per frame")
    calibration_coverage: float = Field(0.9, gt=0, lt=1, description="Coverage of the conformal bound q k u")
    calibration_samples: int = Field(8, ge=0, description="Held-out explored frames labelled per iteration")
    calibration_method: Literal["lstsq", "median"] = "lstsq"
    bound: Literal["calibrated", "conformal"] = Field(
        "calibrated", description="Compare k u (calibrated) or its conformal upper bound q k u with the tolerance")
    cumulative_calibration: bool = Field(
        True, description="Calibrate on the held-out frames of all iterations so far (re-scored by the current "
        "committee), not only this iteration's")
    recycle_calibration: bool = Field(
        False, description="Once an iteration's held-out frames have calibrated its committee, train the next "
        "committees on them too (saves oracle calls; each iteration is then calibrated on its fresh frames only)")
    seed: int = 0

    @model_validator(mode="after")
    def _needs_samples(self):
        if self.rule == "calibrated" and self.calibration_samples < 2:
            raise ValueError("rule 'calibrated' needs calibration_samples >= 2 held-out frames per iteration")
        return self


class CampaignConfig(_Section):
    """A whole campaign."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    structures: list[StructureSource] = Field(..., min_length=1)
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    prerelax: PrerelaxSettings = Field(default_factory=PrerelaxSettings)
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    convergence: ConvergenceSettings = Field(default_factory=ConvergenceSettings)
    base_dir: Path | None = Field(None, description="Folder that relative structure paths start from")
    kind: Literal["md"] = "md"

    def load_structures(self) -> list[Structure]:
        return [s.load(self.base_dir) for s in self.structures]

    def fingerprint(self) -> str:
        """Hash of what defines the campaign's data (not of its stopping settings)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"convergence", "description", "base_dir"})
        if not data["selection"].get("options"):
            data["selection"].pop("options", None)  # keep the fingerprints of campaigns without options
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad key: ``source: a.b: message; c: unknown key``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(parts)


def validate_campaign_file(source: str | Path | dict[str, Any], model: type[BaseModel], what: str = "campaign config"):
    """A validated ``model`` (a campaign config class) from a YAML file or a dict.

    Relative structure paths start at the YAML's folder (``base_dir``); an ASE oracle's calculator
    must be importable. Every error is one ``ConfigError`` line naming the key.
    """
    if isinstance(source, model):
        return source
    if isinstance(source, dict):
        data, where, base = dict(source), what, None
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"campaign file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        where, base = str(path), path.parent.resolve()
    if base is not None and "base_dir" not in data:
        data["base_dir"] = base
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    oracle = getattr(config, "oracle", None)
    if oracle is not None and oracle.kind == "ase":
        try:
            oracle.calculator.spec().resolve()
        except ValueError as exc:
            raise ConfigError(f"{where}: oracle.calculator: {exc}") from None
    return config


def load_config(source: str | Path | dict[str, Any]) -> CampaignConfig:
    """A validated ``CampaignConfig`` from a YAML file or a dict; errors are one line naming the key."""
    return validate_campaign_file(source, CampaignConfig)
