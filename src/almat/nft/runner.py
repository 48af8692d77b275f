"""Run an NFT campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from jobflow import run_locally

from almat.nft.config import NftCampaignConfig, load_nft_config
from almat.nft.documents import NftIterationDoc
from almat.nft.flow import NftCampaignMaker
from almat.schemas import CampaignDoc, CampaignStatus
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, build_job_store, check_connection

logger = logging.getLogger(__name__)

__all__ = ["NftCampaignResult", "nft_iterations", "run_nft_campaign"]


@dataclass
class NftCampaignResult:
    campaign: CampaignDoc
    iterations: list[NftIterationDoc]
    wall_time: float

    @property
    def stop(self) -> str | None:
        return self.iterations[-1].stop if self.iterations else None


def nft_iterations(db: CampaignDB, name: str) -> list[NftIterationDoc]:
    """The stored ``NftIterationDoc``s of a campaign, in order."""
    docs = sorted(db.nft_iterations.query({"campaign": name}), key=lambda d: d["iteration"])
    return [NftIterationDoc.from_store(d) for d in docs]


def run_nft_campaign(
    config: NftCampaignConfig | str | Path | dict,
    settings: AlmatSettings | None = None,
) -> NftCampaignResult:
    """Run an NFT campaign to its end with ``jobflow.run_locally``; returns the stored campaign and
    its ``nft_iterations`` records. A campaign name can't be reused (no resume for NFT campaigns yet)."""
    from almat.campaign.runner import CampaignExistsError

    start = time.perf_counter()
    cfg = load_nft_config(config)
    settings = settings or get_settings()
    check_connection(settings)
    cfg.oracle.calculator.spec().check()  # a calculator that can't be built fails here, not in a job
    job_store = build_job_store(settings)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
    finally:
        db.close()
    if existing is not None:
        raise CampaignExistsError(
            f"campaign {cfg.name!r} already exists (status {existing.get('status')}); choose another name"
        )
    flow = NftCampaignMaker.from_config(cfg).make()
    root = Path(settings.run_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=root, log=False)
    db = CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()
    try:
        raw = db.campaigns.query_one({"name": cfg.name})
        iterations = nft_iterations(db, cfg.name)
        campaign = CampaignDoc.from_store(raw) if raw else None
        finished = bool(iterations) and iterations[-1].stop is not None
        if campaign is not None and not finished:
            campaign.status = CampaignStatus.failed
            campaign.stop_reason = "a job failed; see the log"
            db.upsert("campaigns", [campaign])
    finally:
        db.close()
    if campaign is None or not finished:
        n_ok = sum(1 for r in responses.values() for resp in r.values() if resp is not None)
        raise RuntimeError(f"NFT campaign {cfg.name} did not finish ({n_ok} jobs completed); see the log above")
    return NftCampaignResult(campaign, iterations, time.perf_counter() - start)
