"""The campaign kinds and what each one runs: ``md`` (train → explore with MD → select → label),
``pool`` (a fixed candidate pool, :mod:`almat.pool`) and ``nft`` (nearsighted force training,
:mod:`almat.nft`). A campaign file says its kind with ``kind:`` (default ``md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from almat.campaign.config import ConfigError

__all__ = ["CAMPAIGN_KINDS", "build_any_flow", "campaign_kind", "fresh_flow", "load_campaign_config"]

CAMPAIGN_KINDS = ("md", "pool", "nft")


def campaign_kind(source: Any) -> str:
    """The kind of a campaign config (object), mapping or YAML file; ``md`` when it says none."""
    if hasattr(source, "kind") and not isinstance(source, (str, Path, dict)):
        kind = source.kind
    elif isinstance(source, dict):
        kind = source.get("kind", "md")
    else:
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except yaml.YAMLError:
            data = None  # the loader reports the YAML error
        kind = data.get("kind", "md") if isinstance(data, dict) else "md"
    if kind not in CAMPAIGN_KINDS:
        raise ConfigError(f"{source if isinstance(source, (str, Path)) else 'campaign config'}: kind: {kind!r} is "
                          f"not a campaign kind; valid: {', '.join(CAMPAIGN_KINDS)}")
    return kind


def load_campaign_config(source: Any):
    """The validated config of any kind (``CampaignConfig``, ``PoolCampaignConfig``, ``NftCampaignConfig``)."""
    kind = campaign_kind(source)
    if kind == "pool":
        from almat.pool.config import load_pool_config

        return load_pool_config(source)
    if kind == "nft":
        from almat.nft.config import load_nft_config

        return load_nft_config(source)
    from almat.campaign.config import CampaignConfig, load_config

    return source if isinstance(source, CampaignConfig) else load_config(source)


def fresh_flow(config):
    """The whole campaign as one dynamic Flow, from its start."""
    kind = campaign_kind(config)
    if kind == "pool":
        from almat.pool.flow import PoolCampaignMaker as Maker
    elif kind == "nft":
        from almat.nft.flow import NftCampaignMaker as Maker
    else:
        from almat.campaign.flow import CampaignMaker as Maker
    return Maker.from_config(config).make()


def build_any_flow(config, db, resume: bool = False):
    """Check the name against the store, then the campaign's Flow. MD campaigns can resume; pool and
    NFT campaigns need a new name."""
    from almat.campaign.runner import CampaignExistsError, build_flow, refuse_existing

    kind = campaign_kind(config)
    if kind == "md":
        return build_flow(config, db, resume=resume)
    if resume and db.campaigns.query_one({"name": config.name}) is not None:
        raise CampaignExistsError(f"campaign {config.name!r} is a {kind} campaign: resuming one is not supported "
                                  "yet; choose another name")
    refuse_existing(db, config.name)
    return fresh_flow(config)
