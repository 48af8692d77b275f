"""Campaign configuration: one YAML file (or Python object) describes a whole campaign.

Three kinds share the loop and differ in their explorer (``kind:``, default ``md``): ``md`` (committee
MD), ``pool`` (a fixed candidate pool) and ``nft`` (chunks of a large target). Every section forbids
unknown keys, so a typo is an error naming the key; every error is one ``ConfigError`` line. Sections
are pydantic models that jobflow serialises (``as_dict``/``from_dict``), so they travel between jobs
as typed objects. Validating a campaign file imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from ase import Atoms
from pydantic import Field, ValidationError, field_validator, model_serializer
from pydantic import model_validator
from pymatgen.core import Structure

from almat.campaign.initial import perturbed_structures
from almat.learner.settings import LEARNERS, LearnerSettings  # noqa: F401
from almat.oracle.calculators import CalculatorSpec
from almat.oracle.jobs import AseOracleMaker
from almat.oracle.relax import AseRelaxMaker
from almat.schemas import structure_hash, to_atoms, to_structure
from almat.schemas.section import ConfigError, Section, format_validation_error, load_yaml  # noqa: F401
from almat.select.policies import SELECTION_POLICIES, get_policy
from almat.uncertainty.deviation import TrustLevels

logger = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


def _structure_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (Atoms, Structure)):
        return to_structure(obj).as_dict()
    raise ValueError(f"expected a Structure, Atoms or a Structure dict, got {type(obj).__name__}")


def _bulk(kwargs: dict[str, Any]) -> Atoms:
    from ase.build import bulk

    try:
        return bulk(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot build bulk({kwargs}): {exc}") from None


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
        return None if value is None else _structure_dict(value)

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

    def load(self, base_dir: Path | None = None) -> Structure:
        if self.bulk is not None:
            structure = to_structure(_bulk(self.bulk))
        elif self.structure is not None:
            try:
                structure = Structure.from_dict(self.structure)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"cannot read the structure given inline: {exc}") from None
        else:
            path = self.file if self.file.is_absolute() or base_dir is None else base_dir / self.file
            if not path.is_file():
                raise ConfigError(f"structure file not found: {path}")
            try:
                structure = Structure.from_file(path)
            except Exception as exc:  # noqa: BLE001 - any parser error
                raise ConfigError(f"cannot read structure file {path}: {type(exc).__name__}: {exc}") from None
        if not structure.is_ordered:
            where = "an inline structure" if self.file is None else str(self.file)
            raise ConfigError(f"{where} is disordered: enumerate ordered structures first (almat enumerate)")
        return structure * self.supercell if self.supercell != [1, 1, 1] else structure


class CalculatorConfig(Section):
    module: str
    class_: str = Field(..., alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def spec(self) -> CalculatorSpec:
        return CalculatorSpec(self.module, self.class_, dict(self.kwargs))


class OracleSettings(Section):
    """The oracle: an ASE calculator (``kind: ase``), VASP through atomate2 (``kind: vasp``: MPStaticSet
    labels, MPRelaxSet pre-relaxations; ``incar`` adds ``user_incar_settings`` to both) or CP2K through
    atomate2 (``kind: cp2k``: static labels; ``cp2k`` settings, see ``almat.oracle.cp2k.cp2k_static_maker``)."""

    kind: Literal["ase", "vasp", "cp2k"] = "ase"
    calculator: CalculatorConfig = Field(
        default_factory=lambda: CalculatorConfig(module="ase.calculators.emt", **{"class": "EMT"}))
    compute_stress: bool = True
    incar: dict[str, Any] = Field(default_factory=dict, description="VASP: user_incar_settings of the input sets")
    cp2k: dict[str, Any] = Field(default_factory=dict, description="CP2K: user_input_settings, and kpoints")

    def label_maker(self):
        """The Maker whose ``make(structure, campaign, iteration)`` labels one structure."""
        if self.kind == "vasp":
            from almat.oracle.vasp import VaspStaticOracleMaker, mp_static_maker

            return VaspStaticOracleMaker(vasp_maker=mp_static_maker(user_incar_settings=self.incar))
        if self.kind == "cp2k":
            from almat.oracle.cp2k import Cp2kStaticOracleMaker, cp2k_static_maker

            return Cp2kStaticOracleMaker(cp2k_maker=cp2k_static_maker(**self.cp2k))
        return AseOracleMaker(calculator=self.calculator.spec(), compute_stress=self.compute_stress)

    def relax_maker(self, prerelax: "PrerelaxSettings"):
        """The Maker that relaxes a start structure with this oracle."""
        if self.kind == "cp2k":
            raise ConfigError("pre-relaxation with CP2K is not supported yet (set prerelax.enabled: false)")
        if self.kind == "vasp":
            from almat.oracle.vasp import VaspRelaxFlowMaker, mp_relax_maker

            return VaspRelaxFlowMaker(vasp_maker=mp_relax_maker(user_incar_settings=self.incar),
                                      trajectory_stride=prerelax.trajectory_stride)
        return AseRelaxMaker(calculator=self.calculator.spec(), fmax=prerelax.fmax, steps=prerelax.steps,
                             relax_cell=prerelax.relax_cell, trajectory_stride=prerelax.trajectory_stride)


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
    the zero-shot start, what a universal potential visits before any label): the foundation file of a
    ``mace-finetune`` learner, otherwise the CHGNet bundled with chgnet."""

    n_per_structure: int = Field(12, ge=2)
    method: Literal["rattle", "foundation-md"] = "rattle"
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.03, ge=0, lt=0.5, description="max |linear strain|")
    md_temperature: float = Field(600.0, gt=0, description="K (foundation-md)")
    md_steps: int = Field(200, ge=1, description="MD steps of 2 fs per start structure (foundation-md)")
    seed: int = 0


