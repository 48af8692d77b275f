"""Documents that almat keeps in its campaign collections (pydantic v2).

Units: energies in eV, forces in eV/Å, stress in eV/Å³ with ASE's sign convention (positive = tensile),
as a 3x3 matrix. Times in seconds, dates in UTC.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from monty.json import jsanitize
from ase.data import chemical_symbols
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Structure

from almat.schemas.structure import chemsys_of, structure_hash, to_atoms


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex


class AlmatDocument(BaseModel):
    """Base of the stored documents: validated, serialisable to plain dicts."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def to_store(self) -> dict[str, Any]:
        """A plain, JSON/BSON-ready dict for a maggma store."""
        return jsanitize(self.model_dump(mode="python"), strict=True, allow_bson=True, enum_values=True)

    @classmethod
    def from_store(cls, doc: dict[str, Any]):
        """Validate a document read back from a store (drops the store's own fields)."""
        doc = {k: v for k, v in doc.items() if k not in ("_id", "last_updated")}
        return cls.model_validate(doc)


class StructureSource(str, Enum):
    """Where a structure came from."""

    init = "init"
    enumerated = "enumerated"
    perturbed = "perturbed"
    md = "md"
    pool = "pool"
    relaxed = "relaxed"
    nft_chunk = "nft-chunk"


class LabelStatus(str, Enum):
    ok = "ok"
    failed = "failed"


class _ConfigurationDoc(AlmatDocument):
    """A document about one configuration; identity and composition fields are derived from it."""

    structure: Structure
    structure_hash: str = ""
    formula: str = ""
    chemsys: str = ""
    elements: list[str] = Field(default_factory=list)
    natoms: int = 0

    def model_post_init(self, __context: Any) -> None:
        s = self.structure
        elements = sorted({el.symbol for el in s.composition.elements})
        unknown = [el for el in elements if el not in chemical_symbols[1:]]
        if unknown:
            raise ValueError(f"unknown element(s) {', '.join(unknown)} in the structure")
        self.structure_hash = self.structure_hash or structure_hash(s)
        self.formula = self.formula or s.composition.reduced_formula
        self.elements = self.elements or elements
        self.chemsys = self.chemsys or chemsys_of(elements)
        self.natoms = self.natoms or len(s)


class StructureDoc(_ConfigurationDoc):
    """A configuration that a campaign produced or used."""

    source: StructureSource
    campaign: str | None = None
    iteration: int | None = Field(None, description="Iteration that produced it; -1 for initial data.")
    parent: str | None = Field(None, description="structure_hash of the structure this one came from")
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class LabelDoc(_ConfigurationDoc):
    """An oracle's answer for one configuration: energy, forces, stress, or why it failed."""

    label_id: str = ""
    source: StructureSource | None = None
    campaign: str | None = None
    iteration: int | None = None
    oracle: str = Field(..., description="Oracle name, e.g. 'ase:ase.calculators.emt.EMT'")
    oracle_fingerprint: str = Field(..., description="Hash of the oracle's settings")
    oracle_settings: dict[str, Any] = Field(default_factory=dict)
    status: LabelStatus = LabelStatus.ok
    reason: str | None = Field(None, description="Why the label failed")
    energy: float | None = None
    forces: list[list[float]] | None = None
    stress: list[list[float]] | None = None
    wall_time: float | None = None
    job_uuid: str | None = None
    run_dir: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    reused_from: str | None = Field(
        None,
        description="label_id of the label (same structure_hash and oracle_fingerprint, possibly of another "
        "campaign) whose results were copied instead of calling the oracle again; None when the oracle ran",
    )
    force_weights: list[float] | None = Field(
        None,
        description="Per-atom weights of the force loss in training (nearsighted force training: 1 on a "
        "chunk's central atoms, 0 on the rest); None = every atom weighs 1",
    )
    energy_weight: float | None = Field(
        None, ge=0, description="Weight of this label's energy in the loss (0 for NFT chunks); None = 1"
    )

    @field_validator("stress", mode="before")
    @classmethod
    def _stress_3x3(cls, value: Any) -> Any:
        """Stress as a 3x3 matrix, from 9 components or 6 in Voigt order (xx, yy, zz, yz, xz, xy)."""
        if value is None:
            return None
        try:
            flat = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError("stress must be 6 (Voigt) or 9 numbers") from None
        if flat.size == 6:
            xx, yy, zz, yz, xz, xy = flat
            return [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]
        if flat.size != 9:
            raise ValueError(f"stress has {flat.size} components; expected 6 (Voigt) or 9")
        return flat.reshape(3, 3).tolist()

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if not self.label_id:
            # deterministic: a rerun of the same label job overwrites, never duplicates
            key = f"{self.campaign}|{self.structure_hash}|{self.oracle_fingerprint}"
            self.label_id = hashlib.sha256(key.encode()).hexdigest()[:24]
        if self.status == LabelStatus.failed and not self.reason:
            raise ValueError("a failed label needs a reason")
        if self.status == LabelStatus.ok:
            if self.energy is None or self.forces is None:
                raise ValueError("an ok label needs an energy and forces")
            if np.shape(self.forces) != (len(self.structure), 3):
                raise ValueError(f"forces have shape {np.shape(self.forces)} for {len(self.structure)} atoms; "
                                 "expected one row of 3 per atom")
            for name in ("energy", "forces", "stress"):
                if getattr(self, name) is not None and not np.all(np.isfinite(getattr(self, name))):
                    raise ValueError(f"{name} is not finite")
        if self.force_weights is not None and len(self.force_weights) != len(self.structure):
            raise ValueError(f"force_weights has {len(self.force_weights)} entries for {len(self.structure)} atoms")

    @property
    def ok(self) -> bool:
        return self.status == LabelStatus.ok

    def to_atoms(self):
        """ASE Atoms carrying the label as a SinglePointCalculator result."""
        atoms = to_atoms(self.structure)
        if self.ok:
            results: dict[str, Any] = {"energy": self.energy, "forces": np.array(self.forces)}
            if self.stress is not None:
                results["stress"] = np.array(self.stress)
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["label_id"] = self.label_id
        if self.force_weights is not None:
            atoms.arrays["force_weights"] = np.asarray(self.force_weights, dtype=float)
        if self.energy_weight is not None:
            atoms.info["energy_weight"] = float(self.energy_weight)
        return atoms


