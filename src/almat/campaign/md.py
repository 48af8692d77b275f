"""The MD explorer (``kind: md``): committee MD in stages (``sampler.stages``, or one stage from the
sampler's own settings). Each iteration explores the current stage with one job per
``max_walkers_per_job`` walkers (system x temperature x pressure x seed, advanced together); the frames
within each walker's trust levels (the lower one adaptive if asked) are the candidates, selected by a
policy; a stratified sample of the explored frames is held out to calibrate the committee. When a stage
converges (the calibrated rule, or DP-GEN's accurate ratio, with the stage's own settings) or reaches its
``max_iterations``, the campaign moves to the next stage; it ends after the last one, or at the campaign's
``convergence.max_iterations``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from pydantic import Field

from almat.campaign.config import (
    ConfigError,
    ConvergenceSettings,
    SamplerSettings,
    SelectionSettings,
    StageSettings,
    SystemSettings,
)
from almat.campaign.convergence import apply_patience, get_rule
from almat.campaign.exploration import DEVIATION_BINS, ExplorationReport  # noqa: F401 - DEVIATION_BINS: re-export
from almat.campaign.explorer import Decision, Exploration, Explorer
from almat.campaign.jobs import initial_structures, ok_ids, test_errors
from almat.campaign.scheduler import StageScheduler
from almat.campaign.settings.md import SINGLE_MODEL_UNCERTAINTY
from almat.learner.committee import Committee
from almat.learner.jobs import load_labels
from almat.sampler.jobs import CandidateFrame, ExploreDoc, ExploreWalkersMaker
from almat.sampler.md import decode_trajectory
from almat.schemas import CalibrationDoc, IterationDoc, StructureDoc, StructureSource, structure_hash, to_structure
from almat.select.fps import SelectionContext, build_selection_context, call_policy, policy_needs_descriptors
from almat.select.guard import RandomGuard
from almat.select.policies import get_policy
from almat.select.trust import adaptive_lo, classify
from almat.stores import CampaignDB, get_blob, require_db, store_job
from almat.uncertainty.calibration import calibrate, committee_errors, convergence_check, stratified_sample

logger = logging.getLogger(__name__)


def explore_maker(sampler: SamplerSettings, device: str = "cpu") -> ExploreWalkersMaker:
    """The template of the campaign's MD jobs (each advances many walkers together)."""
    return ExploreWalkersMaker(stop_after_failed=sampler.stop_after_failed,
                               min_distance_factor=sampler.min_distance_factor,
                               max_volume_factor=sampler.max_volume_factor, device=device, drive=sampler.drive)


def stage_walkers(sampler: SamplerSettings, stage_index: int, starts: list, iteration: int,
                  stage: StageSettings | None = None) -> list[dict]:
    """The walkers of a stage (``WalkerSpec`` dicts; ``starts`` may be references): each system x
    temperature x pressure x ``walkers_per_condition``, each with its own seed. ``stage``: the stage with
    its trust levels in raw units (``effective_stage``; default: the sampler's stage as it is)."""
    stage = stage or sampler.stage_list()[stage_index]
    systems = stage.systems or [SystemSettings(structures=list(range(len(starts))))]
    md = {k: getattr(stage, k) for k in ("ensemble", "steps", "timestep_fs", "friction_per_fs", "thermostat_time_fs",
                                         "barostat_time_fs", "sample_every")}
    lo_hi = {}
    walkers = []
    for i_sys, system in enumerate(systems):
        trust = stage.trust(system)
        lo_hi = {"trust_lo": trust.lo, "trust_hi": trust.hi}
        entries = ([(f"{system.name or 's'}{i}", {"structure": starts[i]}) for i in system.structures]
                   if system.structures is not None else
                   [(system.name or f"q{i_sys}", {"query": system.query.model_dump()})])
        for i_entry, (name, source) in enumerate(entries):
            for i_t, temperature in enumerate(stage.temperatures):
                for i_p, pressure in enumerate(stage.pressures_bar()):
                    for rep in range(stage.walkers_per_condition):
                        seq = np.random.SeedSequence([sampler.seed, iteration, stage_index, i_sys, i_entry, i_t, i_p, rep])
                        walkers.append({"system": name, **source, **md, **lo_hi, "temperature": temperature,
                                        "pressure_bar": pressure, "seed": int(seq.generate_state(1)[0] % 2**31)})
    return walkers