class SystemQuery(Section):
    """Start systems from the store: a MongoDB filter on the labels or the structures collection."""

    collection: Literal["labels", "structures"] = "structures"
    filters: dict[str, Any] = Field(default_factory=dict, description="a MongoDB filter, e.g. {chemsys: Cu}")
    limit: int | None = Field(None, ge=1)


class SystemSettings(Section):
    """Start systems of a stage: ``structures`` (indices of the campaign's start structures, pre-relaxed
    when ``prerelax`` is on; default: all of them) or ``query`` (structures from the store, read when the
    stage runs); optional trust levels of their own (DP-GEN's per-system trust levels)."""

    name: str | None = None
    structures: list[int] | None = None
    query: SystemQuery | None = None
    trust_lo: float | None = Field(None, gt=0)
    trust_hi: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.structures is None) == (self.query is None):
            raise ValueError("give exactly one of 'structures' or 'query' for each system")
        if self.structures is not None and (not self.structures or min(self.structures) < 0):
            raise ValueError(f"structures must be a non-empty list of indices >= 0, got {self.structures}")
        return self


class AdaptiveTrust(Section):
    """DP-GEN's adaptive lower trust level: each iteration, ``lo`` is set so that ``number`` frames (or
    a ``fraction`` of the frames below ``hi``) are candidates; it stays within [lo_min, lo_max]."""

    number: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    lo_min: float = Field(0.0, ge=0)
    lo_max: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.number is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'number' or 'fraction' for adaptive_lo")
        return self


#: highest plausible |pressure| per unit
PRESSURE_LIMITS = {"bar": 1e7, "GPa": 1e3}
#: sampler fields a stage may set (the sampler's own values are its defaults)
STAGE_FIELDS = ("systems", "ensemble", "temperatures", "pressures", "pressure_unit", "steps", "timestep_fs",
                "friction_per_fs", "thermostat_time_fs", "barostat_time_fs", "sample_every", "walkers_per_condition",
                "trust_lo", "trust_hi", "adaptive_lo")


class _Conditions(Section):
    """The checks that the sampler section and each of its stages share."""

    @field_validator("ensemble", check_fields=False)
    @classmethod
    def _known_ensemble(cls, value: str | None) -> str | None:
        from almat.sampler.md import ENSEMBLES

        if value is not None and value not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {value!r}; valid: {', '.join(ENSEMBLES)}")
        return value

    @field_validator("temperatures", check_fields=False)
    @classmethod
    def _positive(cls, value):
        if value is not None and any(t <= 0 for t in value):
            raise ValueError(f"temperatures must be > 0 K, got {value}")
        return value


