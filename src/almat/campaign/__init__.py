"""The campaign: the train -> explore -> select -> label loop as one dynamic jobflow Flow."""

from almat.campaign.config import CampaignConfig, ConfigError, load_config
from almat.campaign.flow import CampaignMaker, iteration_flow
from almat.campaign.runner import CampaignConvergedError, CampaignExistsError, CampaignResult, build_flow, resume_state, run_campaign

__all__ = [
    "CampaignConfig",
    "CampaignConvergedError",
    "CampaignExistsError",
    "CampaignMaker",
    "CampaignResult",
    "ConfigError",
    "build_flow",
    "iteration_flow",
    "load_config",
    "resume_state",
    "run_campaign",
]
