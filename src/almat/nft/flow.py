"""The NFT campaign as one dynamic jobflow Flow.

::

    register -> initial structures (small periodic cells) -> label (one oracle job each)
        -> iteration 0: train committee -> target uncertainty + chunks -> label chunks -> decide
        -> iteration 1 (added by decide with Response(addition=...)) ... until a stop rule holds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker

from almat.nft.config import NftCampaignConfig
from almat.campaign.jobs import initial_structures, label_batch
from almat.nft.jobs import (
    nft_decide,
    nft_label_chunks,
    nft_select_chunks,
    register_nft_campaign,
)

__all__ = ["NftCampaignMaker", "nft_iteration_flow"]


def nft_iteration_flow(
    config: NftCampaignConfig,
    iteration: int,
    label_ids: Any,
    previous_model_ids: list[str] | None = None,
    campaign: Any = None,
    history: list[float] | None = None,
) -> Flow:
    """One train -> target uncertainty + chunks -> label chunks -> decide round.

    ``history``: the max target uncertainty of each earlier iteration (for ``steps_not_improved``).
    ``campaign`` may be a reference to the register job's output name (orders training after it).
    """
    cfg_dict = config.model_dump(mode="json", by_alias=True)
    learner = config.learner
    train = learner.train_job(label_ids, campaign if campaign is not None else config.name, iteration,
                              previous_model_ids)
    select = nft_select_chunks(cfg_dict, iteration, train.output, list(history or []))
    select.name = f"nft chunks it{iteration}"
    label = nft_label_chunks(select.output, cfg_dict, iteration)
    label.name = f"label chunks it{iteration}"
    dec = nft_decide(cfg_dict, iteration, train.output, select.output, label.output, label_ids,
                     list(history or []))
    dec.name = f"nft decide it{iteration}"
    return Flow([train, select, label, dec], output=dec.output, name=f"{config.name} NFT iteration {iteration}")


@dataclass
class NftCampaignMaker(Maker):
    """Build a whole NFT campaign (initial data, then iteration 0, which adds the next) as one Flow."""

    name: str = "nft campaign"
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: NftCampaignConfig) -> "NftCampaignMaker":
        return cls(name=config.name, config=config.model_dump(mode="json", by_alias=True))

    @property
    def campaign_config(self) -> NftCampaignConfig:
        return NftCampaignConfig.model_validate(self.config)

    def make(self) -> Flow:
        cfg = self.campaign_config
        cfg.check_target()  # a target too small for the cutoff fails here, naming the sizes
        cfg_dict = cfg.model_dump(mode="json", by_alias=True)
        register = register_nft_campaign(cfg_dict)
        register.name = "register NFT campaign"
        campaign = register.output["name"]
        init = initial_structures(cfg_dict, campaign)
        init.name = "initial structures"
        label_init = label_batch(init.output, cfg_dict, -1)
        label_init.name = "label initial"
        first = nft_iteration_flow(cfg, 0, label_init.output, campaign=campaign)
        return Flow([register, init, label_init, first], output=first.output, name=f"NFT campaign {cfg.name}")