class StageSettings(_Conditions):
    """One exploration stage; what it leaves out it takes from the sampler section. ``convergence``
    overrides the campaign's convergence settings for this stage (e.g. ``{conv_accuracy: 0.9,
    max_iterations: 3}``)."""

    name: str | None = None
    systems: list[SystemSettings] | None = None
    ensemble: str | None = None
    temperatures: list[float] | None = Field(None, min_length=1)
    pressures: list[float] | None = Field(None, min_length=1)
    pressure_unit: Literal["bar", "GPa"] | None = None
    steps: int | None = Field(None, ge=1)
    timestep_fs: float | None = Field(None, gt=0)
    friction_per_fs: float | None = Field(None, gt=0)
    thermostat_time_fs: float | None = Field(None, gt=0)
    barostat_time_fs: float | None = Field(None, gt=0)
    sample_every: int | None = Field(None, ge=1)
    walkers_per_condition: int | None = Field(None, ge=1)
    trust_lo: float | None = Field(None, gt=0)
    trust_hi: float | None = Field(None, gt=0)
    adaptive_lo: AdaptiveTrust | None = None
    convergence: dict[str, Any] = Field(default_factory=dict)

    @field_validator("convergence")
    @classmethod
    def _convergence(cls, value):
        ConvergenceSettings.model_validate(value)  # names unknown keys and bad values
        return value

    def pressures_bar(self) -> list[float | None]:
        """The pressures in bar (``[None]`` for nvt)."""
        if self.ensemble == "nvt":
            return [None]
        return [p * (1e4 if self.pressure_unit == "GPa" else 1.0) for p in self.pressures]

    def trust(self, system: SystemSettings) -> TrustLevels:
        """The trust levels of a system (its own, else the stage's)."""
        return TrustLevels(lo=system.trust_lo or self.trust_lo, hi=system.trust_hi or self.trust_hi)

    def check(self) -> None:
        """What a complete stage must satisfy (after the sampler's values filled it)."""
        if self.systems is not None and not self.systems:
            raise ValueError("a stage needs at least one system (leave 'systems' out for every start structure)")
        for k, system in enumerate(self.systems or [None]):
            try:
                self.trust(system or SystemSettings(structures=[0]))
            except ValidationError as exc:
                where = "" if system is None else f"systems.{k}: "
                raise ValueError(where + exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        if self.ensemble == "nvt":
            if self.pressures:
                raise ValueError("pressures need an npt ensemble (ensemble: npt or npt_aniso); nvt has none")
            return
        if not self.pressures:
            raise ValueError(f"ensemble {self.ensemble} needs pressures (with pressure_unit: bar or GPa)")
        if self.pressure_unit is None:
            raise ValueError("pressures need their unit: pressure_unit: bar or GPa")
        limit = PRESSURE_LIMITS[self.pressure_unit]
        for p in self.pressures:
            if abs(p) > limit:
                other = "bar" if self.pressure_unit == "GPa" else "GPa"
                raise ValueError(f"pressure {p:g} {self.pressure_unit} is implausible for unit {self.pressure_unit} "
                                 f"(|p| <= {limit:g} {self.pressure_unit}); did you mean {other}?")


class SamplerSettings(_Conditions):
    """Committee MD. One stage from these settings, or ``stages`` (each takes what it leaves out from
    here); the campaign moves to the next stage when the current one converges."""

    systems: list[SystemSettings] | None = Field(None, description="default: every start structure")
    ensemble: str = Field("nvt", description="nvt (Langevin), npt (isotropic MTK), npt_aniso (MTK, full cell)")
    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1)
    pressures: list[float] | None = Field(None, min_length=1, description="npt ensembles, in pressure_unit")
    pressure_unit: Literal["bar", "GPa"] | None = None
    steps: int = Field(300, ge=1)
    timestep_fs: float = Field(2.0, gt=0)
    friction_per_fs: float = Field(0.02, gt=0)
    thermostat_time_fs: float = Field(100.0, gt=0, description="npt: Nose-Hoover chain time constant")
    barostat_time_fs: float = Field(500.0, gt=0, description="npt: barostat time constant")
    sample_every: int = Field(10, ge=1)
    walkers_per_condition: int = Field(1, ge=1, description="independent walkers (seeds) per system, T and p")
    trust_lo: float = Field(0.05, gt=0)
    trust_hi: float = Field(0.30, gt=0)
    adaptive_lo: AdaptiveTrust | None = None
    stages: list[StageSettings] | None = Field(None, min_length=1)
    stop_after_failed: int = Field(1, ge=1)
    min_distance_factor: float = Field(0.7, gt=0, lt=1, description="MD stops when two atoms come closer than "
                                       "this x the shortest distance of the start structure")
    max_volume_factor: float = Field(3.0, gt=1, description="npt: MD stops when the volume leaves [V0/f, f V0]")
    max_walkers_per_job: int = Field(64, ge=1, description="walkers advanced together by one explore job")
    seed: int = 0

    @model_validator(mode="after")
    def _stages(self):
        for k, stage in enumerate(self.stage_list()):
            try:
                stage.check()
            except ValueError as exc:
                raise ValueError(f"stages.{k}: {exc}" if self.stages else str(exc)) from None
        return self

    @model_serializer(mode="wrap")
    def _lean(self, handler):
        """Leave out new settings at their defaults (single-stage campaigns keep their fingerprints)."""
        data = handler(self)
        for key in ("systems", "ensemble", "pressures", "pressure_unit", "thermostat_time_fs", "barostat_time_fs",
                    "walkers_per_condition", "adaptive_lo", "stages", "max_volume_factor", "max_walkers_per_job"):
            if getattr(self, key) == type(self).model_fields[key].get_default(call_default_factory=True):
                data.pop(key, None)
        return data

    def stage_list(self) -> list[StageSettings]:
        """The stages, complete: what a stage leaves out comes from these settings."""
        base = {f: getattr(self, f) for f in STAGE_FIELDS}
        stages = self.stages or [StageSettings()]
        return [StageSettings.model_construct(**{**base, "name": s.name, "convergence": s.convergence,
                                                 **{f: getattr(s, f) for f in STAGE_FIELDS if getattr(s, f) is not None}})
                for s in stages]