class ModelDoc(AlmatDocument):
    """One trained member of a committee. The weights are a blob in the ``data`` store."""

    model_id: str = Field(default_factory=_new_id)
    campaign: str | None = None
    iteration: int | None = None
    committee_index: int = 0
    role: str = Field("committee", description="committee (a member) or production (the model of finish:)")
    architecture: str = "MACE"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    elements: list[str] = Field(default_factory=list)
    training_label_ids: list[str] = Field(default_factory=list)
    validation_label_ids: list[str] = Field(default_factory=list)
    validation_metrics: dict[str, float] = Field(default_factory=dict)
    n_parameters: int = 0
    epochs_trained: int = 0
    warm_started_from: str | None = None
    weights_blob_id: str = Field(..., description="blob_uuid of the weights in the data store")
    weights_store: str = "data"
    files: dict[str, str] = Field(default_factory=dict, description="file name -> blob id of the files the "
                                  "trainer wrote for users (a production model's .model and its compiled form)")
    device: str = "cpu"
    wall_time: float | None = None
    job_uuid: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class TestErrors(AlmatDocument):
    """Committee-mean errors on labels the committee was not trained on."""

    __test__ = False  # not a pytest class

    n_structures: int = 0
    energy_rmse_per_atom: float | None = None
    force_rmse: float | None = None
    force_mae: float | None = None
    max_force_error: float | None = None


class DeviationHistogram(AlmatDocument):
    """Histogram of the per-frame max force deviation (eV/Å)."""

    bin_edges: list[float]
    counts: list[int]


class CalibrationDoc(BaseModel):
    """One iteration's calibration of the committee deviation against oracle errors (eV/Å)."""

    model_config = ConfigDict(extra="forbid")

    campaign: str | None = None
    iteration: int | None = None
    factor: float = Field(..., description="Recalibration factor k: observed error ~ k x deviation")
    method: str = Field("lstsq", description="How k was fitted: lstsq (through the origin) or median ratio")
    quantile: float = Field(..., description="Split-conformal quantile q of error / (k x deviation); "
                                             "inf when too few frames for the coverage")
    coverage: float = Field(..., gt=0, lt=1, description="Target coverage of the bound q k u")
    empirical_coverage: float = Field(..., description="Fraction of these frames within q k u")
    spearman: float | None = Field(None, description="Spearman rank correlation of deviation and error "
                                                     "(None when undefined)")
    n_samples: int = Field(..., ge=1)
    predicted: list[float] = Field(..., description="Per-frame max atomic force deviation (eV/Å)")
    observed: list[float] = Field(..., description="Per-frame max atomic force error vs the oracle (eV/Å)")
    units: str = "eV/Å"

    def calibrated(self, uncertainty) -> np.ndarray:
        """``k * u``: the recalibrated uncertainty (eV/Å)."""
        return self.factor * np.asarray(uncertainty, dtype=float)

    def upper_bound(self, uncertainty) -> np.ndarray:
        """``q * k * u``: exceeded by the true error with probability at most ``1 - coverage``."""
        return self.quantile * self.factor * np.asarray(uncertainty, dtype=float)


