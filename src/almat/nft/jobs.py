"""The jobs of an NFT campaign: register, initial data, chunk selection, chunk labels, decide."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jobflow import CURRENT_JOB, Flow, Maker, Response

from almat.campaign.jobs import new_campaign_doc
from almat.nft.config import NftCampaignConfig
from almat.nft.documents import NftChunkRecord, NftIterationDoc, NftSelection
from almat.oracle.calculators import CalculatorSpec
from almat.schemas import (
    CampaignDoc,
    CampaignStatus,
    LabelDoc,
    StructureDoc,
    StructureSource,
    to_atoms,
    to_structure,
    utcnow,
)
from almat.stores import store_job, require_db

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkOracleMaker",
    "nft_decide",
    "nft_label_chunks",
    "nft_select_chunks",
    "register_nft_campaign",
    "stop_decision",
]

_STATUS = {
    "stop_delta": CampaignStatus.converged,
    "max_iterations": CampaignStatus.max_iterations,
    "steps_not_improved": CampaignStatus.stopped,
}




def _config(config: dict | NftCampaignConfig) -> NftCampaignConfig:
    return config if isinstance(config, NftCampaignConfig) else NftCampaignConfig.model_validate(config)


def _target_doc(cfg: NftCampaignConfig) -> StructureDoc:
    return StructureDoc(structure=cfg.load_target(), source=StructureSource.init, campaign=cfg.name,
                        iteration=-1, metadata={"role": "nft-target"})


@store_job
def register_nft_campaign(config: dict) -> dict:
    """Create the campaign document (``config.kind == "nft"``) and store the target structure."""
    cfg = _config(config)
    target = _target_doc(cfg)
    db = require_db()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
        if existing is not None and (existing.get("config_fingerprint") != cfg.fingerprint()
                                     or existing.get("status") != CampaignStatus.created.value):
            raise ValueError(f"campaign {cfg.name!r} already exists; choose another name")
        doc = new_campaign_doc(cfg, [el.symbol for s in [*cfg.load_structures(), target.structure]
                                     for el in s.composition.elements])
        db.upsert("campaigns", [doc])
        db.upsert("structures", [target])
    finally:
        db.close()
    return {"name": doc.name, "config_fingerprint": doc.config_fingerprint, "target_hash": target.structure_hash}


@dataclass
class ChunkOracleMaker(Maker):
    """Label one NFT chunk with an ASE calculator; the ``LabelDoc`` carries the chunk's ``force_weights``
    (1 on the central atoms, 0 elsewhere) and ``energy_weight`` 0.

    Like ``almat.oracle.jobs.AseOracleMaker`` (same ``label_with_calculator``, same label reuse), but
    without stress, which means nothing for a cluster or a chunk with a seam.
    """

    name: str = "chunk oracle"
    calculator: CalculatorSpec = field(default_factory=lambda: CalculatorSpec("ase.calculators.emt", "EMT"))
    reuse_labels: bool = True

    @store_job(output_schema=LabelDoc)
    def make(self, structure: StructureDoc | dict, force_weights: list[float], campaign: str | None = None,
             iteration: int | None = None) -> LabelDoc:
        from almat.oracle.jobs import label_or_reuse

        doc = structure if isinstance(structure, StructureDoc) else StructureDoc.model_validate(structure)
        if len(force_weights) != len(doc.structure):
            raise ValueError(f"{len(force_weights)} force weights for a chunk of {len(doc.structure)} atoms")
        fields = dict(
            source=StructureSource.nft_chunk,
            campaign=campaign if campaign is not None else doc.campaign,
            iteration=iteration if iteration is not None else doc.iteration,
            job_uuid=CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None,
            force_weights=[float(w) for w in force_weights],
            energy_weight=0.0,
        )
        return label_or_reuse(doc, self.calculator, fields, compute_stress=False, reuse=self.reuse_labels)


def stop_decision(max_uncertainty: float, history: list[float], iteration: int,
                  cfg: NftCampaignConfig) -> tuple[str | None, str | None]:
    """(stop kind, reason) for this iteration's max target uncertainty, or (None, None) to go on.

    ``history`` holds the max uncertainties of the earlier iterations. An iteration improves when its
    max uncertainty is lower than every earlier one.
    """
    conv = cfg.convergence
    if max_uncertainty < conv.stop_delta:
        return "stop_delta", (f"max atomic uncertainty of the target {max_uncertainty:.4f} eV/Å < stop_delta "
                              f"{conv.stop_delta:g}")
    if iteration + 1 >= conv.max_iterations:
        return "max_iterations", f"max_iterations ({conv.max_iterations}) reached"
    values = [*history, max_uncertainty]
    best = int(np.argmin(values))  # first occurrence: equal values are no improvement
    since = len(values) - 1 - best
    if since >= conv.steps_not_improved:
        return "steps_not_improved", (f"max atomic uncertainty of the target not improved for {since} "
                                      f"iteration(s) (best {values[best]:.4f} eV/Å at iteration {best})")
    return None, None


@store_job(output_schema=NftSelection)
def nft_select_chunks(config: dict, iteration: int, committee: Any, history: list[float] | None = None
                      ) -> NftSelection:
    """Per-atom uncertainty of the target with this iteration's committee, the stop decision and, when
    the campaign goes on, the chunks around the most uncertain atoms (stored as ``nft-chunk`` structures)."""
    from almat.learner.committee import Committee
    from almat.nft.chunks import atomic_uncertainty, cut_chunks, select_uncertain_atoms

    cfg = _config(config)
    c = cfg.chunks
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    target_doc = _target_doc(cfg)
    target = to_atoms(target_doc.structure)
    db = require_db()
    try:
        models = Committee.from_store(db, model_ids, device=cfg.learner.hyperparameters.device)
        u = atomic_uncertainty(models, target, c.coefficient)
        errors = {}
        if cfg.target.evaluate_with_oracle:
            reference = target.copy()
            reference.calc = cfg.oracle.calculator.spec().load()
            df = models.predict([target]).mean_forces(0) - reference.get_forces()
            errors = {"target_force_rmse": float(np.sqrt(np.mean(df ** 2))),
                      "target_max_force_error": float(np.linalg.norm(df, axis=1).max())}
        max_u = float(u.max())
        stop, reason = stop_decision(max_u, list(history or []), iteration, cfg)
        if stop is None:
            threshold, uncertain, groups, chunks = cut_chunks(
                target, u, c.percentile, c.cutoff, c.max_chunks, mode=c.mode, merge_distance=c.merge_distance,
                vacuum=c.vacuum, cell=c.periodic_cell() if c.mode == "periodic" else None,
                min_distance_factor=c.min_distance_factor,
            )
        else:  # record what would have been picked, cut nothing
            threshold, uncertain = select_uncertain_atoms(u, c.percentile)
            groups, chunks = None, []
        # a chunk labelled in an earlier iteration (same structure hash) would add nothing: its central
        # atoms count as skipped this time
        earlier = {d["structure_hash"] for d in db.structures.query(
            {"campaign": cfg.name, "source": StructureSource.nft_chunk.value}, properties=["structure_hash"])}
        central, skipped = (list(groups.central_atoms), list(groups.skipped)) if groups is not None else ([], [])
        structures, records, weights = [], [], []
        for chunk in chunks:
            sdoc = StructureDoc(
                structure=to_structure(chunk.atoms),
                source=StructureSource.nft_chunk,
                campaign=cfg.name,
                iteration=iteration,
                parent=target_doc.structure_hash,
                metadata={"mode": chunk.mode, "cutoff": chunk.cutoff, "central_atoms": chunk.central_target,
                          "central_atoms_chunk": chunk.central_chunk},
            )
            if sdoc.structure_hash in earlier:
                central = [i for i in central if i not in chunk.central_target]
                skipped += chunk.central_target
                logger.info("NFT iteration %d: the chunk around atom(s) %s was labelled before; skipped",
                            iteration, chunk.central_target)
                continue
            structures.append(sdoc)
            weights.append(chunk.force_weights.tolist())
            records.append(NftChunkRecord(structure_hash=sdoc.structure_hash, natoms=len(chunk.atoms),
                                          central_atoms=chunk.central_target,
                                          central_atoms_chunk=chunk.central_chunk,
                                          target_indices=chunk.target_indices))
        if structures:
            db.upsert("structures", structures)
    finally:
        db.close()
    logger.info(
        "NFT iteration %d: max target uncertainty %.4f eV/Å (threshold %.4f at the %gth percentile); %d chunk(s) "
        "of %s atoms%s", iteration, max_u, threshold, c.percentile, len(records),
        ", ".join(str(r.natoms) for r in records) or "0", f"; stop: {reason}" if reason else "",
    )
    return NftSelection(
        campaign=cfg.name,
        iteration=iteration,
        model_ids=model_ids,
        target_hash=target_doc.structure_hash,
        n_target_atoms=len(target),
        atomic_uncertainties=[float(x) for x in u],
        max_uncertainty=max_u,
        mean_uncertainty=float(u.mean()),
        threshold=float(threshold),
        uncertain_atoms=list(uncertain),
        central_atoms=central,
        skipped_atoms=skipped,
        chunks=records,
        structures=structures,
        force_weights=weights,
        stop=stop,
        stop_reason=reason,
        **errors,
    )


def _selection(value: Any) -> NftSelection:
    return value if isinstance(value, NftSelection) else NftSelection.model_validate(value)


@store_job
def nft_label_chunks(selection: Any, config: dict, iteration: int):
    """Replace itself by one ``ChunkOracleMaker`` job per chunk; output: their ``LabelDoc``s."""
    cfg = _config(config)
    sel = _selection(selection)
    if not sel.structures:
        return []
    maker = ChunkOracleMaker(calculator=cfg.oracle.calculator.spec())
    jobs = []
    for i, (doc, weights) in enumerate(zip(sel.structures, sel.force_weights)):
        j = maker.make(doc, weights, campaign=cfg.name, iteration=iteration)
        j.name = f"chunk oracle it{iteration} #{i}"
        jobs.append(j)
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name=f"label chunks it{iteration}"))


def _ok_ids(labels: list[Any]) -> list[str]:
    from almat.learner.jobs import flatten_labels

    out = []
    for lab in flatten_labels(labels):
        if isinstance(lab, str):
            out.append(lab)
            continue
        doc = lab if isinstance(lab, LabelDoc) else LabelDoc.model_validate(lab)
        if doc.ok:
            out.append(doc.label_id)
    return list(dict.fromkeys(out))


@store_job(output_schema=NftIterationDoc)
def nft_decide(config: dict, iteration: int, committee: Any, selection: Any, labels: list[Any],
               train_label_ids: list[Any], history: list[float] | None = None):
    """Record the iteration in ``nft_iterations`` and stop, or add the next iteration to the flow."""
    from almat.nft.flow import nft_iteration_flow

    cfg = _config(config)
    sel = _selection(selection)
    labels = [lab if isinstance(lab, LabelDoc) else LabelDoc.model_validate(lab) for lab in labels or []]
    by_hash = {lab.structure_hash: lab for lab in labels}
    chunks = []
    for record in sel.chunks:
        lab = by_hash.get(record.structure_hash)
        chunks.append(record.model_copy(update={"label_id": lab.label_id if lab else None,
                                                "label_ok": lab.ok if lab else None}))
    train_ids = _ok_ids(train_label_ids)
    new_ids = [lab.label_id for lab in labels if lab.ok]
    all_ids = list(dict.fromkeys(train_ids + new_ids))
    c = cfg.chunks
    doc = NftIterationDoc(
        campaign=cfg.name,
        iteration=iteration,
        model_ids=sel.model_ids,
        n_train_labels=len(train_ids),
        target_hash=sel.target_hash,
        n_target_atoms=sel.n_target_atoms,
        atomic_uncertainties=sel.atomic_uncertainties,
        max_uncertainty=sel.max_uncertainty,
        mean_uncertainty=sel.mean_uncertainty,
        coefficient=c.coefficient,
        percentile=c.percentile,
        threshold=sel.threshold,
        cutoff=c.cutoff,
        mode=c.mode,
        uncertain_atoms=sel.uncertain_atoms,
        central_atoms=sel.central_atoms,
        skipped_atoms=sel.skipped_atoms,
        chunks=chunks,
        chunk_label_ids=[lab.label_id for lab in labels],
        n_chunks=len(chunks),
        n_labelled=len(new_ids),
        n_failed_labels=sum(1 for lab in labels if not lab.ok),
        target_force_rmse=sel.target_force_rmse,
        target_max_force_error=sel.target_max_force_error,
        stop=sel.stop,
        stop_reason=sel.stop_reason,
    )
    db = require_db()
    try:
        db.upsert("nft_iterations", [doc])
        campaign = db.campaigns.query_one({"name": cfg.name}) or {}
        if "name" in campaign:
            n_labels = db.labels.count({"campaign": cfg.name, "status": "ok"})
            campaign.update({
                "status": (_STATUS[sel.stop] if sel.stop else CampaignStatus.running).value,
                "n_iterations": iteration + 1,
                "n_labels": n_labels,
                "stop_reason": sel.stop_reason,
                "updated_at": utcnow(),
            })
            db.upsert("campaigns", [CampaignDoc.from_store(campaign)])
    finally:
        db.close()
    if sel.stop is not None:
        return doc
    next_flow = nft_iteration_flow(cfg, iteration + 1, all_ids, sel.model_ids,
                                   history=[*(history or []), sel.max_uncertainty])
    return Response(output=doc, addition=next_flow)