def _check_policy(name: str, options: dict[str, Any], what: str = "selection policy") -> None:
    if name not in SELECTION_POLICIES:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(SELECTION_POLICIES))}")
    try:
        get_policy(name, **options)  # fail at load time, not in a job
    except TypeError as exc:
        raise ValueError(f"bad options for {what} {name!r}: {exc}") from None


class SelectionSettings(Section):
    policy: str = "max_deviation"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the policy")
    max_select: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _known(self):
        _check_policy(self.policy, self.options)
        return self


class ConvergenceSettings(Section):
    """When an MD campaign stops.

    ``rule: calibrated`` (default): every iteration labels ``calibration_samples`` held-out explored
    frames, spread over the whole range of model deviation; on them it fits the recalibration factor
    ``k`` (error ~ k x deviation), the split-conformal quantile ``q`` at ``calibration_coverage`` and the
    Spearman correlation. The campaign converges when the calibrated uncertainty (``k u``, or ``q k u``
    with ``bound: conformal``) of the explored frames is below ``force_tolerance`` for a fraction
    ``>= conv_accuracy`` of them. ``rule: accurate_ratio``: DP-GEN's rule, stop when the fraction of
    frames below ``trust_lo`` reaches ``conv_accuracy``. Either way it stops at ``max_iterations``.
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
        True, description="Calibrate on the held-out frames of all iterations so far, re-scored by the current "
        "committee, not only this iteration's")
    recycle_calibration: bool = Field(
        False, description="Once an iteration's held-out frames have calibrated its committee, train the next "
        "committees on them too (each iteration is then calibrated on its fresh frames only)")
    guard_samples: int = Field(
        4, ge=0, description="The random guard (almat.select.guard): label this many random explored frames when "
        "guard_patience iterations in a row selected no candidate while the calibrated error is above "
        "force_tolerance (0: off; the campaign then stops with nothing new to learn)")
    guard_patience: int = Field(1, ge=1, description="Iterations without a selected candidate before the guard "
                                "fires; until then such an iteration goes on instead of stopping")
    seed: int = 0

    @model_validator(mode="after")
    def _needs_samples(self):
        if self.rule == "calibrated" and self.calibration_samples < 2:
            raise ValueError("rule 'calibrated' needs calibration_samples >= 2 held-out frames per iteration")
        return self


class _Campaign(Section):
    """What every campaign kind has: a name, an oracle, a committee."""

    name: str = Field(..., min_length=1, pattern=NAME_PATTERN)
    description: str = ""
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    base_dir: Path | None = Field(None, description="Folder that relative structure paths start from")

    #: fields left out of the fingerprint (stopping settings: changing them may continue a campaign)
    unfingerprinted: ClassVar[tuple[str, ...]] = ("description", "base_dir", "convergence")

    def fingerprint(self) -> str:
        """Hash of what defines the campaign's data (not of its stopping settings)."""
        data = self.model_dump(mode="json", by_alias=True, exclude=set(self.unfingerprinted))
        if isinstance(data.get("selection"), dict) and not data["selection"].get("options"):
            data["selection"].pop("options", None)  # keep the fingerprints of campaigns without options
        for key in ("incar", "cp2k"):  # keep the fingerprints of campaigns without INCAR or CP2K settings
            if not data["oracle"].get(key):
                data["oracle"].pop(key)
        learner, initial = data.get("learner") or {}, data.get("initial") or {}
        if learner.get("kind") == "mace":  # keep the fingerprints of campaigns from before learner kinds
            learner.pop("kind")
        if learner.get("uncertainty") == "committee":  # ... and from before shallow ensembles
            learner.pop("uncertainty")
            learner.pop("n_heads", None)
            learner.pop("head_forces", None)
        if initial.get("method") == "rattle":  # ... and from before the foundation-md initial data
            for key in ("method", "md_temperature", "md_steps"):
                initial.pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def load_structures(self) -> list[Structure]:
        return [s.load(self.base_dir) for s in getattr(self, "structures", [])]


