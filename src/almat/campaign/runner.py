"""Run a campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jobflow import run_locally

from almat.campaign.config import CampaignConfig, load_config
from almat.campaign.flow import CampaignMaker
from almat.schemas import CampaignDoc, CampaignStatus, IterationDoc
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, build_job_store, check_connection

logger = logging.getLogger(__name__)

__all__ = ["CampaignConvergedError", "CampaignExistsError", "CampaignResult", "ResumeState", "build_flow",
           "load_iterations", "open_store", "refuse_existing", "relaxed_starts", "resume_state", "run_campaign",
           "run_to_end"]


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


def resume_state(db: CampaignDB, name: str, recycle_calibration: bool = False) -> ResumeState:
    """Where a stored campaign stands: next iteration, its ok training labels (not the held-out
    calibration labels), its last committee."""
    from almat.campaign.jobs import previous_calibration_ids

    # held-out calibration labels are never trained on, unless the campaign recycles them
    held_out = set() if recycle_calibration else set(previous_calibration_ids(db, name))
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
    state = resume_state(db, config.name, recycle_calibration=config.convergence.recycle_calibration)
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


def open_store(settings: AlmatSettings, config) -> tuple:
    """Check the server and the oracle before any job runs; the ``JobStore`` and its ``CampaignDB``."""
    check_connection(settings)
    if config.oracle.kind == "ase":
        config.oracle.calculator.spec().check()  # a calculator that can't be built fails here, not in a job
    job_store = build_job_store(settings)
    return job_store, CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()


def refuse_existing(db: CampaignDB, name: str) -> None:
    """Campaigns without resume (pool, NFT) need a new name."""
    existing = db.campaigns.query_one({"name": name})
    if existing is not None:
        raise CampaignExistsError(
            f"campaign {name!r} already exists (status {existing.get('status')}); choose another name"
        )


def run_to_end(flow, name: str, settings: AlmatSettings, job_store,
               load_records: Callable[[CampaignDB, str], list], what: str = "campaign",
               hint: str = "see the log above") -> tuple[CampaignDoc, list]:
    """Run a campaign's flow with ``jobflow.run_locally``; the stored campaign and its per-iteration
    records (``load_records(db, name)``, each with a ``stop_reason``). A campaign whose last record
    has no stop reason did not finish: it is marked failed and a ``RuntimeError`` says so."""
    root = Path(settings.run_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=root, log=False)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        raw = db.campaigns.query_one({"name": name})
        records = load_records(db, name)
        campaign = CampaignDoc.from_store(raw) if raw else None
        finished = bool(records) and records[-1].stop_reason is not None
        if campaign is not None and not finished:
            campaign.status = CampaignStatus.failed
            campaign.stop_reason = f"a job failed; {hint}"
            db.upsert("campaigns", [campaign])
    finally:
        db.close()
    if campaign is None or not finished:
        n_ok = sum(1 for r in responses.values() for resp in r.values() if resp is not None)
        raise RuntimeError(f"{what} {name} did not finish ({n_ok} jobs completed); {hint}")
    return campaign, records


def load_iterations(db: CampaignDB, name: str) -> list[IterationDoc]:
    """The ``IterationDoc``s of an MD campaign, in order."""
    docs = sorted(db.iterations.query({"campaign": name}), key=lambda d: d["iteration"])
    return [IterationDoc.from_store(d) for d in docs]


def run_campaign(
    config: CampaignConfig | str | Path | dict,
    settings: AlmatSettings | None = None,
    resume: bool = False,
) -> CampaignResult:
    """Run a campaign to its end with ``jobflow.run_locally``; returns the stored campaign and iterations."""
    start = time.perf_counter()
    cfg = config if isinstance(config, CampaignConfig) else load_config(config)
    settings = settings or get_settings()
    job_store, db = open_store(settings, cfg)
    try:
        flow = build_flow(cfg, db, resume=resume)
    finally:
        db.close()
    campaign, iterations = run_to_end(flow, cfg.name, settings, job_store, load_iterations,
                                      hint="see the log above, then resume it")
    return CampaignResult(campaign, iterations, time.perf_counter() - start)
