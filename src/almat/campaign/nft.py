"""The NFT explorer (``kind: nft``, nearsighted force training, ``docs/nft.md``): the committee's per-atom
uncertainty on a large target; chunks cut around its most uncertain atoms are labelled, and trained on
the forces of their central atoms only (force weights 1 there, 0 elsewhere; energy weight 0)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from almat.campaign.explorer import Decision, Exploration, Explorer
from almat.campaign.jobs import initial_structures, ok_ids
from almat.campaign.sources import load_target
from almat.learner.committee import Committee
from almat.sampler.chunks import atomic_uncertainty, check_target_size, cut_chunks, perpendicular_widths
from almat.sampler.chunks import select_uncertain_atoms
from almat.schemas import CampaignStatus, NftChunkRecord, NftIterationDoc, StructureDoc, StructureSource
from almat.schemas import to_atoms, to_structure
from almat.stores import require_db, store_job

logger = logging.getLogger(__name__)

_STATUS = {"stop_delta": CampaignStatus.converged, "max_iterations": CampaignStatus.max_iterations,
           "steps_not_improved": CampaignStatus.stopped}


def target_doc(config) -> StructureDoc:
    return StructureDoc(structure=load_target(config), source=StructureSource.init, campaign=config.name,
                        iteration=-1, metadata={"role": "nft-target"})


def stop_decision(max_uncertainty: float, history: list[float], iteration: int, config) -> tuple[str | None, str | None]:
    """``(stop kind, reason)`` for this iteration's max target uncertainty, or ``(None, None)`` to go on.
    ``history``: the max uncertainties of the earlier iterations; an iteration improves when its max
    uncertainty is lower than every earlier one."""
    conv = config.convergence
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


class NftExploration(Exploration):
    """The iteration's record as far as the exploration knows it: the target's atomic uncertainties, the
    threshold, the central and skipped atoms, the chunks (without their labels yet)."""

    record: NftIterationDoc


@store_job(output_schema=NftExploration)
def explore_nft(config, iteration: int, committee: Any, train_ids: list, history: list[float]) -> NftExploration:
    """Per-atom uncertainty of the target with this iteration's committee, the stop decision and, when
    the campaign goes on, the chunks around the most uncertain atoms (stored as ``nft-chunk`` structures)."""
    c = config.chunks
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    target = target_doc(config)
    atoms = to_atoms(target.structure)
    db = require_db()
    try:
        models = Committee.from_store(db, model_ids, device=config.learner.hyperparameters.device)
        u = atomic_uncertainty(models, atoms, c.coefficient)
        errors = {}
        if config.target.evaluate_with_oracle:
            reference = atoms.copy()
            reference.calc = config.oracle.calculator.spec().load()
            df = models.predict([atoms]).mean_forces(0) - reference.get_forces()
            errors = {"target_force_rmse": float(np.sqrt(np.mean(df ** 2))),
                      "target_max_force_error": float(np.linalg.norm(df, axis=1).max())}
        max_u = float(u.max())
        stop, reason = stop_decision(max_u, history, iteration, config)
        if stop is None:
            threshold, uncertain, groups, chunks = cut_chunks(
                atoms, u, c.percentile, c.cutoff, c.max_chunks, mode=c.mode, merge_distance=c.merge_distance,
                vacuum=c.vacuum, cell=c.periodic_cell() if c.mode == "periodic" else None,
                min_distance_factor=c.min_distance_factor)
            central, skipped = list(groups.central_atoms), list(groups.skipped)
        else:  # record what would have been picked, cut nothing
            (threshold, uncertain), chunks, central, skipped = select_uncertain_atoms(u, c.percentile), [], [], []
        # a chunk the committee was trained on already (same structure hash) would add nothing: skipped this time
        earlier = {d["structure_hash"] for d in db.labels.query({"label_id": {"$in": ok_ids(train_ids)}},
                                                                properties=["structure_hash"])}
        structures, records, weights = [], [], []
        for chunk in chunks:
            doc = StructureDoc(structure=to_structure(chunk.atoms), source=StructureSource.nft_chunk,
                               campaign=config.name, iteration=iteration, parent=target.structure_hash,
                               metadata={"mode": chunk.mode, "cutoff": chunk.cutoff,
                                         "central_atoms": chunk.central_target,
                                         "central_atoms_chunk": chunk.central_chunk})
            if doc.structure_hash in earlier:
                central = [i for i in central if i not in chunk.central_target]
                skipped += chunk.central_target
                logger.info("NFT iteration %d: the committee was trained on the chunk around atom(s) %s; skipped",
                            iteration, chunk.central_target)
                continue
            structures.append(doc)
            weights.append(chunk.force_weights.tolist())
            records.append(NftChunkRecord(structure_hash=doc.structure_hash, natoms=len(chunk.atoms),
                                          central_atoms=chunk.central_target, central_atoms_chunk=chunk.central_chunk,
                                          target_indices=chunk.target_indices))
        db.upsert("structures", structures)
    finally:
        db.close()
    logger.info("NFT iteration %d: max target uncertainty %.4f eV/Å (threshold %.4f at the %gth percentile); "
                "%d chunk(s) of %s atoms%s", iteration, max_u, threshold, c.percentile, len(records),
                ", ".join(str(r.natoms) for r in records) or "0", f"; stop: {reason}" if reason else "")
    record = NftIterationDoc(
        campaign=config.name, iteration=iteration, model_ids=model_ids, target_hash=target.structure_hash,
        n_target_atoms=len(atoms), atomic_uncertainties=[float(x) for x in u], max_uncertainty=max_u,
        mean_uncertainty=float(u.mean()), coefficient=c.coefficient, percentile=c.percentile,
        threshold=float(threshold), cutoff=c.cutoff, mode=c.mode, uncertain_atoms=list(uncertain),
        central_atoms=central, skipped_atoms=skipped, chunks=records, n_chunks=len(records), stop=stop,
        stop_reason=reason, **errors)
    return NftExploration(campaign=config.name, iteration=iteration, candidates=structures, force_weights=weights,
                          stop=stop, stop_reason=reason, record=record)


@dataclass
class NftExplorer(Explorer):
    """Chunks of a large target around the atoms where the committee is most uncertain."""

    kind = "nft"
    records = "nft_iterations"
    record_class = NftIterationDoc
    exploration_class = NftExploration

    def check(self, config) -> None:
        """A target too small for the chunks is refused before any job runs, naming the sizes."""
        atoms = to_atoms(load_target(config))
        check_target_size(atoms, config.chunks.cutoff)
        if config.chunks.mode == "periodic":
            width, cell = float(perpendicular_widths(atoms.cell).min()), config.chunks.periodic_cell()
            if max(cell) > width:
                raise ValueError(f"the periodic chunk cell {cell} Å is not smaller than the target (shortest "
                                 f"perpendicular width {width:.2f} Å); use cluster chunks or a larger target")

    def elements(self, config):
        return [*super().elements(config), *(el.symbol for el in load_target(config).composition.elements)]

    def setup(self, maker, db):
        db.upsert("structures", [target_doc(maker.config)])

    def initial(self, maker, setup):
        init = initial_structures(maker.config, maker.campaign_ref)
        init.name = "initial structures"
        label = maker.label(init.output, -1, "initial")
        return [maker.declare(init, "initial"), label], label.output, []

    def explore(self, maker, iteration, committee, train_ids, state):
        j = explore_nft(maker.config, iteration, committee, train_ids, list(state or []))
        j.name = f"explore it{iteration}"
        return [maker.declare(j, "explore")], j.output

    def decide(self, maker, db, iteration, committee, exploration, labels, held_out, train_ids, state):
        by_hash = {lab.structure_hash: lab for lab in labels}
        chunks = [r.model_copy(update={"label_id": by_hash[r.structure_hash].label_id, "label_ok": by_hash[
            r.structure_hash].ok} if r.structure_hash in by_hash else {}) for r in exploration.record.chunks]
        new_ids = ok_ids(labels)
        record = exploration.record.model_copy(update={
            "n_train_labels": len(train_ids), "chunks": chunks, "chunk_label_ids": [lab.label_id for lab in labels],
            "n_labelled": len(new_ids), "n_failed_labels": sum(not lab.ok for lab in labels)})
        status = _STATUS[exploration.stop] if exploration.stop else CampaignStatus.running
        return Decision(record, status, exploration.stop_reason, list(dict.fromkeys(train_ids + new_ids)),
                        [*(state or []), record.max_uncertainty])

    def resume_state(self, db, config, last, label_ids):
        return label_ids, [r.max_uncertainty for r in self.load_records(db, config.name)]