class CampaignConfig(_Campaign):
    """An MD campaign: train -> committee MD -> select -> label -> decide."""

    kind: Literal["md"] = "md"
    structures: list[StructureSource] = Field(..., min_length=1)
    prerelax: PrerelaxSettings = Field(default_factory=PrerelaxSettings)
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    convergence: ConvergenceSettings = Field(default_factory=ConvergenceSettings)


# -- pool campaigns -------------------------------------------------------------------------------


class PerturbSettings(Section):
    """``n`` configurations per structure: itself, then strained and rattled copies."""

    n: int = Field(..., ge=1)
    rattle_std: float = Field(0.05, ge=0, description="Å")
    max_strain: float = Field(0.02, ge=0, lt=0.5)
    seed: int = 0
    keep_original: bool = Field(True, description="the unperturbed structure is the first of the n")


class PoolQuery(Section):
    """Structures from the store: a MongoDB filter on the labels or the structures collection."""

    collection: Literal["labels", "structures"] = "labels"
    filters: dict[str, Any] = Field(default_factory=dict, description="a MongoDB filter, e.g. {chemsys: Cu}")
    limit: int | None = Field(None, ge=1)


class PoolSource(_Source):
    """One source of pool structures (exactly one of file, bulk, structure, structures, query), each with
    ``supercell`` and an optional ``perturb``."""

    sources: ClassVar[tuple[str, ...]] = ("file", "bulk", "structure", "structures", "query")
    index: str = Field(":", description="ASE's frame selection for multi-frame files")
    format: str | None = Field(None, description="ASE file format (default: from the extension)")
    structures: list[dict[str, Any]] | None = None
    query: PoolQuery | None = None
    perturb: PerturbSettings | None = None

    @field_validator("structures", mode="before")
    @classmethod
    def _as_dicts(cls, value):
        return None if value is None else [_structure_dict(v) for v in value]

    def _raw(self, base_dir: Path | None, db) -> list[Atoms]:
        if self.bulk is not None:
            return [_bulk(self.bulk)]
        if self.structure is not None or self.structures is not None:
            return [to_atoms(Structure.from_dict(s)) for s in (self.structures if self.structure is None else [self.structure])]
        if self.query is not None:
            if db is None:
                raise ConfigError("a pool 'query' source needs the store: load the pool inside a job or pass db=")
            q = self.query
            out = []
            for raw in getattr(db, q.collection).query(q.filters, limit=q.limit or 0):
                a = to_atoms(raw["structure"])
                key = "label_id" if q.collection == "labels" else "structure_hash"
                a.info["pool_origin"] = f"{q.collection[:-1]}:{raw[key]}"
                if (raw.get("metadata") or {}).get("temperature") is not None:
                    a.info["temperature"] = raw["metadata"]["temperature"]
                out.append(a)
            return out
        from ase.io import read

        path = self.file if self.file.is_absolute() or base_dir is None else base_dir / self.file
        if not path.is_file():
            raise ConfigError(f"pool file not found: {path}")
        try:
            frames = read(path, index=self.index, format=self.format)
        except Exception as exc:  # noqa: BLE001 - any parser error
            raise ConfigError(f"cannot read pool file {path}: {type(exc).__name__}: {exc}") from None
        return [Atoms(a.get_chemical_symbols(), positions=a.get_positions(), cell=a.get_cell(), pbc=a.get_pbc(),
                      info={**a.info, "pool_origin": f"{path.name}#{k}"})
                for k, a in enumerate(frames if isinstance(frames, list) else [frames])]

    def load(self, base_dir: Path | None = None, db=None) -> list[Atoms]:
        """The source's structures as ASE Atoms (``info`` keeps e.g. an MD ``temperature``)."""
        frames = self._raw(base_dir, db)
        if self.supercell != [1, 1, 1]:
            frames = [_repeat(a, self.supercell) for a in frames]
        if self.perturb is None:
            return frames
        p, out = self.perturb, []
        rng = np.random.default_rng(p.seed)
        for atoms in frames:
            copies = perturbed_structures(to_structure(atoms), p.n + (not p.keep_original), p.rattle_std,
                                          p.max_strain, rng)
            for k, s in enumerate(copies):
                if k or p.keep_original:
                    a = to_atoms(s)
                    a.info.update({**atoms.info, "perturbation": k})
                    out.append(a)
        return out


