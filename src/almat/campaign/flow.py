"""The campaign as one dynamic jobflow Flow.

::

    register -> initial structures -> label (one oracle job each)
        -> iteration 0: train -> explore (per start structure x temperature) -> select -> label -> decide
                        (and, from the explored frames: calibration sample -> label held-out -> decide)
        -> iteration 1 (added by decide with Response(addition=...)) ... until converged
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker

from almat.campaign.config import CampaignConfig
from almat.campaign.jobs import (
    calibration_sample,
    decide,
    initial_structures,
    label_batch,
    register_campaign,
    select_candidates,
)
from almat.sampler.jobs import ExploreMaker

__all__ = ["CampaignMaker", "iteration_flow"]


def iteration_flow(
    config: CampaignConfig,
    iteration: int,
    label_ids: Any,
    previous_model_ids: list[str] | None = None,
    campaign: Any = None,
    start_structures: list | None = None,
) -> Flow:
    """One train -> explore -> select -> label -> decide round.

    ``campaign`` may be a reference to the register job's output name, which makes training wait
    for the campaign to be registered. ``start_structures`` (structures or references to them, e.g.
    the pre-relaxed ones) start the MD; by default the config's structures.
    """
    starts = config.load_structures() if start_structures is None else list(start_structures)
    cfg_dict = config.model_dump(mode="json", by_alias=True)
    learner = config.learner
    train = learner.train_job(label_ids, campaign if campaign is not None else config.name, iteration,
                              previous_model_ids)

    s = config.sampler
    explores = []
    for i_struct, structure in enumerate(starts):
        for temperature in s.temperatures:
            maker = ExploreMaker(
                name=f"explore it{iteration} s{i_struct} {temperature:g}K",
                temperature=temperature,
                steps=s.steps,
                timestep_fs=s.timestep_fs,
                friction_per_fs=s.friction_per_fs,
                sample_every=s.sample_every,
                trust_lo=s.trust_lo,
                trust_hi=s.trust_hi,
                stop_after_failed=s.stop_after_failed,
                min_distance_factor=s.min_distance_factor,
                seed=s.seed + 101 * i_struct + int(temperature),
                device=learner.hyperparameters.device,
            )
            j = maker.make(train.output.model_ids, structure, campaign=config.name, iteration=iteration)
            j.name = maker.name
            explores.append(j)

    explored = [j.output for j in explores]
    select = select_candidates(explored, cfg_dict, iteration, label_ids)
    select.name = f"select it{iteration}"
    label = label_batch(select.output, cfg_dict, iteration)
    label.name = f"label it{iteration}"
    jobs = [train, *explores, select, label]
    calibration_labels = None
    if config.convergence.calibration_samples > 0:
        held_out = calibration_sample(explored, select.output, cfg_dict, iteration, label_ids)
        held_out.name = f"calibration sample it{iteration}"
        label_held_out = label_batch(held_out.output, cfg_dict, iteration, purpose="calibration")
        label_held_out.name = f"label calibration it{iteration}"
        jobs += [held_out, label_held_out]
        calibration_labels = label_held_out.output
    dec = decide(cfg_dict, iteration, train.output, explored, select.output, label.output, label_ids,
                 start_structures=start_structures, calibration_labels=calibration_labels)
    dec.name = f"decide it{iteration}"
    return Flow([*jobs, dec], output=dec.output, name=f"{config.name} iteration {iteration}")


@dataclass
class CampaignMaker(Maker):
    """Build a whole active-learning campaign as one dynamic Flow.

    ``make()`` starts from scratch (initial data, then iteration 0). To continue a campaign that has
    labels and models already, pass ``start_iteration``, ``label_ids``, ``previous_model_ids`` and,
    for a pre-relaxed campaign, ``start_structures`` (``almat.campaign.runner.resume_state`` reads
    them from the store).
    """

    name: str = "campaign"
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: CampaignConfig) -> "CampaignMaker":
        return cls(name=config.name, config=config.model_dump(mode="json", by_alias=True))

    @property
    def campaign_config(self) -> CampaignConfig:
        return CampaignConfig.model_validate(self.config)

    def make(
        self,
        start_iteration: int = 0,
        label_ids: list[str] | None = None,
        previous_model_ids: list[str] | None = None,
        start_structures: list | None = None,
    ) -> Flow:
        cfg = self.campaign_config
        cfg_dict = cfg.model_dump(mode="json", by_alias=True)
        register = register_campaign(cfg_dict, resume=label_ids is not None)
        register.name = "register campaign"
        jobs: list = [register]
        campaign = register.output["name"]
        starts = None
        if cfg.prerelax.enabled and label_ids is None:
            relax_maker = cfg.oracle.relax_maker(cfg.prerelax)
            starts, relax_labels = [], []
            for i, structure in enumerate(cfg.load_structures()):
                if cfg.oracle.kind == "vasp":
                    relax = relax_maker.make(structure, campaign=campaign, iteration=-1)
                    starts.append(relax.output[-1].structure)  # the last ionic step
                    relax_labels.append(relax.output)
                else:
                    relax = relax_maker.make(structure, campaign=campaign, iteration=-1, start_index=i)
                    starts.append(relax.output.structure)
                    relax_labels.append(relax.output.labels)
                relax.name = f"relax s{i}"
                jobs.append(relax)
        elif start_structures:
            starts = list(start_structures)  # e.g. the stored pre-relaxed starts of a resumed campaign
        if label_ids is None:
            init = initial_structures(cfg_dict, campaign, starts)
            init.name = "initial structures"
            label_init = label_batch(init.output, cfg_dict, -1)
            label_init.name = "label initial"
            jobs += [init, label_init]
            label_ids = [label_init.output, *relax_labels] if cfg.prerelax.enabled else label_init.output
        first = iteration_flow(cfg, start_iteration, label_ids, previous_model_ids, campaign=campaign,
                               start_structures=starts)
        jobs.append(first)
        flow = Flow(jobs, output=first.output, name=f"campaign {cfg.name}")
        return flow

