"""Run a pool-based campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from almat.campaign.runner import open_store, refuse_existing, run_to_end
from almat.pool.config import PoolCampaignConfig, load_pool_config
from almat.pool.documents import PoolIterationDoc
from almat.pool.flow import PoolCampaignMaker
from almat.schemas import CampaignDoc
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB

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
    start = time.perf_counter()
    cfg = config if isinstance(config, PoolCampaignConfig) else load_pool_config(config)
    settings = settings or get_settings()
    job_store, db = open_store(settings, cfg)
    try:
        refuse_existing(db, cfg.name)
        if not any(s.query is not None for s in cfg.pool):
            cfg.load_pool()  # an empty pool or an unreadable file fails here, not in a job
    finally:
        db.close()
    flow = PoolCampaignMaker.from_config(cfg).make()
    campaign, iterations = run_to_end(flow, cfg.name, settings, job_store, load_pool_iterations,
                                      what="pool campaign")
    return PoolCampaignResult(campaign, iterations, time.perf_counter() - start)
