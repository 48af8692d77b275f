"""Run a campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from jobflow import run_locally

from almat.campaign.config import CampaignConfig, load_config
from almat.campaign.flow import CampaignMaker
from almat.schemas import CampaignDoc, CampaignStatus, IterationDoc
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, build_job_store, check_connection

logger = logging.getLogger(__name__)

__all__ = ["CampaignConvergedError", "CampaignExistsError", "CampaignResult", "ResumeState", "build_flow",
           "relaxed_starts", "resume_state", "run_campaign"]


class CampaignExistsError(ValueError):
    """A campaign of that name is already in the store."""


class CampaignConvergedError(CampaignExistsError):
    """Resuming a campaign that has already converged: nothing to do."""


@dataclass
class ResumeState:
    start_iteration: int
    label_ids: list[str]
    previous_model_ids: list[str]
    start_structures: list | None = None  # the pre-relaxed starts, when the campaign has them


@dataclass
class CampaignResult:
    campaign: CampaignDoc
    iterations: list[IterationDoc]
    wall_time: float


def resume_state(db: CampaignDB, name: str) -> ResumeState:
    """Where a stored campaign stands: next iteration, its ok training labels (not the held-out
    calibration labels), its last committee."""
    from almat.campaign.jobs import previous_calibration_ids

    held_out = set(previous_calibration_ids(db, name))  # calibration labels are never trained on
    label_ids = [d["label_id"] for d in db.labels.query({"campaign": name, "status": "ok"}, properties=["label_id"])
                 if d["label_id"] not in held_out]
    iterations = sorted(d["iteration"] for d in db.iterations.query({"campaign": name}, properties=["iteration"]))
    start = iterations[-1] + 1 if iterations else 0
    model_ids = []
    if iterations:
        last = db.iterations.query_one({"campaign": name, "iteration": iterations[-1]})
        model_ids = list(last.get("model_ids", []))
    return ResumeState(start, label_ids, model_ids, relaxed_starts(db, name) or None)


def relaxed_starts(db: CampaignDB, name: str) -> list:
    """The pre-relaxed start structures of a campaign, in the order of its config."""
    from almat.schemas import StructureDoc

    docs = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": name, "source": "relaxed"})]
    docs = [d for d in docs if d.metadata.get("start_index") is not None]
    return [d.structure for d in sorted(docs, key=lambda d: d.metadata["start_index"])]


def build_flow(config: CampaignConfig, db: CampaignDB, resume: bool = False):
    """Check the name against the store, then build the campaign flow (fresh or resumed)."""
    existing = db.campaigns.query_one({"name": config.name})
    maker = CampaignMaker.from_config(config)
    if existing is None:
        if resume:
            logger.info("campaign %s not found; starting it", config.name)
        return maker.make()
    if existing.get("config_fingerprint") != config.fingerprint():
        raise CampaignExistsError(
            f"campaign {config.name!r} already exists with a different configuration; "
            "choose another name (campaigns are never mixed)"
        )
    if not resume:
        raise CampaignExistsError(
            f"campaign {config.name!r} already exists (status {existing.get('status')}, "
            f"{existing.get('n_iterations', 0)} iteration(s)); resume it (--resume) or choose another name"
        )
    if existing.get("status") == CampaignStatus.converged.value:
        raise CampaignConvergedError(f"campaign {config.name!r} has already converged; nothing to resume")
    state = resume_state(db, config.name)
    if len(state.label_ids) < 2:
        # nothing usable yet: start over under the same name (old failed labels are kept)
        return maker.make()
    if state.start_iteration >= config.convergence.max_iterations:
        raise CampaignExistsError(
            f"campaign {config.name!r} already ran {state.start_iteration} iteration(s), the max_iterations "
            "of its config; raise convergence.max_iterations to continue"
        )
    logger.info("resuming %s at iteration %d with %d labels", config.name, state.start_iteration,
                len(state.label_ids))
    return maker.make(state.start_iteration, state.label_ids, state.previous_model_ids or None,
                      start_structures=state.start_structures if config.prerelax.enabled else None)


def run_campaign(
    config: CampaignConfig | str | Path | dict,
    settings: AlmatSettings | None = None,
    resume: bool = False,
) -> CampaignResult:
    """Run a campaign to its end with ``jobflow.run_locally``; returns the stored campaign and iterations."""
    start = time.perf_counter()
    cfg = config if isinstance(config, CampaignConfig) else load_config(config)
    settings = settings or get_settings()
    check_connection(settings)
    if cfg.oracle.kind == "ase":
        cfg.oracle.calculator.spec().check()  # a calculator that can't be built fails here, not in a job
    job_store = build_job_store(settings)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        flow = build_flow(cfg, db, resume=resume)
    finally:
        db.close()
    root = Path(settings.run_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=root, log=False)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        raw = db.campaigns.query_one({"name": cfg.name})
        iterations = [IterationDoc.from_store(d) for d in
                      sorted(db.iterations.query({"campaign": cfg.name}), key=lambda d: d["iteration"])]
        campaign = CampaignDoc.from_store(raw) if raw else None
        finished = bool(iterations) and iterations[-1].stop_reason is not None
        if campaign is not None and not finished:
            campaign.status = CampaignStatus.failed
            campaign.stop_reason = "a job failed; see the log, fix, and resume"
            db.upsert("campaigns", [campaign])
    finally:
        db.close()
    if campaign is None or not finished:
        n_ok = sum(1 for r in responses.values() for resp in r.values() if resp is not None)
        raise RuntimeError(
            f"campaign {cfg.name} did not finish ({n_ok} jobs completed); see the log above, then resume it"
        )
    return CampaignResult(campaign, iterations, time.perf_counter() - start)