def _stage_state(state: Any) -> dict:
    """The explorer's state: ``starts`` (pre-relaxed start structures or None), ``stage`` (index) and
    ``stage_iteration`` (iterations of that stage so far); a plain list (or None) is the start of stage 0."""
    if isinstance(state, dict) and "stage" in state:
        return state
    return {"starts": state, "stage": 0, "stage_iteration": 0}


def effective_stage(config, state: Any) -> StageSettings:
    """The current stage of ``state`` as the explorer uses it (``StageSettings.resolved``): trust levels in
    raw units by the latest calibration factor in ``state["trust_factor"]``, the default adaptive lo."""
    st = _stage_state(state)
    stage = config.sampler.stage_list()[st["stage"]]
    return stage.resolved(st.get("trust_factor"), config.learner.uncertainty in SINGLE_MODEL_UNCERTAINTY)


def stage_convergence(config, stage: StageSettings) -> ConvergenceSettings:
    """The campaign's convergence settings with the stage's overrides."""
    return ConvergenceSettings.model_validate({**config.convergence.model_dump(), **stage.convergence})


def _frame_structure(traj: dict, i: int):
    return to_structure(Atoms(traj["symbols"], positions=traj["positions"][i], cell=traj["cells"][i],
                              pbc=traj.get("pbc", True)))


def _flatten(explored) -> list[ExploreDoc]:
    out = []
    for item in explored:
        if isinstance(item, (list, tuple)):
            out += _flatten(item)
        else:
            out.append(item if isinstance(item, ExploreDoc) else ExploreDoc.model_validate(item))
    return out


def calibration_frames(db: CampaignDB, explored: list[ExploreDoc], selected: list[StructureDoc], n: int,
                       rng: np.random.Generator, trained: set[str], trajs: dict | None = None
                       ) -> list[tuple[ExploreDoc, dict, int]]:
    """``n`` held-out explored frames, stratified over the whole range of model deviation (so the
    low-uncertainty frames are sampled too); frames beyond ``trust_hi``, the selected frames and frames
    equal to a training label (``trained`` structure hashes, e.g. the start at step 0) are left out."""
    taken = {(d.metadata.get("trajectory_blob_id"), d.metadata.get("step")) for d in selected}
    frames, deviation, eligible = [], [], []
    for doc in explored:
        if not doc.trajectory_blob_id:
            continue
        traj = (trajs or {}).get(doc.trajectory_blob_id) or decode_trajectory(get_blob(db.data, doc.trajectory_blob_id))
        for i, step in enumerate(traj["steps"]):
            frames.append((doc, traj, i))
            deviation.append(traj["model_deviation"][i])
            eligible.append(traj["frame_class"][i] != "failed" and (doc.trajectory_blob_id, step) not in taken)
    picks = stratified_sample(deviation, n, rng, eligible)
    while clash := [k for k in picks if structure_hash(_frame_structure(*frames[k][1:])) in trained]:
        for k in clash:  # rare: step 0 is a start structure
            eligible[k] = False
        picks = stratified_sample(deviation, n, rng, eligible)
    return [frames[k] for k in picks]


class MdExploration(Exploration):
    """What the MD explored: each trajectory's summary (``ExploreDoc`` without its candidates)."""

    explored: list[ExploreDoc] = Field(default_factory=list)
    n_candidates: int = 0
    trust_lo: float | None = Field(None, description="the lower trust level chosen (adaptive_lo), else None")
    stage: int = 0
    stage_name: str | None = None
    n_guard: int = Field(0, description="of the candidates, random explored frames picked by the guard")
    guard_reason: str | None = None


