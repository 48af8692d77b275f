"""The campaign: one Maker, built from Makers, whose Flow is the whole loop.

::

    register -> initial data -> iteration 0: train -> explore -> label [+ held-out] -> decide
         -> iteration 1 (added by decide with Response(addition=...)) ... until the explorer's stop rule

Every job declares what it is (``almat.launch`` routes it by that: committee jobs on gpu, oracle jobs
on cpu), whatever its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobflow import Flow, Maker

from almat.campaign.config import AnyCampaignConfig, ConfigError, load_config
from almat.campaign.explorer import Explorer, ResumeState
from almat.campaign.finish import check_finish, train_production
from almat.campaign.jobs import all_jobs, declare_role, decide, label_batch, register
from almat.campaign.kinds import kind_of
from almat.campaign.settings.md import training_learner
from almat.learner.jobs import TrainCommitteeMaker
from almat.oracle.registry import label_maker, md_maker, relax_maker
from almat.stores.ledger import measured


def _explorer(config) -> Explorer:
    """The explorer of the config's kind (``almat.campaign.kinds``), built from the config."""
    return kind_of(config).explorer_class().from_config(config)


@dataclass
class CampaignMaker(Maker):
    """A whole active-learning campaign as one dynamic Flow.

    Its fields are the campaign's actors: ``oracle`` (a Maker whose ``make(structure, campaign, iteration)``
    labels one structure: ``AseOracleMaker``, ``VaspStaticOracleMaker`` around any atomate2 VASP Maker, ...),
    ``trainer`` (the committee's ``TrainCommitteeMaker``), ``explorer`` (what the kind explores),
    ``relax`` (pre-relaxation, optional) and ``oracle_md`` (the oracle's own MD for ``initial.method:
    oracle-md``); ``config`` holds the rest of the settings; ``routing`` (job role ->
    FireWorks category, set by ``almat submit``) routes every job it makes. Build one from a
    campaign file with :meth:`from_config`, replace an actor from Python, or change a built flow with
    ``flow.update_maker_kwargs(...)``: the jobs added later are built by the updated Maker.
    """

    name: str = "campaign"
    config: AnyCampaignConfig | None = None
    oracle: Maker | None = None
    trainer: TrainCommitteeMaker | None = None
    explorer: Explorer | None = None
    relax: Maker | None = None
    oracle_md: Maker | None = None
    routing: dict[str, str] | None = None

    @classmethod
    def from_config(cls, config: Any, **actors: Any) -> "CampaignMaker":
        """The campaign of a config (object, dict or YAML path); ``actors`` replace the built ones."""
        cfg = load_config(config)
        built = {"oracle": label_maker(cfg.oracle), "explorer": _explorer(cfg),
                 "trainer": TrainCommitteeMaker.from_settings(training_learner(cfg), cfg.base_dir)}
        if getattr(cfg, "prerelax", None) is not None and cfg.prerelax.enabled:
            built["relax"] = relax_maker(cfg.oracle, cfg.prerelax)
        if getattr(getattr(cfg, "initial", None), "method", None) == "oracle-md":
            if cfg.kind != "md":
                raise ConfigError(f"initial.method: oracle-md is for MD campaigns; a {cfg.kind} campaign "
                                  "starts from rattled copies (method: rattle)")
            built["oracle_md"] = md_maker(cfg.oracle, cfg.initial)
        try:
            check_finish(cfg.finish)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        maker = cls(name=cfg.name, config=cfg, **{**built, **actors})
        # a foundation file that is missing, not a model or without one of the campaign's elements is
        # refused here, before any job runs
        check = getattr(maker.trainer, "check_elements", None)
        if check is not None:
            try:
                check(maker.explorer.elements(cfg))
            except ValueError as exc:
                raise ConfigError(f"learner: {exc}") from None
        return maker

    def __post_init__(self) -> None:
        if self.config is None:
            raise ConfigError("a CampaignMaker needs a config: use CampaignMaker.from_config(...)")
        for actor in ("oracle", "trainer", "relax", "oracle_md"):
            value = getattr(self, actor)
            if value is not None and not isinstance(value, Maker):
                raise ConfigError(f"{actor}: {type(value).__name__} is not a jobflow Maker")
        if self.oracle is None or not callable(getattr(self.oracle, "make", None)):
            raise ConfigError("oracle: a Maker whose make(structure, campaign, iteration) labels a structure is needed")
        explorer = kind_of(self.config).explorer_class()
        if not isinstance(self.explorer, explorer):
            raise ConfigError(f"explorer: a {self.config.kind} campaign needs a {explorer.__name__}")
        self.explorer.check(self.config)

    # the oracle's name and settings fingerprint, as labels record them
    @property
    def oracle_name(self) -> str:
        return getattr(self.oracle, "oracle_name", type(self.oracle).__name__)

    @property
    def oracle_fingerprint(self) -> str:
        return getattr(self.oracle, "fingerprint", "")

    def declare(self, job, role: str, iteration: int | None = None):
        """Declare a job's role (and route it, when the campaign has a routing); its ledger entries name the
        campaign (and ``iteration``: ``make`` and ``iteration_flow`` set it on all their jobs)."""
        return declare_role(job, role, self.routing, self.config.name, iteration)

    @property
    def campaign_ref(self) -> Any:
        return self._campaign_ref if hasattr(self, "_campaign_ref") else self.config.name

    def make(self, resume: ResumeState | bool | None = None) -> Flow:
        """The whole campaign from its start, or, with a ``ResumeState``, from its next iteration
        (``resume=True`` reruns the start of a campaign that has no iteration yet: what is labelled is reused)."""
        reg = register(self, resume=bool(resume))
        reg.name = "register campaign"
        self.declare(reg, "register", -1)
        self._campaign_ref = reg.output["name"]
        try:
            if isinstance(resume, ResumeState):
                first = self.iteration_flow(resume.start_iteration, resume.label_ids, resume.previous_model_ids,
                                            resume.state)
                return Flow([reg, first], output=first.output, name=f"campaign {self.name}")
            jobs, label_ids, state = self.explorer.initial(self, reg.output["setup"])
            for j in (j for x in jobs for j in all_jobs(x)):  # before iteration 0 in the ledger
                measured(j, self.config.name, -1)
            first = self.iteration_flow(0, label_ids, None, state)
            return Flow([reg, *jobs, first], output=first.output, name=f"campaign {self.name}")
        finally:
            del self._campaign_ref

    def iteration_flow(self, iteration: int, label_ids: Any, previous_model_ids: list[str] | None = None,
                       state: Any = None) -> Flow:
        """One train -> explore -> label [+ held-out] -> decide round; arguments may be references."""
        campaign = self.campaign_ref
        train = self.trainer.make(label_ids, campaign=campaign, iteration=iteration,
                                  previous_model_ids=previous_model_ids)
        train.name = f"train it{iteration}"
        self.declare(train, "train")
        explore_jobs, exploration = self.explorer.explore(self, iteration, train.output, label_ids, state)
        label = self.label(exploration.candidates, iteration, force_weights=exploration.force_weights)
        held = [self.label(exploration.held_out, iteration, "calibration")] if self.explorer.held_out_each_iteration else []
        dec = decide(self, iteration, train.output, exploration, label.output, held[0].output if held else None,
                     label_ids, state)
        dec.name = f"decide it{iteration}"
        self.declare(dec, "decide")
        flow = Flow([train, *explore_jobs, label, *held, dec], output=dec.output,
                    name=f"{self.config.name} iteration {iteration}")
        for j in all_jobs(flow):
            measured(j, self.config.name, iteration)
        return flow

    def finish_job(self):
        """The production-model job (``finish:``) when the campaign has one, else None; routed as training."""
        if self.config.finish is None:
            return None
        job = train_production(self.config, self.campaign_ref)
        job.name = "production model"
        return self.declare(job, "train")

    def label(self, structures: Any, iteration: int, purpose: str = "", force_weights: Any = None):
        """The job that labels ``structures`` (a reference) with the oracle, one oracle job each."""
        job = label_batch(structures, self.oracle, self.config.name, iteration, purpose, force_weights, self.routing)
        job.name = " ".join(["label", *([purpose] if purpose else []), *([f"it{iteration}"] if iteration >= 0 else [])])
        return self.declare(job, "label")
