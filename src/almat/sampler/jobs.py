"""The sampler's Maker: committee MD from one start structure at one temperature."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jobflow import Maker
from pydantic import BaseModel, Field
from pymatgen.core import Structure

from almat.sampler.md import ExplorationSettings, run_exploration
from almat.schemas import StructureDoc, to_atoms, to_structure
from almat.stores import current_db, put_blob, store_job
from almat.uncertainty.deviation import FrameClass, TrustLevels

logger = logging.getLogger(__name__)


class CandidateFrame(BaseModel):
    """A frame whose model deviation lies within the trust levels: worth asking the oracle."""

    structure: Structure
    step: int
    model_deviation: float
    energy_deviation: float
    temperature: float
    trajectory_blob_id: str | None = None
    parent: str | None = None


class ExploreDoc(BaseModel):
    """Output of an exploration job."""

    campaign: str | None = None
    iteration: int | None = None
    temperature: float
    start_structure_hash: str
    n_frames: int
    counts: dict[str, int]
    model_deviation: list[float]
    energy_deviation: list[float]
    candidates: list[CandidateFrame] = Field(default_factory=list)
    trajectory_blob_id: str | None = None
    stopped_early: bool = False
    exploded: bool = False
    stop_reason: str | None = None
    model_ids: list[str] = Field(default_factory=list)


@dataclass
class ExploreMaker(Maker):
    """Langevin NVT with the committee; every sampled frame is classified by the trust levels.

    The whole trajectory (positions, deviations) goes to the ``data`` store; the output carries the
    per-frame deviations and the candidate frames.
    """

    name: str = "explore"
    temperature: float = 300.0
    steps: int = 300
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.02
    sample_every: int = 10
    trust_lo: float = 0.05
    trust_hi: float = 0.30
    stop_after_failed: int = 1
    min_distance_factor: float = 0.7
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TrustLevels(lo=self.trust_lo, hi=self.trust_hi)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 K, got {self.temperature}")

    @store_job(output_schema=ExploreDoc)
    def make(
        self,
        model_ids: list[str],
        structure: StructureDoc | Structure,
        campaign: str | None = None,
        iteration: int | None = None,
    ) -> ExploreDoc:
        from almat.learner.committee import Committee  # torch: only in the running job

        if isinstance(structure, StructureDoc):
            structure = structure.structure
        structure = to_structure(structure)
        trust = TrustLevels(lo=self.trust_lo, hi=self.trust_hi)
        settings = ExplorationSettings(
            temperature=self.temperature,
            steps=self.steps,
            timestep_fs=self.timestep_fs,
            friction_per_fs=self.friction_per_fs,
            sample_every=self.sample_every,
            stop_after_failed=self.stop_after_failed,
            min_distance_factor=self.min_distance_factor,
            seed=self.seed + 7919 * (iteration or 0),
        )
        db = current_db()
        if db is None:
            raise RuntimeError("exploration needs a JobStore to load the committee: run it with jobflow")
        try:
            committee = Committee.from_store(db, model_ids, device=self.device)
            traj = run_exploration(to_atoms(structure), committee.calculator(), trust, settings)
            start_hash = StructureDoc(structure=structure, source="init").structure_hash
            blob_id = put_blob(db.data, traj.to_blob(), kind="trajectory", campaign=campaign,
                               iteration=iteration, temperature=self.temperature)
        finally:
            db.close()
        candidates = [
            CandidateFrame(
                structure=to_structure(traj.atoms(i)),
                step=frame.step,
                model_deviation=frame.model_deviation,
                energy_deviation=frame.energy_deviation,
                temperature=frame.temperature,
                trajectory_blob_id=blob_id,
                parent=start_hash,
            )
            for i, frame in enumerate(traj.frames)
            if frame.frame_class == FrameClass.candidate
        ]
        counts = traj.counts()
        logger.info(
            "iteration %s: MD at %.0f K, %d frames: %d accurate, %d candidate, %d failed%s",
            iteration, self.temperature, len(traj.frames), counts["accurate"], counts["candidate"],
            counts["failed"], f" ({traj.stop_reason})" if traj.stop_reason else "",
        )
        return ExploreDoc(
            campaign=campaign,
            iteration=iteration,
            temperature=self.temperature,
            start_structure_hash=start_hash,
            n_frames=len(traj.frames),
            counts=counts,
            model_deviation=[f.model_deviation for f in traj.frames],
            energy_deviation=[f.energy_deviation for f in traj.frames],
            candidates=candidates,
            trajectory_blob_id=blob_id,
            stopped_early=traj.stopped_early,
            exploded=traj.exploded,
            stop_reason=traj.stop_reason,
            model_ids=list(model_ids),
        )
