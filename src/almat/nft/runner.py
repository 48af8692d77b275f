"""Run an NFT campaign locally (``jobflow.run_locally``) on the store that the settings name."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from almat.campaign.runner import open_store, refuse_existing, run_to_end
from almat.nft.config import NftCampaignConfig, load_nft_config
from almat.nft.documents import NftIterationDoc
from almat.nft.flow import NftCampaignMaker
from almat.schemas import CampaignDoc
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB

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
    start = time.perf_counter()
    cfg = load_nft_config(config)
    settings = settings or get_settings()
    job_store, db = open_store(settings, cfg)
    try:
        refuse_existing(db, cfg.name)
    finally:
        db.close()
    flow = NftCampaignMaker.from_config(cfg).make()
    campaign, iterations = run_to_end(flow, cfg.name, settings, job_store, nft_iterations, what="NFT campaign")
    return NftCampaignResult(campaign, iterations, time.perf_counter() - start)
