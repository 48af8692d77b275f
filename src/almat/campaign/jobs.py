"""The loop's own jobs: register, initial structures, label a batch, decide.

They take the campaign Maker (or its oracle Maker) as an argument, so a change made to a built flow
with ``update_maker_kwargs`` reaches every job the campaign adds later.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from jobflow import Flow, Job, Response

from almat.campaign.initial import perturbed_structures
from almat.campaign.sources import load_structures
from almat.learner.committee import Committee
from almat.learner.jobs import TrainCommitteeMaker, flatten_labels
from almat.learner.zero_shot import foundation_calculator, foundation_md_frames
from almat.schemas import CampaignDoc, CampaignStatus, LabelDoc, StructureDoc, StructureSource, TestErrors
from almat.schemas import to_atoms, to_structure, utcnow
from almat.stores import require_db, store_job
from almat.stores.ledger import ROLE_KEY, measured

logger = logging.getLogger(__name__)


# ROLE_KEY (almat.stores.ledger): the job metadata key of a job's role, whatever its name (almat.launch routes by it)
ROLES = ("register", "initial", "label", "train", "explore", "select", "oracle", "decide")


def all_jobs(flow: Job | Flow) -> list[Job]:
    """Every job of a flow, at any depth (a job is its own list)."""
    return [j for x in flow.jobs for j in all_jobs(x)] if isinstance(flow, Flow) else [flow]


def declare_role(job: Job | Flow, role: str, routing: dict[str, str] | None = None, campaign: str | None = None,
                 iteration: int | None = None) -> Job | Flow:
    """Say what a job (or every job of a flow) is; with a ``routing`` (role -> FireWorks category), route
    it too, and keep jobflow from overwriting that with the category of the job that created it. Each job
    also records its cost in the campaign's ledger (``almat.stores.ledger``: of ``campaign``, ``iteration``)."""
    if role not in ROLES:
        raise ValueError(f"unknown job role {role!r}; valid: {', '.join(ROLES)}")
    for j in all_jobs(job):
        j.metadata[ROLE_KEY] = role
        measured(j, campaign, iteration)
        if routing is not None:
            j.config.manager_config = {**j.config.manager_config, "_category": routing.get(role, routing["default"])}
            j.config.pass_manager_config = False
    return job


def _label(item: Any) -> LabelDoc:
    return item if isinstance(item, LabelDoc) else LabelDoc.model_validate(
        {k: v for k, v in item.items() if k not in ("_id", "last_updated")})


def as_labels(items: Any) -> list[LabelDoc]:
    """``LabelDoc``s from job outputs (docs or their dicts, possibly in nested lists)."""
    return [_label(lab) for lab in flatten_labels(items)]


def ok_ids(items: Any) -> list[str]:
    """The ids of the ok labels among job outputs (label ids pass as they are), once each, in order."""
    ids = [x if isinstance(x, str) else _label(x).label_id for x in flatten_labels(items)
           if isinstance(x, str) or _label(x).ok]
    return list(dict.fromkeys(ids))


def test_errors(committee: Committee, frames: Sequence) -> TestErrors:
    """Committee-mean errors on labelled frames (Atoms with energy and forces, or ok ``LabelDoc``s)."""
    frames = [f.to_atoms() if isinstance(f, LabelDoc) else f for f in frames
              if f is not None and (not isinstance(f, LabelDoc) or f.ok)]
    if not frames:
        return TestErrors()
    pred = committee.predict(frames)
    de = [(pred.mean_energy[i] - a.get_potential_energy()) / len(a) for i, a in enumerate(frames)]
    df = np.concatenate([pred.mean_forces(i) - np.asarray(a.get_forces()) for i, a in enumerate(frames)])
    return TestErrors(
        n_structures=len(frames),
        energy_rmse_per_atom=float(np.sqrt(np.mean(np.square(de)))),
        force_rmse=float(np.sqrt(np.mean(np.square(df)))),
        force_mae=float(np.mean(np.abs(df))),
        max_force_error=float(np.linalg.norm(df, axis=1).max()),
    )


test_errors.__test__ = False  # not a pytest test


@store_job
def register(maker, resume: bool = False) -> dict:
    """Create (or, resuming, reopen) the campaign document and do the explorer's setup. Never mixes
    two campaigns: a name with another configuration is refused."""
    cfg = maker.config
    db = require_db()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
        if existing is not None:
            if existing.get("config_fingerprint") != cfg.fingerprint():
                raise ValueError(f"campaign {cfg.name!r} already exists with a different configuration; "
                                 "choose another name")
            if not resume and existing.get("status") != CampaignStatus.created.value:
                raise ValueError(f"campaign {cfg.name!r} already exists; resume it or choose another name")
            doc = CampaignDoc.from_store(existing)
            doc.status, doc.updated_at = CampaignStatus.running, utcnow()
        else:
            elements = sorted(set(maker.explorer.elements(cfg)))
            doc = CampaignDoc(name=cfg.name, config_fingerprint=cfg.fingerprint(), status=CampaignStatus.running,
                              config={}, elements=elements, chemsys="-".join(elements),
                              oracle=maker.oracle_name, oracle_fingerprint=maker.oracle_fingerprint)
        doc.config = cfg.model_dump(mode="json", by_alias=True)
        setup = maker.explorer.setup(maker, db)
        db.upsert("campaigns", [doc])
    finally:
        db.close()
    return {"name": cfg.name, "setup": setup}