def quiet_iterations(db: CampaignDB, campaign: str, iteration: int, n_selected: int) -> int:
    """Iterations in a row up to this one (``n_selected`` candidates selected now) that selected no candidate."""
    before = sorted(db.iterations.query({"campaign": campaign, "iteration": {"$lt": iteration}},
                                        properties=["iteration", "n_selected"]), key=lambda d: d["iteration"])
    return RandomGuard.quiet_iterations([int(d.get("n_selected") or 0) for d in before], n_selected)


def latest_calibration(db: CampaignDB, campaign: str, before: int | None = None
                       ) -> tuple[int, CalibrationDoc] | None:
    """``(iteration, calibration)`` of the campaign's latest calibrated iteration (before ``before``)."""
    query: dict[str, Any] = {"campaign": campaign}
    if before is not None:
        query["iteration"] = {"$lt": before}
    records = [d for d in db.iterations.query(query, properties=["iteration", "calibration"]) if d.get("calibration")]
    if not records:
        return None
    last = max(records, key=lambda d: d["iteration"])
    return int(last["iteration"]), CalibrationDoc.model_validate(last["calibration"])


def calibrated_error_above(db: CampaignDB, campaign: str, iteration: int, deviations, conv: ConvergenceSettings
                           ) -> tuple[bool | None, str]:
    """Whether the explored frames' calibrated error is above the tolerance by the latest calibration of the
    campaign (before ``iteration``; the point share, whatever the rule): (None, why) without one."""
    latest = latest_calibration(db, campaign, before=iteration)
    if latest is None:
        return None, "no calibration yet"
    check = convergence_check(deviations, latest[1], conv.force_tolerance, conv.conv_accuracy, bound=conv.bound)
    return not check.stop, f"calibration of iteration {latest[0]}: {check.reason}"


def earlier_passes(db: CampaignDB, campaign: str, iteration: int, stage: int) -> list[bool]:
    """Whether the stop rule passed in each earlier iteration of ``stage``, oldest first (``rule_passed``;
    records from before it: ``converged``)."""
    records = db.iterations.query({"campaign": campaign, "iteration": {"$lt": iteration}, "stage": stage},
                                  properties=["iteration", "rule_passed", "converged"])
    ordered = sorted(records, key=lambda d: d["iteration"])
    return [bool(d["rule_passed"] if d.get("rule_passed") is not None else d.get("converged")) for d in ordered]


def guard_frames(explored: list[ExploreDoc], trajs: dict, guard: RandomGuard, rng: np.random.Generator,
                 trained: set[str]) -> list[CandidateFrame]:
    """``guard.samples`` random explored frames (not beyond ``trust_hi``, none equal to a training label)."""
    frames = [(doc, i) for doc in explored if doc.trajectory_blob_id in trajs
              for i in range(len(trajs[doc.trajectory_blob_id]["steps"]))]
    eligible = [trajs[d.trajectory_blob_id]["frame_class"][i] != "failed" for d, i in frames]
    picks = guard.pick(eligible, rng)
    while clash := [k for k in picks if structure_hash(_frame_structure(trajs[frames[k][0].trajectory_blob_id],
                                                                        frames[k][1])) in trained]:
        for k in clash:  # rare: step 0 is a start structure
            eligible[k] = False
        picks = guard.pick(eligible, rng)
    out = []
    for k in picks:
        doc, i = frames[k]
        traj = trajs[doc.trajectory_blob_id]
        out.append(CandidateFrame(structure=_frame_structure(traj, i), step=traj["steps"][i],
                                  model_deviation=traj["model_deviation"][i],
                                  energy_deviation=doc.energy_deviation[i], temperature=traj["temperature"][i],
                                  trajectory_blob_id=doc.trajectory_blob_id, parent=doc.start_structure_hash))
    return out


