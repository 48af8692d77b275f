"""Run a pool-based campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from jobflow import run_locally

from almat.pool.config import PoolCampaignConfig, load_pool_config
from almat.pool.documents import PoolIterationDoc
from almat.pool.flow import PoolCampaignMaker
from almat.schemas import CampaignDoc, CampaignStatus
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, build_job_store, check_connection

logger = logging.getLogger(__name__)

__all__ = ["PoolCampaignResult", "load_pool_iterations", "run_pool_campaign"]


@dataclass
class PoolCampaignResult:
    campaign: CampaignDoc
    iterations: list[PoolIterationDoc]
    wall_time: float


def load_pool_iterations(db: CampaignDB, campaign: str) -> list[PoolIterationDoc]:
    """The stored records of a pool campaign, by iteration."""
    docs = [PoolIterationDoc.from_store(d) for d in db.pool_iterations.query({"campaign": campaign})]
    return sorted(docs, key=lambda d: d.iteration)


def run_pool_campaign(config: PoolCampaignConfig | str | Path | dict,
                      settings: AlmatSettings | None = None) -> PoolCampaignResult:
    """Run a pool-based campaign to its end with ``jobflow.run_locally``; returns the stored campaign
    and its ``pool_iterations`` records. A campaign name is never reused."""
    from almat.campaign.runner import CampaignExistsError

    start = time.perf_counter()
    cfg = config if isinstance(config, PoolCampaignConfig) else load_pool_config(config)
    settings = settings or get_settings()
    check_connection(settings)
    if cfg.oracle.kind == "ase":
        cfg.oracle.calculator.spec().check()  # a calculator that can't be built fails here, not in a job
    job_store = build_job_store(settings)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
        if existing is not None:
            raise CampaignExistsError(
                f"campaign {cfg.name!r} already exists (status {existing.get('status')}); choose another name"
            )
        if not any(s.query is not None for s in cfg.pool):
            cfg.load_pool()  # an empty pool or an unreadable file fails here, not in a job
    finally:
        db.close()
    flow = PoolCampaignMaker.from_config(cfg).make()
    root = Path(settings.run_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=root, log=False)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        raw = db.campaigns.query_one({"name": cfg.name})
        iterations = load_pool_iterations(db, cfg.name)
        campaign = CampaignDoc.from_store(raw) if raw else None
        finished = bool(iterations) and iterations[-1].stop_reason is not None
        if campaign is not None and not finished:
            campaign.status = CampaignStatus.failed
            campaign.stop_reason = "a job failed; see the log"
            db.upsert("campaigns", [campaign])
    finally:
        db.close()
    if campaign is None or not finished:
        n_ok = sum(1 for r in responses.values() for resp in r.values() if resp is not None)
        raise RuntimeError(f"pool campaign {cfg.name} did not finish ({n_ok} jobs completed); see the log above")
    return PoolCampaignResult(campaign, iterations, time.perf_counter() - start)