def _repeat(atoms: Atoms, supercell: list[int]) -> Atoms:
    out = atoms.repeat(supercell)
    out.info.update(atoms.info)
    return out


def load_pool(sources: list[PoolSource], base_dir: Path | None = None, db=None) -> list[Atoms]:
    """All sources' structures, duplicates (same ``structure_hash``) dropped with a warning; an empty
    pool is a ``ValueError``."""
    frames, seen, duplicates = [], set(), 0
    for source in sources:
        for atoms in source.load(base_dir, db):
            h = structure_hash(atoms)
            duplicates += h in seen
            if h not in seen:
                seen.add(h)
                atoms.info["structure_hash"] = h
                frames.append(atoms)
    if duplicates:
        msg = f"{duplicates} duplicate structure(s) dropped from the pool"
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    if not frames:
        raise ValueError("the pool is empty: its sources gave no structure")
    return frames


#: pool acquisition name -> almat selection policy (any other registered selection policy works by its own name)
ACQUISITIONS: dict[str, str] = {"committee": "max_deviation", "fps": "fps", "weighted": "weighted", "random": "random"}


def acquisition_policy(name: str, options: dict[str, Any] | None = None):
    """The selection policy behind an acquisition name; unknown names list the valid ones."""
    policy = ACQUISITIONS.get(name, name)
    if policy not in SELECTION_POLICIES:
        valid = [*ACQUISITIONS, *sorted(set(SELECTION_POLICIES) - set(ACQUISITIONS))]
        raise ValueError(f"unknown acquisition {name!r}; valid: {', '.join(valid)}")
    try:
        return get_policy(policy, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for acquisition {name!r}: {exc}") from None


class AcquisitionSettings(Section):
    """The acquisition function: ``committee`` (highest committee max force deviation), ``fps``,
    ``weighted``, ``random``, or any registered selection policy; ``options`` are its keyword arguments."""

    name: str = "committee"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(None, description="rng seed of random picks (default: the campaign seed)")

    @model_validator(mode="after")
    def _known(self):
        acquisition_policy(self.name, self.options)
        return self


class PoolCampaignConfig(_Campaign):
    """A pool-based campaign (``docs/pool.md``). ``total_budget`` counts the training labels, ``n_init``
    included; ``test_fraction`` (or ``n_test``) of the pool is held out: labelled once, never acquired."""

    kind: Literal["pool"] = "pool"
    pool: list[PoolSource] = Field(..., min_length=1)
    acquisition: AcquisitionSettings = Field(default_factory=AcquisitionSettings)
    n_init: int = Field(8, ge=2, description="random initial labels")
    budget: int = Field(8, ge=1, description="labels acquired per iteration (batch size)")
    total_budget: int | None = Field(None, ge=2, description="max training labels in all, n_init included")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held-out part of the pool")
    n_test: int | None = Field(None, ge=0, description="held-out structures (overrides test_fraction)")
    max_iterations: int = Field(10, ge=1)
    target_force_rmse: float | None = Field(None, gt=0, description="stop at this test force RMSE (eV/Å)")
    seed: int = 0

    unfingerprinted: ClassVar[tuple[str, ...]] = ("description", "base_dir", "max_iterations",
                                                  "target_force_rmse", "total_budget")

    @field_validator("pool", mode="before")
    @classmethod
    def _python_list(cls, value):
        """A plain list of Atoms/Structures is one ``structures`` source."""
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("the pool is empty: give at least one source")
        if isinstance(value, (list, tuple)) and all(isinstance(v, (Atoms, Structure)) for v in value):
            return [{"structures": [_structure_dict(v) for v in value]}]
        return value

    @field_validator("acquisition", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sizes(self):
        if self.total_budget is not None and self.total_budget < self.n_init:
            raise ValueError(f"total_budget ({self.total_budget}) is smaller than n_init ({self.n_init})")
        return self

    def load_pool(self, db=None) -> list[Atoms]:
        return load_pool(self.pool, self.base_dir, db)


# -- NFT campaigns ---------------------------------------------------------------------------------


class NftTargetSettings(StructureSource):
    """The large target structure, optionally rattled and with vacancies."""

    rattle_std: float = Field(0.0, ge=0, description="Gaussian displacement per Cartesian component (Å)")
    vacancies: int = Field(0, ge=0, description="remove this many random atoms")
    seed: int = 0
    evaluate_with_oracle: bool = Field(
        False, description="Label the target once with the oracle (never trained on) and record the committee's "
        "force errors on it each iteration; cheap with EMT, not with DFT")

    def load_target(self, base_dir: Path | None = None) -> Structure:
        structure = self.load(base_dir)
        rng = np.random.default_rng(self.seed)
        if self.vacancies:
            if self.vacancies >= len(structure):
                raise ConfigError(
                    f"target.vacancies ({self.vacancies}) must be fewer than the target's {len(structure)} atoms")
            structure = structure.copy()
            structure.remove_sites(sorted(rng.choice(len(structure), self.vacancies, replace=False).tolist()))
        if self.rattle_std > 0:
            cart = structure.cart_coords + rng.normal(0.0, self.rattle_std, size=(len(structure), 3))
            structure = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
        return structure


class NftChunkSettings(Section):
    """How uncertain atoms are picked and how chunks are cut around them (``almat.sampler.chunks``)."""

    mode: Literal["cluster", "periodic"] = Field(
        "cluster", description="cluster: atoms within cutoff in a vacuum box (exact environment, but a surface); "
        "periodic: a small periodic cell around the atom (no surface, but a seam at the faces)")
    cutoff: float = Field(5.0, gt=0, description="Å: radius of the exact environment kept around a central atom")
    percentile: float = Field(90.0, ge=0, le=100, description="atoms at or above this percentile of the target's "
                              "per-atom uncertainty are the candidates for central atoms")
    coefficient: float = Field(1.0, gt=0, description="uncertainty = coefficient x committee force std (norm)")
    max_chunks: int = Field(4, ge=1, description="chunks cut (and labelled) per iteration")
    merge_distance: float | None = Field(
        None, ge=0, description="Å: an uncertain atom this close to a chunk's first central atom joins that chunk "
        "(default: cutoff / 2)")
    vacuum: float = Field(6.0, gt=0, description="cluster: Å between the cluster and its periodic images")
    cell: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="periodic: the orthorhombic chunk cell's edges (Å), each > 2 x cutoff (default 2 cutoff + 1)")
    min_distance_factor: float = Field(
        0.7, gt=0, lt=1, description="periodic: drop seam atoms closer than this x the target's shortest distance")

    @model_validator(mode="after")
    def _cell(self):
        if self.cell is not None and any(edge <= 2 * self.cutoff for edge in self.cell):
            raise ValueError(f"chunk cell edges {self.cell} Å must each be > 2 x cutoff = {2 * self.cutoff:g} Å, or "
                             "images of the chunk fall within the cutoff of its central atom")
        return self

    def periodic_cell(self) -> list[float]:
        return list(self.cell) if self.cell is not None else [2 * self.cutoff + 1.0] * 3


class NftConvergenceSettings(Section):
    """When an NFT campaign stops (the first that holds)."""

    stop_delta: float = Field(0.05, gt=0, description="eV/Å: the target's max atomic uncertainty is below it")
    max_iterations: int = Field(5, ge=1, description="committees trained (iterations)")
    steps_not_improved: int = Field(
        2, ge=1, description="iterations in a row without a new lowest max atomic uncertainty of the target")


class NftCampaignConfig(_Campaign):
    """Nearsighted force training: initial data on small periodic cells, then rounds of train -> target
    uncertainty -> chunks -> label -> decide."""

    kind: Literal["nft"] = "nft"
    target: NftTargetSettings
    structures: list[StructureSource] = Field(
        ..., min_length=1, description="small periodic cells for the initial data (strained, rattled copies)")
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    chunks: NftChunkSettings = Field(default_factory=NftChunkSettings)
    convergence: NftConvergenceSettings = Field(default_factory=NftConvergenceSettings)

    @model_validator(mode="after")
    def _consistent(self):
        if self.oracle.kind != "ase":
            raise ValueError("NFT campaigns label chunks with an ASE oracle (oracle.kind: ase) for now")
        r_max = self.learner.hyperparameters.r_max
        if self.chunks.mode == "cluster" and self.chunks.vacuum <= r_max:
            raise ValueError(f"chunks.vacuum ({self.chunks.vacuum:g} Å) must exceed the model cutoff "
                             f"learner.hyperparameters.r_max ({r_max:g} Å), or a cluster would see its own images")
        return self

    def load_target(self) -> Structure:
        """The target (rattled / with vacancies as configured); deterministic for a given config."""
        return self.target.load_target(self.base_dir)


AnyCampaignConfig = CampaignConfig | PoolCampaignConfig | NftCampaignConfig
CONFIG_CLASSES: dict[str, type[_Campaign]] = {"md": CampaignConfig, "pool": PoolCampaignConfig,
                                              "nft": NftCampaignConfig}


def load_config(source: str | Path | dict[str, Any] | _Campaign) -> AnyCampaignConfig:
    """A validated campaign config of any kind from a YAML file, a dict or a config object.

    Relative structure paths start at the YAML's folder (``base_dir``); an ASE oracle's calculator must
    be importable. Every error is one ``ConfigError`` line naming the key (YAML errors: line and column).
    """
    if isinstance(source, _Campaign):
        return source
    if isinstance(source, dict):
        data, where, base = dict(source), "campaign config", None
    else:
        path = Path(source)
        data = load_yaml(path, "campaign file")
        if data is None:
            raise ConfigError(f"{path}: expected a mapping at the top level")
        where, base = str(path), path.parent.resolve()
    kind = data.get("kind", "md")
    if kind not in CONFIG_CLASSES:
        raise ConfigError(f"{where}: kind: {kind!r} is not a campaign kind; valid: {', '.join(CONFIG_CLASSES)}")
    if base is not None and "base_dir" not in data:
        data["base_dir"] = base
    try:
        config = CONFIG_CLASSES[kind].model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    if config.oracle.kind == "ase":
        try:
            config.oracle.calculator.spec().resolve()
        except ValueError as exc:
            raise ConfigError(f"{where}: oracle.calculator: {exc}") from None
    return config
