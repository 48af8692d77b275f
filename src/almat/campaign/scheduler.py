"""The stage scheduler of an MD campaign (in the spirit of dpgen2's ``StageScheduler``): after each
iteration, stay in the stage, move to the next one, or stop.

A stage ends when it converges or reaches its own ``max_iterations``; the campaign ends after the last
stage, at the campaign's ``convergence.max_iterations``, or when an iteration of a stage that goes on
learned nothing. The state is the MD explorer's: ``{"starts", "stage", "stage_iteration"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from almat.schemas import CampaignStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStep:
    """What comes after an iteration: the campaign status, why it stops (None: it goes on), the next
    iteration's state, and whether that is a new stage."""

    status: CampaignStatus
    stop_reason: str | None
    state: dict[str, Any]
    next_stage: bool = False


@dataclass(frozen=True)
class StageScheduler:
    """``stage_names``: one per stage (None: unnamed); ``max_iterations``: the campaign's."""

    stage_names: tuple[str | None, ...]
    max_iterations: int

    @classmethod
    def from_config(cls, config: Any) -> StageScheduler:
        return cls(tuple(stage.name for stage in config.sampler.stage_list()), config.convergence.max_iterations)

    def describe(self, stage: int) -> str:
        name = self.stage_names[stage]
        return f"stage {stage}{f' ({name})' if name else ''}"

    def is_last(self, stage: int) -> bool:
        return stage + 1 >= len(self.stage_names)

    def step(self, state: dict[str, Any], iteration: int, converged: bool, reason: str, stage_max_iterations: int,
             stall: str | None = None) -> StageStep:
        """After ``iteration`` of the stage ``state["stage"]`` (its ``state["stage_iteration"]``-th):
        ``converged`` (with its ``reason``) by the stage's rule; ``stall``: why to stop if the stage goes on
        (nothing new was learned and the random guard does not hold the stop back), else None."""
        stage, done = state["stage"], state["stage_iteration"] + 1
        status, stop, following = CampaignStatus.running, None, {**state, "stage_iteration": done}
        what = self.describe(stage)
        if (converged or done >= stage_max_iterations) and not self.is_last(stage):
            following = {**state, "stage": stage + 1, "stage_iteration": 0}
            logger.info("iteration %d: %s %s; next stage", iteration, what, f"converged ({reason})" if converged
                        else f"reached its max_iterations ({stage_max_iterations})")
        elif converged:
            status, stop = CampaignStatus.converged, reason
        elif done >= stage_max_iterations:
            status, stop = CampaignStatus.max_iterations, f"max_iterations ({stage_max_iterations}) reached"
        if status == CampaignStatus.running and iteration + 1 >= self.max_iterations:
            status = CampaignStatus.max_iterations
            stop = f"max_iterations ({self.max_iterations}) of the campaign reached in {what}"
        elif status == CampaignStatus.running and following["stage"] == stage and stall:
            status, stop = CampaignStatus.stopped, stall
        return StageStep(status, stop, following, following["stage"] != stage)

    def resume(self, stage: int, done: int, converged: bool, stage_max_iterations: int) -> tuple[int, int]:
        """``(stage, iterations of it so far)`` for the iteration after a stored one of ``stage`` (the
        ``done``-th of that stage, ``converged`` or not)."""
        if (converged or done >= stage_max_iterations) and not self.is_last(stage):
            return stage + 1, 0
        return stage, done