def _foundation_md_copies(config, structure, rng, calculator):
    """The structure and ``n_per_structure - 1`` frames of MD with the learner's foundation model."""
    init = config.initial
    frames = foundation_md_frames(to_atoms(structure), init.n_per_structure - 1, init.md_temperature,
                                  init.md_steps, int(rng.integers(2**31)), calculator)
    return [structure, *(to_structure(f) for f in frames)]


@store_job
def initial_structures(config, campaign: str | None = None, structures: list | None = None) -> list[StructureDoc]:
    """Strained and rattled copies of each start structure (iteration -1), or frames of MD with a
    foundation model (``initial.method: foundation-md``): of the config's start structures, or of the given
    ones (e.g. pre-relaxed). ``campaign`` (the register job's output) orders this job after registration."""
    rng = np.random.default_rng(config.initial.seed)
    init, docs, calculator = config.initial, [], None
    starts = load_structures(config) if structures is None else [to_structure(s) for s in structures]
    for structure in starts:
        parent = StructureDoc(structure=structure, source=StructureSource.init).structure_hash
        if init.method == "foundation-md":
            if calculator is None:
                hp = TrainCommitteeMaker.from_settings(config.learner, config.base_dir).hyperparameters
                calculator = foundation_calculator(config.learner.kind, hp)
            copies, source = _foundation_md_copies(config, structure, rng, calculator), StructureSource.md
        else:
            copies = perturbed_structures(structure, init.n_per_structure, init.rattle_std, init.max_strain, rng)
            source = StructureSource.perturbed
        for i, s in enumerate(copies):
            docs.append(StructureDoc(structure=s, source=StructureSource.init if i == 0 else source,
                                     campaign=config.name, iteration=-1, parent=None if i == 0 else parent))
    db = require_db()
    try:
        db.upsert("structures", docs)
    finally:
        db.close()
    logger.info("campaign %s: %d initial structures", config.name, len(docs))
    return docs


@store_job
def label_batch(structures: list[StructureDoc], oracle, campaign: str, iteration: int, purpose: str = "",
                force_weights: list[list[float]] | None = None, routing: dict[str, str] | None = None):
    """Replace itself by one oracle job (or flow) per structure; its output becomes the list of
    ``LabelDoc``s. ``force_weights`` (per structure) weight the atoms' forces in training (NFT chunks)."""
    if not structures:
        return []
    tag = f" {purpose}" if purpose else ""
    jobs = []
    for i, doc in enumerate(structures):
        kwargs = {} if force_weights is None else {"force_weights": force_weights[i]}
        j = oracle.make(doc, campaign=campaign, iteration=iteration, **kwargs)
        j.name = f"oracle{tag} it{iteration} #{i}"
        jobs.append(declare_role(j, "oracle", routing, campaign, iteration))
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name=f"label{tag} it{iteration}"))


@store_job
def decide(maker, iteration: int, committee: Any, exploration: Any, labels: list, held_out: list | None,
           train_ids: list, state: Any = None):
    """Record the iteration (the explorer's record), update the campaign, and stop or add the next
    iteration to the flow (``Response(addition=...)``), built by ``maker``."""
    cfg = maker.config
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    db = require_db()
    try:
        kind = maker.explorer.exploration_class  # a reference resolves to a dict, or to the class jobflow stored
        exploration = kind.model_validate(exploration if isinstance(exploration, dict) else exploration.model_dump())
        decision = maker.explorer.decide(maker, db, iteration, Committee.from_store(db, model_ids),
                                         exploration, as_labels(labels), as_labels(held_out or []),
                                         ok_ids(train_ids), state)
        failures = committee.get("failed_members") if isinstance(committee, dict) else getattr(
            committee, "failed_members", None)
        if failures and "training_failures" in type(decision.record).model_fields:
            decision.record.training_failures = list(failures)
        db.upsert(maker.explorer.records, [decision.record])
        raw = db.campaigns.query_one({"name": cfg.name})
        if raw is not None:
            campaign = CampaignDoc.from_store(raw)
            ok = {"campaign": cfg.name, "status": "ok"}
            campaign.status, campaign.n_iterations = decision.status, iteration + 1
            campaign.n_labels = db.labels.count(ok)
            campaign.n_reused_labels = db.labels.count({**ok, "reused_from": {"$ne": None}})
            campaign.stop_reason, campaign.updated_at = decision.stop_reason, utcnow()
            db.upsert("campaigns", [campaign])
    finally:
        db.close()
    if decision.status != CampaignStatus.running:
        finish = maker.finish_job() if decision.status != CampaignStatus.failed else None
        return decision.record if finish is None else Response(output=decision.record, addition=finish)
    return Response(output=decision.record,
                    addition=maker.iteration_flow(iteration + 1, decision.train_ids, model_ids, decision.state))
