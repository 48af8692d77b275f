"""The settings of an MD campaign: the committee MD sampler and its stages, their systems and trust levels,
the selection policy and the convergence rule. Pure data."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from almat.campaign.settings.common import InitialDataSettings, PrerelaxSettings, StructureSource, _Campaign
from almat.learner.hyperparameters import NPT_STRESS_WEIGHT
from almat.sampler.md import ENSEMBLES
from almat.schemas.section import Section
from almat.select.lookup import check_policy
from almat.uncertainty.calibration import check_confidence
from almat.uncertainty.deviation import TrustLevels


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
                "trust_lo", "trust_hi", "trust_units", "adaptive_lo")
#: the trust levels' units: ``raw`` (model deviation, eV/Å) or ``calibrated`` (k x deviation, eV/Å)
TRUST_UNITS = ("raw", "calibrated")
#: the lower trust level of single-model uncertainty, and of calibrated levels before the first calibration
#: (iteration 0), when the stage sets no ``adaptive_lo``: the most uncertain 10 % of the frames below ``hi``
DEFAULT_ADAPTIVE_LO = {"fraction": 0.1}
#: learner uncertainties of one model (no committee): their lower trust level is adaptive by default
SINGLE_MODEL_UNCERTAINTY = ("shallow", "llpr")


class _Conditions(Section):
    """The checks that the sampler section and each of its stages share."""

    @field_validator("ensemble", check_fields=False)
    @classmethod
    def _known_ensemble(cls, value: str | None) -> str | None:
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
    trust_units: Literal["raw", "calibrated"] | None = None
    adaptive_lo: AdaptiveTrust | Literal[False] | None = None
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

    def resolved(self, factor: float | None, single_model: bool = False) -> StageSettings:
        """The stage as the explorer uses it: trust levels in raw units and ``adaptive_lo`` an
        ``AdaptiveTrust`` or None. Calibrated levels (``trust_units: calibrated``, with the per-system levels
        and ``lo_min``/``lo_max``) are divided by ``factor``, the latest calibration's k; without one yet
        (iteration 0) by 1, which, as deviations underestimate errors (k > 1), puts ``hi`` at its most
        permissive, while ``lo`` is adaptive. ``adaptive_lo`` left out is ``DEFAULT_ADAPTIVE_LO`` for
        ``single_model`` uncertainty and before the first k; ``adaptive_lo: false`` keeps ``trust_lo``."""
        adaptive, calibrated = self.adaptive_lo, self.trust_units == "calibrated"
        if adaptive is None and (single_model or (calibrated and factor is None)):
            adaptive = AdaptiveTrust(**DEFAULT_ADAPTIVE_LO)
        update: dict[str, Any] = {"adaptive_lo": adaptive or None}
        if calibrated:
            k = 1.0 if factor is None else float(factor)
            if not k > 0:
                raise ValueError(f"calibrated trust levels need a calibration factor k > 0, got {factor}")
            scale = (lambda x: None if x is None else x / k)  # noqa: E731
            update.update(trust_lo=scale(self.trust_lo), trust_hi=scale(self.trust_hi), trust_units="raw")
            if self.systems:
                update["systems"] = [sys.model_copy(update={"trust_lo": scale(sys.trust_lo),
                                                            "trust_hi": scale(sys.trust_hi)}) for sys in self.systems]
            if adaptive:
                update["adaptive_lo"] = adaptive.model_copy(update={"lo_min": adaptive.lo_min / k,
                                                                    "lo_max": scale(adaptive.lo_max)})
        return self.model_copy(update=update)

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
    trust_units: Literal["raw", "calibrated"] = Field(
        "raw", description="raw: trust levels on the model deviation; calibrated: on k x deviation (eV/Å), "
        "k from the latest calibration (docs/uncertainty.md)")
    adaptive_lo: AdaptiveTrust | Literal[False] | None = Field(
        None, description="DP-GEN's adaptive lo; None: adaptive (DEFAULT_ADAPTIVE_LO) for single-model "
        "uncertainty only; false: never")
    stages: list[StageSettings] | None = Field(None, min_length=1)
    stop_after_failed: int = Field(1, ge=1)
    min_distance_factor: float = Field(0.7, gt=0, lt=1, description="MD stops when two atoms come closer than "
                                       "this x the shortest distance of the start structure")
    max_volume_factor: float = Field(3.0, gt=1, description="npt: MD stops when the volume leaves [V0/f, f V0]")
    max_walkers_per_job: int = Field(64, ge=1, description="walkers advanced together by one explore job")
    drive: Literal["mean", "first"] = Field("mean", description="what drives the MD: the committee's mean, or its "
                                            "first member (the others only on recorded frames: cheaper)")
    seed: int = 0

    @model_validator(mode="after")
    def _stages(self):
        for k, stage in enumerate(self.stage_list()):
            try:
                stage.check()
            except ValueError as exc:
                raise ValueError(f"stages.{k}: {exc}" if self.stages else str(exc)) from None
        return self

    def stage_list(self) -> list[StageSettings]:
        """The stages, complete: what a stage leaves out comes from these settings."""
        base = {f: getattr(self, f) for f in STAGE_FIELDS}
        stages = self.stages or [StageSettings()]
        return [StageSettings.model_construct(**{**base, "name": s.name, "convergence": s.convergence,
                                                 **{f: getattr(s, f) for f in STAGE_FIELDS if getattr(s, f) is not None}})
                for s in stages]


class SelectionSettings(Section):
    policy: str = "max_deviation"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the policy")
    max_select: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _known(self):
        check_policy(self.policy, self.options)
        return self


class ConvergenceSettings(Section):
    """When an MD campaign stops.

    ``rule: calibrated`` (default): every iteration labels ``calibration_samples`` held-out explored
    frames, spread over the whole range of model deviation; on them it fits the recalibration factor
    ``k`` (error ~ k x deviation), the split-conformal quantile ``q`` at ``calibration_coverage`` and the
    Spearman correlation. The campaign converges when the calibrated uncertainty (``k u``, or ``q k u``
    with ``bound: conformal``) of the explored frames is below ``force_tolerance`` for a fraction
    ``>= conv_accuracy`` of them. ``rule: confidence_bound``: the same share, but its lower confidence
    bound (``conv_confidence``, ``conv_interval``) on the frames it rests on must reach ``conv_accuracy``
    (``almat.uncertainty.calibration.convergence_check``). ``rule: accurate_ratio``: DP-GEN's rule, stop
    when the fraction of frames below ``trust_lo`` reaches ``conv_accuracy``. Any rule may have to hold
    for ``conv_patience`` iterations in a row of a stage. Either way it stops at ``max_iterations``.
    """

    rule: Literal["calibrated", "confidence_bound", "accurate_ratio"] = "calibrated"
    conv_accuracy: float = Field(0.95, gt=0, le=1, description="Fraction of explored frames that must pass the rule")
    conv_confidence: float = Field(0.9, description="rule confidence_bound: the level of the share's lower "
                                   "confidence bound, strictly between 0 and 1")
    conv_interval: Literal["wilson", "clopper-pearson"] = Field(
        "wilson", description="rule confidence_bound: how the lower bound is computed")
    conv_patience: int = Field(1, ge=1, description="Iterations in a row of a stage that must pass the rule")
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

    @field_validator("conv_confidence")
    @classmethod
    def _confidence(cls, value: float) -> float:
        return check_confidence(value, "the confidence level")

    @model_validator(mode="after")
    def _needs_samples(self):
        if self.rule in ("calibrated", "confidence_bound") and self.calibration_samples < 2:
            raise ValueError(f"rule {self.rule!r} needs calibration_samples >= 2 held-out frames per iteration")
        return self


class CampaignConfig(_Campaign):
    """An MD campaign: train -> committee MD -> select -> label -> decide."""

    kind: Literal["md"] = "md"
    structures: list[StructureSource] = Field(..., min_length=1)
    prerelax: PrerelaxSettings = Field(default_factory=PrerelaxSettings)
    initial: InitialDataSettings = Field(default_factory=InitialDataSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    convergence: ConvergenceSettings = Field(default_factory=ConvergenceSettings)

    @model_validator(mode="after")
    def _calibrated_trust_needs_calibration(self):
        for k, stage in enumerate(self.sampler.stage_list()):
            samples = {**self.convergence.model_dump(), **stage.convergence}["calibration_samples"]
            if stage.trust_units == "calibrated" and samples == 0:
                where = f"sampler.stages.{k}" if self.sampler.stages else "sampler"
                raise ValueError(f"{where}.trust_units: calibrated trust levels need calibration frames to fit k, "
                                 "but convergence.calibration_samples is 0")
        return self

    #: a campaign stopped with nothing new to learn may go on with other settings
    resumable_when_stopped: ClassVar[bool] = True


def training_learner(config):
    """The learner settings a campaign trains with: a campaign with an NPT stage trains on stresses
    (``NPT_STRESS_WEIGHT``) unless its learner gives a ``stress_weight`` (0 turns it off) or cannot train on
    stresses (a shallow ensemble, CHGNet). The config itself keeps what its file says, so its fingerprint and
    its stored dump do not change."""
    learner = config.learner
    hp = learner.hyperparameters
    if (npt_stages(config) and learner.uncertainty != "shallow" and "stress_weight" in type(hp).model_fields
            and "stress_weight" not in hp.model_fields_set):
        return learner.model_copy(update={"hyperparameters": hp.model_copy(update={"stress_weight": NPT_STRESS_WEIGHT})})
    return learner


def npt_stages(config) -> list[str]:
    """The names of a campaign's stages that explore at constant pressure (none for other kinds)."""
    sampler = getattr(config, "sampler", None)
    if sampler is None:
        return []
    return [stage.name or str(k) for k, stage in enumerate(sampler.stage_list()) if stage.ensemble != "nvt"]