def find_candidates(explored: list[ExploreDoc], trajs: dict, adaptive=None) -> tuple[list[CandidateFrame], float | None]:
    """The candidate frames of every walker (within its trust levels; with ``adaptive`` (``AdaptiveTrust``)
    one lower level for all, chosen over all frames) and that chosen level. Each doc's ``counts`` are
    set to the classes with the level in force."""
    lo = None
    if adaptive is not None:
        devs = [x for d in explored for x in d.model_deviation]
        his = [d.trust_hi for d in explored for _ in d.model_deviation]
        lo = adaptive_lo(devs, his, adaptive.number, adaptive.fraction, adaptive.lo_min, adaptive.lo_max)
    candidates = []
    for doc in explored:
        if doc.trust_hi is None:  # a doc of the single-walker ExploreMaker: its candidates are in it
            candidates += doc.candidates
            continue
        classes = classify(doc.model_deviation, doc.trust_lo if lo is None else lo, doc.trust_hi)
        doc.counts = {k: classes.count(k) for k in ("accurate", "candidate", "failed")}
        if "candidate" not in classes:
            continue
        traj = trajs[doc.trajectory_blob_id]
        candidates += [CandidateFrame(structure=_frame_structure(traj, i), step=traj["steps"][i],
                                      model_deviation=doc.model_deviation[i], energy_deviation=doc.energy_deviation[i],
                                      temperature=traj["temperature"][i], trajectory_blob_id=doc.trajectory_blob_id,
                                      parent=doc.start_structure_hash)
                       for i, k in enumerate(classes) if k == "candidate"]
    return candidates, lo


def _selected_doc(c: CandidateFrame, campaign: str, iteration: int, policy: str) -> StructureDoc:
    return StructureDoc(
        structure=c.structure, source=StructureSource.md, campaign=campaign, iteration=iteration, parent=c.parent,
        metadata={"model_deviation": c.model_deviation, "energy_deviation": c.energy_deviation,
                  "temperature": c.temperature, "step": c.step, "trajectory_blob_id": c.trajectory_blob_id,
                  "policy": policy})


def _pick(db: CampaignDB, selection: SelectionSettings, policy, candidates: list[CandidateFrame],
          explored: list[ExploreDoc], label_ids: list, iteration: int) -> list[int]:
    """The candidates the policy selects (policies that look at descriptors get them from the committee)."""
    if not candidates:
        return []
    context = SelectionContext(iteration=iteration)
    if policy_needs_descriptors(policy, iteration):
        committee = Committee.from_store(db, next((d.model_ids for d in explored if d.model_ids), []))
        training = [lab.to_atoms() for lab in load_labels(db, label_ids)]
        context = build_selection_context(candidates, committee, training, iteration)
    return call_policy(policy, candidates, selection.max_select, np.random.default_rng(selection.seed + iteration),
                       context)


def _guard(db: CampaignDB, campaign: str, iteration: int, explored: list[ExploreDoc], trajs: dict, trained: set[str],
           convergence: ConvergenceSettings, seed: int) -> tuple[list[StructureDoc], str | None]:
    """The random guard's frames and why it fired (none and None when it does not)."""
    guard = RandomGuard(convergence.guard_patience, convergence.guard_samples)
    quiet = quiet_iterations(db, campaign, iteration, 0)
    deviations = [x for d in explored for x in d.model_deviation]
    above, why = calibrated_error_above(db, campaign, iteration, deviations, convergence)
    if not guard.fires(quiet, above):
        return [], None
    frames = guard_frames(explored, trajs, guard, np.random.default_rng(seed + 104729 * (iteration + 1)), trained)
    reason = (f"no candidate selected for {quiet} iteration(s) while the calibrated error is "
              f"{'not known' if above is None else 'above tolerance'} ({why}): "
              f"{len(frames)} random explored frame(s) labelled")
    logger.warning("iteration %d: random guard: %s", iteration, reason)
    return [_selected_doc(c, campaign, iteration, "guard-random") for c in frames], reason