class IterationDoc(AlmatDocument):
    """What one train → explore → select → label round did."""

    campaign: str
    iteration: int
    n_frames_explored: int = 0
    accurate_ratio: float = 0.0
    candidate_ratio: float = 0.0
    failed_ratio: float = 0.0
    n_candidates: int = 0
    n_selected: int = 0
    n_labelled: int = 0
    n_failed_labels: int = 0
    n_reused_labels: int = Field(0, description="labels copied from an earlier identical label (no oracle call)")
    n_train_labels: int = 0
    trust_lo: float = Field(..., description="The lower trust level in force (the adaptive one when chosen)")
    trust_hi: float
    stage: int = Field(0, description="The exploration stage (index into sampler.stages) this iteration explored")
    stage_name: str | None = None
    n_walkers: int = Field(0, description="MD walkers (system x temperature x pressure x seed) explored")
    test_errors: TestErrors = Field(default_factory=TestErrors)
    deviation_histogram: DeviationHistogram | None = None
    model_ids: list[str] = Field(default_factory=list)
    trajectory_blob_ids: list[str] = Field(default_factory=list)
    exploded_trajectories: int = 0
    converged: bool = False
    stop_rule: str = Field("accurate_ratio", description="The stopping rule in force: calibrated or accurate_ratio")
    calibration: CalibrationDoc | None = Field(
        None, description="Committee deviation against oracle errors on held-out explored frames")
    calibration_label_ids: list[str] = Field(
        default_factory=list, description="This iteration's held-out calibration labels (never trained on)")
    calibrated_fraction: float | None = Field(
        None, description="Fraction of explored frames whose calibrated uncertainty is below force_tolerance")
    calibrated_fraction_bound: float | None = Field(
        None, description="One-sided lower confidence bound (at confidence_level) of calibrated_fraction, on "
        "bound_n_effective frames (explored and calibration frames: docs/uncertainty.md)")
    confidence_level: float | None = Field(None, description="The level of calibrated_fraction_bound")
    bound_n_effective: float | None = Field(None, description="The frames calibrated_fraction_bound rests on")
    rule_passed: bool | None = Field(
        None, description="Whether the stop rule passed this iteration (converged needs conv_patience in a row)")
    trust_factor: float | None = Field(
        None, description="trust_units: calibrated: the factor k that turned the trust levels into raw ones "
        "(None: raw trust levels, or no calibration yet)")
    stop_reason: str | None = None
    n_guard_samples: int = Field(0, description="random explored frames labelled by the guard: no candidate "
                                 "selected for guard_patience iterations while the calibrated error was above tolerance")
    guard_reason: str | None = Field(None, description="why the guard fired (None: it did not)")
    training_failures: list[str] = Field(default_factory=list, description="members (or the shallow ensemble) "
                                         "whose training failed this iteration, and why")
    created_at: datetime = Field(default_factory=utcnow)


class CampaignStatus(str, Enum):
    created = "created"
    running = "running"
    converged = "converged"
    max_iterations = "max_iterations"
    stopped = "stopped"
    failed = "failed"


class CampaignDoc(AlmatDocument):
    """A campaign: its configuration and where it stands."""

    name: str
    config: dict[str, Any]
    config_fingerprint: str
    status: CampaignStatus = CampaignStatus.created
    elements: list[str] = Field(default_factory=list)
    chemsys: str = ""
    oracle: str = ""
    oracle_fingerprint: str = ""
    n_iterations: int = 0
    n_labels: int = 0
    n_reused_labels: int = Field(0, description="labels reused from earlier identical labels (no oracle call)")
    stop_reason: str | None = None
    production_model_id: str | None = Field(None, description="the model_id of its production model (finish:)")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
