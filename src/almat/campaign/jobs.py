"""The campaign's own jobs: register, initial data, label a batch, select, decide."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from jobflow import Flow, Response

from almat.campaign.config import CampaignConfig
from almat.campaign.initial import perturbed_structures
from almat.sampler.jobs import ExploreDoc
from almat.schemas import (
    CampaignDoc,
    CampaignStatus,
    DeviationHistogram,
    IterationDoc,
    LabelDoc,
    StructureDoc,
    StructureSource,
    TestErrors,
    utcnow,
)
from almat.select.policies import get_policy
from almat.stores import CampaignDB, store_job, require_db

logger = logging.getLogger(__name__)

__all__ = [
    "DEVIATION_BINS",
    "calibration_sample",
    "decide",
    "initial_structures",
    "label_batch",
    "new_campaign_doc",
    "register_campaign",
    "select_candidates",
]

#: bin edges (eV/Å) of the stored model-deviation histograms
DEVIATION_BINS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 1e9]




def _config(config: dict | CampaignConfig) -> CampaignConfig:
    return config if isinstance(config, CampaignConfig) else CampaignConfig.model_validate(config)


def new_campaign_doc(cfg, elements) -> CampaignDoc:
    """A running ``CampaignDoc`` for any campaign config (MD, pool, NFT): name, config and its
    fingerprint, chemistry, oracle."""
    elements = sorted(set(elements))
    return CampaignDoc(
        name=cfg.name,
        config=cfg.model_dump(mode="json", by_alias=True),
        config_fingerprint=cfg.fingerprint(),
        status=CampaignStatus.running,
        elements=elements,
        chemsys="-".join(elements),
        oracle=cfg.oracle.name,
        oracle_fingerprint=cfg.oracle.fingerprint,
    )


@store_job
def register_campaign(config: dict, resume: bool = False) -> dict:
    """Create (or, when resuming, reopen) the campaign document. Never mixes two campaigns."""
    cfg = _config(config)
    db = require_db()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
        if existing is not None:
            if existing.get("config_fingerprint") != cfg.fingerprint():
                raise ValueError(
                    f"campaign {cfg.name!r} already exists with a different configuration; choose another name"
                )
            if not resume and existing.get("status") != CampaignStatus.created.value:
                raise ValueError(f"campaign {cfg.name!r} already exists; resume it or choose another name")
            doc = CampaignDoc.from_store(existing)
            doc.status, doc.updated_at = CampaignStatus.running, utcnow()
            doc.config = cfg.model_dump(mode="json", by_alias=True)
        else:
            doc = new_campaign_doc(cfg, [el.symbol for s in cfg.load_structures() for el in s.composition.elements])
        db.upsert("campaigns", [doc])
        return {"name": doc.name, "config_fingerprint": doc.config_fingerprint}
    finally:
        db.close()


@store_job
def initial_structures(config: dict, campaign: str | None = None, structures: list | None = None) -> list[StructureDoc]:
    """Strained and rattled copies of each start structure (iteration -1).

    ``structures`` are the start structures (e.g. the pre-relaxed ones); by default the config's.
    ``campaign`` (normally the register job's output) only orders this job after registration.
    ``config`` may be of any campaign kind with ``initial`` settings and start structures (MD, NFT).
    """
    from almat.campaign.kinds import load_campaign_config
    from almat.schemas import to_structure

    cfg = load_campaign_config(config)
    rng = np.random.default_rng(cfg.initial.seed)
    docs = []
    starts = cfg.load_structures() if structures is None else [to_structure(s) for s in structures]
    for structure in starts:
        parent = StructureDoc(structure=structure, source=StructureSource.init).structure_hash
        for i, s in enumerate(
            perturbed_structures(structure, cfg.initial.n_per_structure, cfg.initial.rattle_std,
                                 cfg.initial.max_strain, rng)
        ):
            docs.append(
                StructureDoc(
                    structure=s,
                    source=StructureSource.init if i == 0 else StructureSource.perturbed,
                    campaign=cfg.name,
                    iteration=-1,
                    parent=None if i == 0 else parent,
                )
            )
    db = require_db()
    try:
        db.upsert("structures", docs)
    finally:
        db.close()
    logger.info("campaign %s: %d initial structures", cfg.name, len(docs))
    return docs


@store_job
def label_batch(structures: list[StructureDoc], config: dict, iteration: int, purpose: str = "training"):
    """Replace itself by one oracle job per structure; its output becomes the list of ``LabelDoc``s.

    ``purpose`` (``training`` or ``calibration``) only names the jobs. ``config`` may be of any
    campaign kind (its ``oracle`` labels).
    """
    from almat.campaign.kinds import load_campaign_config

    cfg = load_campaign_config(config)
    if not structures:
        return []
    maker = cfg.oracle.label_maker()
    tag = "" if purpose == "training" else f" {purpose}"
    jobs = []
    for i, doc in enumerate(structures):
        j = maker.make(doc, campaign=cfg.name, iteration=iteration)
        j.name = f"oracle{tag} it{iteration} #{i}"
        jobs.append(j)
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name=f"label{tag} it{iteration}"))


@store_job
def select_candidates(explored: list[ExploreDoc], config: dict, iteration: int,
                      label_ids: list[Any] | None = None) -> list[StructureDoc]:
    """Pick at most ``max_select`` candidates over all trajectories with the configured policy.

    Policies that look at descriptors (FPS, weighted acquisition) get a ``SelectionContext`` with the
    committee's descriptors of the candidates and of the training set (``label_ids``).
    """
    from almat.select import SelectionContext, build_selection_context, call_policy, policy_needs_descriptors

    cfg = _config(config)
    candidates = [c for doc in explored for c in doc.candidates]
    policy = get_policy(cfg.selection.policy, **cfg.selection.options)
    rng = np.random.default_rng(cfg.selection.seed + iteration)
    picks = []
    if candidates:
        context = SelectionContext(iteration=iteration)
        if policy_needs_descriptors(policy, iteration):
            from almat.learner.committee import Committee
            from almat.learner.jobs import load_labels

            model_ids = next((d.model_ids for d in explored if d.model_ids), [])
            db = require_db()
            try:
                committee = Committee.from_store(db, model_ids)
                training = [lab.to_atoms() for lab in load_labels(db, label_ids or [])]
            finally:
                db.close()
            context = build_selection_context(candidates, committee, training, iteration)
        picks = call_policy(policy, candidates, cfg.selection.max_select, rng, context)
    docs = [
        StructureDoc(
            structure=candidates[i].structure,
            source=StructureSource.md,
            campaign=cfg.name,
            iteration=iteration,
            parent=candidates[i].parent,
            metadata={
                "model_deviation": candidates[i].model_deviation,
                "energy_deviation": candidates[i].energy_deviation,
                "temperature": candidates[i].temperature,
                "step": candidates[i].step,
                "trajectory_blob_id": candidates[i].trajectory_blob_id,
                "policy": policy.name,
            },
        )
        for i in picks
    ]
    if docs:
        db = require_db()
        try:
            db.upsert("structures", docs)
        finally:
            db.close()
    logger.info("iteration %d: selected %d of %d candidates (%s)", iteration, len(docs), len(candidates), policy.name)
    return docs


@store_job
def calibration_sample(explored: list[ExploreDoc], selected: list[StructureDoc], config: dict,
                       iteration: int, label_ids: list[Any] | None = None) -> list[StructureDoc]:
    """Held-out explored frames for calibrating the committee's uncertainty (never trained on).

    ``convergence.calibration_samples`` frames, stratified over the whole range of model deviation
    (``almat.calibration.stratified_sample``), so the low-uncertainty frames are sampled too. Frames
    beyond ``trust_hi`` (the committee is lost there, and they may be unphysical) and the frames
    selected for training are left out, and so are frames identical to a training label
    (``label_ids``; e.g. the start structure at step 0).
    """
    from almat.calibration import stratified_sample
    from almat.schemas import to_structure
    from almat.stores import get_blob

    cfg = _config(config)
    n = cfg.convergence.calibration_samples
    if n == 0 or not explored:
        return []
    from almat.learner.jobs import _as_id, flatten_labels
    from almat.schemas import structure_hash

    taken = {(d.metadata.get("trajectory_blob_id"), d.metadata.get("step")) for d in selected}
    frames, deviation, eligible = [], [], []
    db = require_db()
    try:
        train_ids = list(dict.fromkeys(_as_id(i) for i in flatten_labels(label_ids or [])))
        trained = {d["structure_hash"] for d in db.labels.query({"label_id": {"$in": train_ids}},
                                                                 properties=["structure_hash"])}
        trained |= {d.structure_hash for d in selected}
        for doc in explored:
            if not doc.trajectory_blob_id:
                continue
            traj = get_blob(db.data, doc.trajectory_blob_id)
            for i, step in enumerate(traj["steps"]):
                frames.append((doc, traj, i))
                deviation.append(traj["model_deviation"][i])
                eligible.append(traj["frame_class"][i] != "failed" and (doc.trajectory_blob_id, step) not in taken)
        rng = np.random.default_rng(cfg.convergence.seed + 7919 * (iteration + 1))

        def structure_of(k: int):
            from ase import Atoms

            doc, traj, i = frames[k]
            atoms = Atoms(traj["symbols"], positions=traj["positions"][i], cell=traj["cells"][i], pbc=True)
            return to_structure(atoms)

        picks = stratified_sample(deviation, n, rng, eligible)
        while any(structure_hash(structure_of(k)) in trained for k in picks):  # rare: step 0 = a start
            for k in picks:
                if structure_hash(structure_of(k)) in trained:
                    eligible[k] = False
            picks = stratified_sample(deviation, n, rng, eligible)
        docs = []
        for k in picks:
            doc, traj, i = frames[k]
            docs.append(StructureDoc(
                structure=structure_of(k),
                source=StructureSource.md,
                campaign=cfg.name,
                iteration=iteration,
                parent=doc.start_structure_hash,
                metadata={
                    "role": "calibration",
                    "model_deviation": traj["model_deviation"][i],
                    "temperature": traj["temperature"][i],
                    "step": traj["steps"][i],
                    "trajectory_blob_id": doc.trajectory_blob_id,
                },
            ))
        if docs:
            db.upsert("structures", docs)
    finally:
        db.close()
    logger.info("iteration %d: %d held-out calibration frames of %d eligible", iteration, len(docs), sum(eligible))
    return docs


def previous_calibration_ids(db: CampaignDB, campaign: str, before: int | None = None) -> list[str]:
    """Label ids of the held-out calibration frames of a campaign's iterations (before ``before``)."""
    query: dict[str, Any] = {"campaign": campaign}
    if before is not None:
        query["iteration"] = {"$lt": before}
    ids: list[str] = []
    for d in db.iterations.query(query, properties=["calibration_label_ids"]):
        ids.extend(d.get("calibration_label_ids") or [])
    return list(dict.fromkeys(ids))


def _calibrate(db: CampaignDB, cfg: CampaignConfig, iteration: int, committee, label_ids: list[str]):
    """(CalibrationDoc or None, note) on the given held-out labels, scored by ``committee``."""
    from almat.calibration import calibrate, committee_errors
    from almat.learner.jobs import load_labels

    labels = load_labels(db, label_ids) if label_ids else []
    if len(labels) < 2:
        return None, f"{len(labels)} held-out calibration label(s): not enough to calibrate"
    u, e = committee_errors(committee, [lab.to_atoms() for lab in labels])
    conv = cfg.convergence
    try:
        doc = calibrate(u, e, coverage=conv.calibration_coverage, method=conv.calibration_method,
                        campaign=cfg.name, iteration=iteration)
    except ValueError as exc:
        return None, f"calibration failed: {exc}"
    return doc, None


def _label_ids(labels: list[Any]) -> list[str]:
    from almat.learner.jobs import flatten_labels

    out = []
    for lab in flatten_labels(labels):
        if isinstance(lab, str):
            out.append(lab)
        else:
            doc = lab if isinstance(lab, LabelDoc) else LabelDoc.model_validate(lab)
            if doc.ok:
                out.append(doc.label_id)
    return out


def _test_errors(committee, labels: list[LabelDoc]) -> TestErrors:
    ok = [lab for lab in labels if lab.ok]
    if not ok:
        return TestErrors()
    pred = committee.predict([lab.to_atoms() for lab in ok])
    de, df = [], []
    for i, lab in enumerate(ok):
        de.append((pred.mean_energy[i] - lab.energy) / lab.natoms)
        df.append(pred.mean_forces(i) - np.asarray(lab.forces))
    df_all = np.concatenate(df)
    return TestErrors(
        n_structures=len(ok),
        energy_rmse_per_atom=float(np.sqrt(np.mean(np.square(de)))),
        force_rmse=float(np.sqrt(np.mean(np.square(df_all)))),
        force_mae=float(np.mean(np.abs(df_all))),
        max_force_error=float(np.linalg.norm(df_all, axis=1).max()),
    )


@store_job(output_schema=IterationDoc)
def decide(
    config: dict,
    iteration: int,
    committee: dict,
    explored: list[ExploreDoc],
    selected: list[StructureDoc],
    labels: list[LabelDoc],
    train_label_ids: list[Any],
    start_structures: list | None = None,
    calibration_labels: list[Any] | None = None,
):
    """Record the iteration and decide: converge, stop, or add the next iteration to the flow.

    With ``convergence.rule: calibrated`` the committee is calibrated on the held-out labels
    (``calibration_labels``, plus those of earlier iterations when ``cumulative_calibration``) and
    the campaign converges when the calibrated uncertainty of the explored frames is below
    ``force_tolerance`` for a fraction ``>= conv_accuracy`` of them.
    """
    from almat.campaign.flow import iteration_flow
    from almat.query import query_labels, reuse_summary

    cfg = _config(config)
    labels = [lab if isinstance(lab, LabelDoc) else LabelDoc.model_validate(lab) for lab in labels]
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    deviations = np.array([d for doc in explored for d in doc.model_deviation])
    counts = {k: sum(doc.counts.get(k, 0) for doc in explored) for k in ("accurate", "candidate", "failed")}
    n_frames = int(sum(counts.values()))
    ratio = {k: (v / n_frames if n_frames else 0.0) for k, v in counts.items()}
    hist, _ = np.histogram(deviations, bins=DEVIATION_BINS) if deviations.size else (np.zeros(len(DEVIATION_BINS) - 1), None)
    n_candidates = sum(len(doc.candidates) for doc in explored)
    train_ids = list(dict.fromkeys(_label_ids(train_label_ids)))  # one id can arrive from two jobs
    new_ids = list(dict.fromkeys(_label_ids(labels)))
    all_ids = list(dict.fromkeys(train_ids + new_ids))

    conv = cfg.convergence
    cal_ids = list(dict.fromkeys(_label_ids(calibration_labels or [])))
    db = require_db()
    try:
        from almat.calibration import convergence_check
        from almat.learner.committee import Committee

        committee_models = Committee.from_store(db, model_ids)
        test_errors = _test_errors(committee_models, labels)
        scored_ids = cal_ids
        if conv.cumulative_calibration:
            scored_ids = list(dict.fromkeys(previous_calibration_ids(db, cfg.name, before=iteration) + cal_ids))
        scored_ids = [i for i in scored_ids if i not in set(all_ids)]  # held out means never trained on
        calibration, calibration_note = (None, None)
        if scored_ids or conv.rule == "calibrated":
            calibration, calibration_note = _calibrate(db, cfg, iteration, committee_models, scored_ids)
        decision = None
        if calibration is not None and n_frames:
            decision = convergence_check(deviations, calibration, conv.force_tolerance, conv.conv_accuracy,
                                         bound=conv.bound)
        if conv.rule == "calibrated":
            converged = decision is not None and decision.stop
            converged_reason = decision.reason if decision is not None else ""
        else:
            converged = n_frames > 0 and ratio["accurate"] >= conv.conv_accuracy
            converged_reason = f"accurate ratio {ratio['accurate']:.3f} >= conv_accuracy {conv.conv_accuracy}"
        stop_reason = None
        if converged:
            stop_reason = converged_reason
            status = CampaignStatus.converged
        elif iteration + 1 >= cfg.convergence.max_iterations:
            stop_reason = f"max_iterations ({cfg.convergence.max_iterations}) reached"
            status = CampaignStatus.max_iterations
        elif not new_ids:
            stop_reason = ("nothing new to learn: no candidate was labelled "
                           f"({counts['failed']} frames beyond trust_hi); widen the trust levels")
            status = CampaignStatus.stopped
        else:
            status = CampaignStatus.running
        doc = IterationDoc(
            campaign=cfg.name,
            iteration=iteration,
            n_frames_explored=n_frames,
            accurate_ratio=ratio["accurate"],
            candidate_ratio=ratio["candidate"],
            failed_ratio=ratio["failed"],
            n_candidates=n_candidates,
            n_selected=len(selected),
            n_labelled=len(new_ids),
            n_failed_labels=sum(1 for lab in labels if not lab.ok),
            n_reused_labels=sum(1 for lab in labels if lab.ok and lab.reused_from),
            n_train_labels=len(train_ids),
            trust_lo=cfg.sampler.trust_lo,
            trust_hi=cfg.sampler.trust_hi,
            test_errors=test_errors,
            deviation_histogram=DeviationHistogram(bin_edges=DEVIATION_BINS, counts=[int(c) for c in hist]),
            model_ids=model_ids,
            trajectory_blob_ids=[d.trajectory_blob_id for d in explored if d.trajectory_blob_id],
            exploded_trajectories=sum(1 for d in explored if d.exploded),
            converged=converged,
            stop_rule=conv.rule,
            calibration=calibration,
            calibration_label_ids=cal_ids,
            calibrated_fraction=None if decision is None else decision.fraction_below,
            stop_reason=stop_reason,
        )
        db.upsert("iterations", [doc])
        campaign = db.campaigns.query_one({"name": cfg.name}) or {}
        campaign.update({
            "status": status.value,
            "n_iterations": iteration + 1,
            "n_labels": query_labels(db, campaign=cfg.name, allow_mixed_oracles=True).count(),
            "n_reused_labels": reuse_summary(db, cfg.name).get(cfg.name, {}).get("reused", 0),
            "stop_reason": stop_reason,
            "updated_at": utcnow(),
        })
        if "name" in campaign:
            db.upsert("campaigns", [CampaignDoc.from_store(campaign)])
    finally:
        db.close()
    if calibration is not None:
        logger.info(
            "iteration %d: calibration on %d held-out frames: k = %.2f, q(%.0f%%) = %.2f, Spearman %s; "
            "%s", iteration, calibration.n_samples, calibration.factor, 100 * calibration.coverage,
            calibration.quantile, "n/a" if calibration.spearman is None else f"{calibration.spearman:.2f}",
            decision.reason if decision is not None else "no explored frames")
    elif calibration_note:
        logger.warning("iteration %d: %s", iteration, calibration_note)
    f_rmse = test_errors.force_rmse
    logger.info(
        "iteration %d: %d frames, accurate %.1f%%, candidate %.1f%%, failed %.1f%%; labelled %d; "
        "test force RMSE %s%s",
        iteration, n_frames, 100 * ratio["accurate"], 100 * ratio["candidate"], 100 * ratio["failed"],
        len(new_ids), "n/a" if f_rmse is None else f"{f_rmse:.3f} eV/Å",
        f"; stop: {stop_reason}" if stop_reason else "",
    )
    if status != CampaignStatus.running:
        return doc
    if conv.recycle_calibration:  # they have calibrated this committee; the next ones may learn from them
        all_ids = list(dict.fromkeys(all_ids + cal_ids))
    next_flow = iteration_flow(cfg, iteration + 1, all_ids, model_ids, start_structures=start_structures)
    return Response(output=doc, addition=next_flow)