def _held_out(db: CampaignDB, campaign: str, iteration: int, explored: list[ExploreDoc], selected: list[StructureDoc],
              n: int, seed: int, trained: set[str], trajs: dict) -> list[StructureDoc]:
    """``n`` held-out calibration frames (see ``calibration_frames``), none equal to a selected one."""
    trained = trained | {d.structure_hash for d in selected}
    rng = np.random.default_rng(seed + 7919 * (iteration + 1))
    return [StructureDoc(
        structure=_frame_structure(traj, i), source=StructureSource.md, campaign=campaign,
        iteration=iteration, parent=doc.start_structure_hash,
        metadata={"role": "calibration", "model_deviation": traj["model_deviation"][i],
                  "temperature": traj["temperature"][i], "step": traj["steps"][i],
                  "trajectory_blob_id": doc.trajectory_blob_id})
        for doc, traj, i in calibration_frames(db, explored, selected, n, rng, trained, trajs)]


@store_job(output_schema=MdExploration)
def select_md(explorer: "MdExplorer", campaign: str, iteration: int, explored: list, label_ids: list,
              calibration_samples: int, calibration_seed: int, stage: StageSettings | None = None,
              stage_index: int = 0, convergence: ConvergenceSettings | None = None) -> MdExploration:
    """Find the candidates of every walker (see ``find_candidates``), pick at most ``max_select`` with the
    selection policy (policies that look at descriptors get them from the committee), and the held-out
    calibration frames. With ``convergence`` (the stage's), the random guard (``almat.select.guard``) adds
    random explored frames when no candidate was selected for ``guard_patience`` iterations while the
    calibrated error is above the tolerance."""
    sel = explorer.selection
    explored = _flatten(explored)
    policy = get_policy(sel.policy, **sel.options)
    held_out, n_guard, guard_reason = [], 0, None
    db = require_db()
    try:
        trajs = {d.trajectory_blob_id: decode_trajectory(get_blob(db.data, d.trajectory_blob_id))
                 for d in explored if d.trajectory_blob_id and d.trust_hi is not None}
        candidates, lo = find_candidates(explored, trajs, stage.adaptive_lo if stage is not None else None)
        if lo is not None:
            logger.info("iteration %d: adaptive lower trust level %.4f eV/Å", iteration, lo)
        picks = _pick(db, sel, policy, candidates, explored, label_ids, iteration)
        selected = [_selected_doc(candidates[i], campaign, iteration, policy.name) for i in picks]
        trained = {d["structure_hash"] for d in db.labels.query(
            {"label_id": {"$in": ok_ids(label_ids)}}, properties=["structure_hash"])}
        if convergence is not None and not selected and trajs:
            guarded, guard_reason = _guard(db, campaign, iteration, explored, trajs, trained, convergence, sel.seed)
            selected, n_guard = selected + guarded, len(guarded)
        if calibration_samples and explored:
            held_out = _held_out(db, campaign, iteration, explored, selected, calibration_samples, calibration_seed,
                                 trained, trajs)
        db.upsert("structures", selected + held_out)
    finally:
        db.close()
    logger.info("iteration %d: selected %d of %d candidates (%s); %d held-out calibration frames", iteration,
                len(selected), len(candidates), policy.name, len(held_out))
    return MdExploration(campaign=campaign, iteration=iteration, candidates=selected, held_out=held_out,
                         explored=[d.model_copy(update={"candidates": []}) for d in explored],
                         n_candidates=len(candidates), trust_lo=lo, stage=stage_index,
                         stage_name=None if stage is None else stage.name, n_guard=n_guard, guard_reason=guard_reason)


def previous_calibration_ids(db: CampaignDB, campaign: str, before: int | None = None) -> list[str]:
    """Label ids of the held-out calibration frames of a campaign's iterations (before ``before``)."""
    query: dict[str, Any] = {"campaign": campaign}
    if before is not None:
        query["iteration"] = {"$lt": before}
    ids = [i for d in db.iterations.query(query, properties=["calibration_label_ids"])
           for i in d.get("calibration_label_ids") or []]
    return list(dict.fromkeys(ids))


def relaxed_starts(db: CampaignDB, name: str) -> list:
    """The pre-relaxed start structures of a campaign, in the order of its config."""
    docs = [StructureDoc.from_store(d) for d in db.structures.query({"campaign": name, "source": "relaxed"})]
    return [d.structure for d in sorted((d for d in docs if d.metadata.get("start_index") is not None),
                                        key=lambda d: d.metadata["start_index"])]


