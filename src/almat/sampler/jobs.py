"""The sampler's Maker: many walkers advanced together by one job (``ExploreWalkersMaker``), one batched
committee forward per MD step; ``ExploreDoc`` is the record of each walker."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobflow import Maker
from pydantic import BaseModel, Field
from pymatgen.core import Structure

from almat.learner.committee import Committee
from almat.sampler.md import DRIVES, ExplorationSettings, Walker, run_walkers
from almat.schemas import StructureDoc, to_atoms, to_structure
from almat.stores import current_db, put_blob, store_job
from almat.threads import torch_threads
from almat.uncertainty.deviation import TrustLevels

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
    system: str | None = None
    ensemble: str = "nvt"
    pressure_bar: float | None = None
    trust_lo: float | None = None
    trust_hi: float | None = None
    seed: int | None = None


class WalkerSpec(BaseModel):
    """One walker of an ``ExploreWalkersMaker`` job: a start ``structure``, or a ``query`` of the store
    (``{collection, filters, limit}``: one walker per structure found, seeds ``seed + k``)."""

    system: str
    structure: Any = None
    query: dict[str, Any] | None = None
    ensemble: str = "nvt"
    temperature: float
    pressure_bar: float | None = None
    steps: int = 300
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.02
    thermostat_time_fs: float = 100.0
    barostat_time_fs: float = 500.0
    sample_every: int = 10
    trust_lo: float = 0.05
    trust_hi: float = 0.30
    seed: int = 0


def _query_structures(db, query: dict[str, Any]) -> list[Structure]:
    collection = query.get("collection", "structures")
    docs = getattr(db, collection).query(query.get("filters") or {}, properties=["structure"],
                                         limit=query.get("limit") or 0)
    return [Structure.from_dict(d["structure"]) for d in docs]


def _walker_runs(db, walkers: list[dict]) -> list[tuple[WalkerSpec, Structure]]:
    """Each walker with its start structure; a ``query`` walker becomes one walker per structure found."""
    runs: list[tuple[WalkerSpec, Structure]] = []
    for spec in (WalkerSpec.model_validate(w) for w in walkers):
        if spec.query is not None:
            found = _query_structures(db, spec.query)
            if not found:
                logger.warning("system %s: the query %s found no structure", spec.system, spec.query)
            runs += [(spec.model_copy(update={"system": f"{spec.system}.{k}", "seed": spec.seed + k}), s)
                     for k, s in enumerate(found)]
        else:
            s = spec.structure
            s = s.structure if isinstance(s, StructureDoc) else s
            runs.append((spec, to_structure(Structure.from_dict(s) if isinstance(s, dict) else s)))
    return runs


@dataclass
class ExploreWalkersMaker(Maker):
    """Many walkers in one job (``almat.sampler.md.run_walkers``): one batched committee forward per MD
    step for all of them; each walker's trajectory goes to the ``data`` store (compact, by reference), the
    output is one ``ExploreDoc`` per walker (without candidates: they are picked by the select step).
    ``drive``: what drives the MD, the committee's ``mean`` or its ``first`` member (``almat.sampler.md``)."""

    name: str = "explore walkers"
    stop_after_failed: int = 1
    min_distance_factor: float = 0.7
    max_volume_factor: float = 3.0
    device: str = "cpu"
    drive: str = "mean"

    def __post_init__(self) -> None:
        if self.drive not in DRIVES:
            raise ValueError(f"unknown drive {self.drive!r}; valid: {', '.join(DRIVES)}")

    @store_job
    def make(self, model_ids: list[str], walkers: list[dict], campaign: str | None = None,
             iteration: int | None = None) -> list[ExploreDoc]:
        db = current_db()
        if db is None:
            raise RuntimeError("exploration needs a JobStore to load the committee: run it with jobflow")
        try:
            runs = _walker_runs(db, walkers)
            batch = [Walker(to_atoms(s), ExplorationSettings(
                temperature=w.temperature, steps=w.steps, timestep_fs=w.timestep_fs,
                friction_per_fs=w.friction_per_fs, sample_every=w.sample_every,
                stop_after_failed=self.stop_after_failed, min_distance_factor=self.min_distance_factor,
                seed=w.seed, ensemble=w.ensemble, pressure_bar=w.pressure_bar,
                thermostat_time_fs=w.thermostat_time_fs, barostat_time_fs=w.barostat_time_fs,
                max_volume_factor=self.max_volume_factor), TrustLevels(lo=w.trust_lo, hi=w.trust_hi), name=w.system)
                for w, s in runs]
            committee = Committee.from_store(db, model_ids, device=self.device)
            with torch_threads() as threads:  # the free cores at the job's start (almat.threads)
                trajs, info = run_walkers(batch, committee, self.drive) if batch else ([], {"batched_calls": 0})
            docs = []
            for (w, s), traj in zip(runs, trajs):
                blob_id = put_blob(db.data, traj.to_blob(), kind="trajectory", campaign=campaign, iteration=iteration,
                                   temperature=w.temperature, system=w.system)
                docs.append(ExploreDoc(
                    campaign=campaign, iteration=iteration, temperature=w.temperature,
                    start_structure_hash=StructureDoc(structure=s, source="init").structure_hash,
                    n_frames=len(traj.frames), counts=traj.counts(),
                    model_deviation=[f.model_deviation for f in traj.frames],
                    energy_deviation=[f.energy_deviation for f in traj.frames], trajectory_blob_id=blob_id,
                    stopped_early=traj.stopped_early, exploded=traj.exploded, stop_reason=traj.stop_reason,
                    model_ids=list(model_ids), system=w.system, ensemble=w.ensemble, pressure_bar=w.pressure_bar,
                    trust_lo=w.trust_lo, trust_hi=w.trust_hi, seed=w.seed))
        finally:
            db.close()
        logger.info("iteration %s: %d walkers, %d frames, %d batched committee calls (%d threads), %d stopped early",
                    iteration, len(docs), sum(d.n_frames for d in docs), info["batched_calls"], threads,
                    sum(d.stopped_early for d in docs))
        return docs
