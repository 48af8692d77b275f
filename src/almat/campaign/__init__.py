"""The campaign: register -> initial data -> (train -> explore -> label -> decide)* as one dynamic jobflow
Flow, for every kind (MD, pool, NFT); see ``docs/architecture.md``.

``almat.campaign.config`` validates a campaign file without torch; the loop's names (which need the
learner) are imported on first use."""

from importlib import import_module

from almat.campaign.config import CampaignConfig, ConfigError, load_config

_LAZY = {"CampaignMaker": "flow", "CampaignConvergedError": "runner", "CampaignExistsError": "runner",
         "CampaignResult": "runner", "run_campaign": "runner", "build_flow": "runner", "resume_state": "runner"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"almat.campaign.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'almat.campaign' has no attribute {name!r}")