@dataclass
class MdExplorer(Explorer):
    """Committee MD of the current stage's walkers (``explore_maker``, an ``ExploreWalkersMaker`` template),
    then a selection policy (``selection``) and held-out calibration frames."""

    kind = "md"
    records = "iterations"
    record_class = IterationDoc
    exploration_class = MdExploration
    held_out_each_iteration = True

    explore_maker: ExploreWalkersMaker = field(default_factory=ExploreWalkersMaker)
    selection: SelectionSettings = field(default_factory=SelectionSettings)

    @classmethod
    def from_config(cls, config) -> "MdExplorer":
        return cls(explore_maker(config.sampler, config.learner.hyperparameters.device), config.selection)

    def initial(self, maker, setup):
        cfg, campaign = maker.config, maker.campaign_ref
        jobs, starts, relax_labels = [], None, []
        if cfg.prerelax.enabled and maker.relax is not None:
            starts = []
            for i, structure in enumerate(cfg.load_structures()):
                relax = (maker.relax.make(structure, campaign=cfg.name, iteration=-1) if cfg.oracle.kind == "vasp"
                         else maker.relax.make(structure, campaign=cfg.name, iteration=-1, start_index=i))
                relax.name = f"relax s{i}"
                maker.declare(relax, "oracle")
                if cfg.oracle.kind == "vasp":
                    starts.append(relax.output[-1].structure)  # the last ionic step
                    relax_labels.append(relax.output)
                else:
                    starts.append(relax.output.structure)
                    relax_labels.append(relax.output.labels)
                jobs.append(relax)
        if cfg.initial.method == "oracle-md":
            md_jobs = self._oracle_md(maker, starts if starts is not None else cfg.load_structures())
            return [*jobs, *md_jobs], [*(j.output for j in md_jobs), *relax_labels], starts
        init = initial_structures(cfg, campaign, starts)
        init.name = "initial structures"
        label = maker.label(init.output, -1, "initial")
        return [*jobs, maker.declare(init, "initial"), label], [label.output, *relax_labels], starts

    @staticmethod
    def _oracle_md(maker, starts: list) -> list:
        """One oracle-MD job per start structure (``initial.method: oracle-md``): its frames come labelled."""
        jobs = []
        for i, structure in enumerate(starts):
            job = maker.oracle_md.make(structure, campaign=maker.campaign_ref, iteration=-1, start_index=i)
            job.name = f"oracle md s{i}"
            jobs.append(maker.declare(job, "oracle"))
        return jobs

    def check(self, config) -> None:
        n = len(config.structures)
        for k, stage in enumerate(config.sampler.stage_list()):
            for i, system in enumerate(stage.systems or []):
                bad = [j for j in system.structures or [] if j >= n]
                if bad:
                    where = f"sampler.stages.{k}.systems.{i}" if config.sampler.stages else f"sampler.systems.{i}"
                    raise ConfigError(f"{where}.structures: {bad} out of range: the campaign has {n} start "
                                      f"structure(s) (indices 0 to {n - 1})")

    def explore(self, maker, iteration, committee, train_ids, state):
        cfg = maker.config
        st = _stage_state(state)
        stage = effective_stage(cfg, st)
        starts = cfg.load_structures() if st["starts"] is None else list(st["starts"])
        walkers = stage_walkers(cfg.sampler, st["stage"], starts, iteration, stage)
        size = cfg.sampler.max_walkers_per_job
        label = f" {stage.name}" if stage.name else (f" stage{st['stage']}" if cfg.sampler.stages else "")
        jobs = []
        for a in range(0, len(walkers), size):
            name = f"explore it{iteration}{label} w{a}-{min(a + size, len(walkers)) - 1}"
            j = dataclasses.replace(self.explore_maker, name=name).make(committee.model_ids, walkers[a:a + size],
                                                                        campaign=cfg.name, iteration=iteration)
            j.name = name
            jobs.append(maker.declare(j, "explore"))
        conv = stage_convergence(cfg, stage)
        select = select_md(self, cfg.name, iteration, [j.output for j in jobs], train_ids,
                           conv.calibration_samples, conv.seed, stage, st["stage"], conv)
        select.name = f"select it{iteration}"
        maker.declare(select, "select")
        return [*jobs, select], select.output

    def held_out_ids(self, db, name, config):
        return set() if config.convergence.recycle_calibration else set(previous_calibration_ids(db, name))

    def resume_state(self, db, config, last, label_ids):
        starts = (relaxed_starts(db, config.name) or None) if config.prerelax.enabled else None
        stage = int(last.get("stage") or 0)
        done = sum(1 for d in db.iterations.query({"campaign": config.name, "stage": stage}, properties=["iteration"]))
        if stage == 0 and not config.sampler.stages:
            done = int(last["iteration"]) + 1  # records from before stages have no stage
        stage_max = stage_convergence(config, config.sampler.stage_list()[stage]).max_iterations
        stage, done = StageScheduler.from_config(config).resume(stage, done, bool(last.get("converged")), stage_max)
        latest = latest_calibration(db, config.name)
        return label_ids, {"starts": starts, "stage": stage, "stage_iteration": done,
                           "trust_factor": None if latest is None else latest[1].factor}

    def decide(self, maker, db, iteration, committee, exploration, labels, held_out, train_ids, state):
        """The exploration report, the calibration on held-out frames, the stage's convergence rule and the
        stage scheduler make the iteration's record and say what comes next."""
        cfg, st = maker.config, _stage_state(state)
        stage = effective_stage(cfg, st)
        conv = stage_convergence(cfg, stage)
        rule = get_rule(conv)
        report = ExplorationReport.from_walkers(exploration.explored)
        new_ids, cal_ids = ok_ids(labels), ok_ids(held_out)
        all_ids = list(dict.fromkeys(train_ids + new_ids))
        calibration, note = calibrate_committee(db, cfg.name, iteration, committee, cal_ids, all_ids, conv,
                                                always=rule.needs_calibration)
        check = None
        if calibration is not None and report.n_frames:
            check = convergence_check(report.deviations, calibration, conv.force_tolerance, conv.conv_accuracy,
                                      bound=conv.bound, confidence=conv.conv_confidence, interval=conv.conv_interval)
        passed, reason = rule.check(report, check)
        converged, reason, _ = apply_patience(passed, reason, earlier_passes(db, cfg.name, iteration, st["stage"])
                                              if passed and conv.conv_patience > 1 else [], conv.conv_patience)
        n_selected = len(exploration.candidates) - exploration.n_guard
        stall = None
        if not new_ids and not RandomGuard(conv.guard_patience, conv.guard_samples).holds_back_stop(
                quiet_iterations(db, cfg.name, iteration, n_selected)):
            stall = ("nothing new to learn: no candidate was labelled "
                     f"({report.counts['failed']} frames beyond trust_hi); widen the trust levels")
        step = StageScheduler.from_config(cfg).step(st, iteration, converged, reason, conv.max_iterations, stall)
        errors, explored, ratio = test_errors(committee, labels), exploration.explored, report.ratios
        doc = IterationDoc(
            campaign=cfg.name, iteration=iteration, n_frames_explored=report.n_frames, accurate_ratio=ratio["accurate"],
            candidate_ratio=ratio["candidate"], failed_ratio=ratio["failed"],
            n_candidates=exploration.n_candidates, n_selected=n_selected, n_guard_samples=exploration.n_guard,
            guard_reason=exploration.guard_reason,
            n_labelled=len(new_ids), n_failed_labels=sum(not lab.ok for lab in labels),
            n_reused_labels=sum(1 for lab in labels if lab.ok and lab.reused_from), n_train_labels=len(train_ids),
            trust_lo=exploration.trust_lo if exploration.trust_lo is not None else stage.trust_lo,
            trust_hi=stage.trust_hi, stage=st["stage"], stage_name=stage.name, n_walkers=len(explored),
            test_errors=errors, deviation_histogram=report.histogram(), model_ids=committee.model_ids,
            trajectory_blob_ids=[d.trajectory_blob_id for d in explored if d.trajectory_blob_id],
            exploded_trajectories=sum(1 for d in explored if d.exploded), converged=converged, stop_rule=conv.rule,
            calibration=calibration, calibration_label_ids=cal_ids, stop_reason=step.stop_reason,
            rule_passed=passed, trust_factor=st.get("trust_factor") if _calibrated_trust(cfg, st) else None,
            **_check_fields(check))
        _log_iteration(doc, report, check, note)
        if conv.recycle_calibration:  # they have calibrated this committee; the next ones may learn from them
            all_ids = list(dict.fromkeys(all_ids + cal_ids))
        factor = calibration.factor if calibration is not None else st.get("trust_factor")
        return Decision(doc, step.status, step.stop_reason, all_ids, {**step.state, "trust_factor": factor})


