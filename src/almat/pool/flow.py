"""A pool-based campaign as one dynamic jobflow Flow.

::

    setup (store the pool, split it) -> label held-out part
        -> iteration 0: label the n_init random picks -> train committee -> score + decide + acquire
        -> iteration 1 (added by the step with Response(addition=...)): label the batch -> train -> step
        ... until a stopping rule fires
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker

from almat.pool.config import PoolCampaignConfig
from almat.pool.jobs import label_pool, pool_step, setup_pool

__all__ = ["PoolCampaignMaker", "pool_iteration_flow"]


def pool_iteration_flow(
    config: PoolCampaignConfig,
    iteration: int,
    state: Any,
    new_indices: Any,
    previous_label_ids: Any,
    previous_model_ids: list[str] | None,
    test_labels: Any,
    campaign: Any = None,
) -> Flow:
    """One label -> train -> score/acquire/decide round. Arguments may be references (iteration 0)."""
    cfg_dict = config.model_dump(mode="json", by_alias=True)
    label = label_pool(new_indices, cfg_dict, -1 if iteration == 0 else iteration, campaign)
    label.name = f"label pool it{iteration}"
    learner = config.learner
    train = learner.train_job([previous_label_ids, label.output], config.name, iteration, previous_model_ids)
    step = pool_step(cfg_dict, iteration, state, new_indices, label.output, previous_label_ids, train.output,
                     test_labels)
    step.name = f"pool step it{iteration}"
    return Flow([label, train, step], output=step.output, name=f"{config.name} iteration {iteration}")


@dataclass
class PoolCampaignMaker(Maker):
    """Build a whole pool-based campaign as one dynamic Flow (see the module doc)."""

    name: str = "pool campaign"
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: PoolCampaignConfig) -> "PoolCampaignMaker":
        return cls(name=config.name, config=config.model_dump(mode="json", by_alias=True))

    @property
    def campaign_config(self) -> PoolCampaignConfig:
        return PoolCampaignConfig.model_validate(self.config)

    def make(self) -> Flow:
        cfg = self.campaign_config
        cfg_dict = cfg.model_dump(mode="json", by_alias=True)
        setup = setup_pool(cfg_dict)
        setup.name = "setup pool"
        state = setup.output["state"]
        label_test = label_pool(state["test_indices"], cfg_dict, -1, setup.output["name"])
        label_test.name = "label held-out"
        first = pool_iteration_flow(cfg, 0, state, state["init"], [], None, label_test.output,
                                    campaign=setup.output["name"])
        return Flow([setup, label_test, first], output=first.output, name=f"pool campaign {cfg.name}")