def _calibrated_trust(config, state: dict) -> bool:
    return config.sampler.stage_list()[state["stage"]].trust_units == "calibrated"


def _check_fields(check) -> dict[str, Any]:
    """The iteration record's fields of the calibrated check (``StopDecision``; all None without one)."""
    if check is None:
        return {"calibrated_fraction": None}
    return {"calibrated_fraction": check.fraction_below, "calibrated_fraction_bound": check.lower_bound,
            "confidence_level": check.confidence, "bound_n_effective": check.n_effective}


def calibrate_committee(db: CampaignDB, campaign: str, iteration: int, committee, cal_ids: list[str],
                        trained_ids: list[str], conv: ConvergenceSettings, always: bool = False
                        ) -> tuple[CalibrationDoc | None, str | None]:
    """The committee calibrated on held-out labels it never trained on: this iteration's (``cal_ids``), with
    ``cumulative_calibration`` the earlier iterations' too; ``(None, why)`` when it can't be (``always``: try
    even without held-out labels, to say so), ``(None, None)`` when there is nothing to try."""
    scored = cal_ids
    if conv.cumulative_calibration:
        scored = list(dict.fromkeys(previous_calibration_ids(db, campaign, before=iteration) + cal_ids))
    trained = set(trained_ids)
    scored = [i for i in scored if i not in trained]  # held out means never trained on
    if not (scored or always):
        return None, None
    cal_labels = load_labels(db, scored) if scored else []
    if len(cal_labels) < 2:
        return None, f"{len(cal_labels)} held-out calibration label(s): not enough to calibrate"
    u, e = committee_errors(committee, [lab.to_atoms() for lab in cal_labels])
    try:
        return calibrate(u, e, coverage=conv.calibration_coverage, method=conv.calibration_method,
                         campaign=campaign, iteration=iteration), None
    except ValueError as exc:
        return None, f"calibration failed: {exc}"


def _log_iteration(doc: IterationDoc, report: ExplorationReport, check, note: str | None) -> None:
    calibration, it = doc.calibration, doc.iteration
    if calibration is not None:
        logger.info("iteration %d: calibration on %d held-out frames: k = %.2f, q(%.0f%%) = %.2f, Spearman %s; %s",
                    it, calibration.n_samples, calibration.factor, 100 * calibration.coverage,
                    calibration.quantile, "n/a" if calibration.spearman is None else f"{calibration.spearman:.2f}",
                    "no explored frames" if check is None else
                    check.reason + ("" if check.lower_bound is None else f"; {check.bound_reason()}"))
    elif note:
        logger.warning("iteration %d: %s", it, note)
    f, ratio = doc.test_errors.force_rmse, report.ratios
    logger.info("iteration %d: %d frames, accurate %.1f%%, candidate %.1f%%, failed %.1f%%; labelled %d; "
                "test force RMSE %s%s", it, report.n_frames, 100 * ratio["accurate"], 100 * ratio["candidate"],
                100 * ratio["failed"], doc.n_labelled, "n/a" if f is None else f"{f:.3f} eV/Å",
                f"; stop: {doc.stop_reason}" if doc.stop_reason else "")
