"""The jobs of a pool-based campaign: set up the pool, label pool indices, score + acquire + decide."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from jobflow import Flow, Response

from almat.campaign.jobs import new_campaign_doc
from almat.pool.config import PoolCampaignConfig
from almat.pool.core import PoolState, acquire, decide_stop, test_errors
from almat.pool.documents import PoolIterationDoc
from almat.schemas import CampaignDoc, CampaignStatus, LabelDoc, StructureDoc, StructureSource, to_structure, utcnow
from almat.stores import CampaignDB, store_job, require_db

logger = logging.getLogger(__name__)

__all__ = ["label_pool", "load_pool_frames", "pool_step", "setup_pool"]




def _config(config: dict | PoolCampaignConfig) -> PoolCampaignConfig:
    return config if isinstance(config, PoolCampaignConfig) else PoolCampaignConfig.model_validate(config)


def _pool_docs(db: CampaignDB, campaign: str, indices: list[int] | None = None) -> list[StructureDoc]:
    criteria: dict[str, Any] = {"campaign": campaign, "source": StructureSource.pool.value}
    if indices is not None:
        criteria["metadata.pool_index"] = {"$in": [int(i) for i in indices]}
    docs = [StructureDoc.from_store(d) for d in db.structures.query(criteria)]
    return sorted(docs, key=lambda d: d.metadata["pool_index"])


def load_pool_frames(db: CampaignDB, campaign: str):
    """The stored pool of a campaign as ASE Atoms, in pool-index order (``info`` has ``pool_index``)."""
    from almat.schemas import to_atoms

    frames = []
    for i, doc in enumerate(_pool_docs(db, campaign)):
        if doc.metadata["pool_index"] != i:
            raise RuntimeError(f"pool of {campaign!r} is incomplete in the store: no structure with pool_index {i}")
        a = to_atoms(doc.structure)
        a.info.update({"pool_index": i, **({"temperature": doc.metadata["temperature"]}
                                           if doc.metadata.get("temperature") is not None else {})})
        frames.append(a)
    return frames


@store_job
def setup_pool(config: dict) -> dict:
    """Register the campaign, store the pool (``source: pool``, ``metadata.pool_index``) and split it:
    the held-out part and the ``n_init`` random initial picks. Returns ``{name, n_pool, state}``."""
    cfg = _config(config)
    db = require_db()
    try:
        existing = db.campaigns.query_one({"name": cfg.name})
        if existing is not None and existing.get("config_fingerprint") != cfg.fingerprint():
            raise ValueError(f"campaign {cfg.name!r} already exists with a different configuration; "
                             "choose another name")
        frames = cfg.load_pool(db)
        state = PoolState.create(len(frames), cfg.n_init, cfg.test_fraction, cfg.n_test, seed=cfg.seed)
        held_out = set(state.test_indices)
        docs = []
        for i, atoms in enumerate(frames):
            meta = {"pool_index": i, "held_out": i in held_out}
            for key in ("pool_origin", "temperature", "perturbation"):
                if atoms.info.get(key) is not None:
                    meta[key] = atoms.info[key]
            docs.append(StructureDoc(structure=to_structure(atoms), source=StructureSource.pool, campaign=cfg.name,
                                     iteration=None, metadata=meta))
        db.upsert("structures", docs)
        doc = new_campaign_doc(cfg, [s for a in frames for s in a.get_chemical_symbols()])
        db.upsert("campaigns", [doc])
    finally:
        db.close()
    logger.info("pool campaign %s: %d structures, %d held out, %d initial", cfg.name, len(frames),
                len(state.test_indices), len(state.init))
    return {"name": cfg.name, "n_pool": len(frames), "state": state.to_dict()}


@store_job
def label_pool(indices: list[int], config: dict, iteration: int, campaign: str | None = None):
    """Replace itself by one oracle job per pool index; its output is the list of ``LabelDoc``s,
    in the order of ``indices``. ``campaign`` (the setup job's output) orders it after the setup."""
    cfg = _config(config)
    if not indices:
        return []
    db = require_db()
    try:
        docs = {d.metadata["pool_index"]: d for d in _pool_docs(db, cfg.name, indices)}
    finally:
        db.close()
    missing = [i for i in indices if i not in docs]
    if missing:
        raise KeyError(f"pool indices {missing[:5]} of {cfg.name!r} are not in the structures collection")
    maker = cfg.oracle.label_maker()
    jobs = []
    for i in indices:
        j = maker.make(docs[i], campaign=cfg.name, iteration=iteration)
        j.name = f"oracle it{iteration} pool#{i}"
        jobs.append(j)
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name=f"label pool it{iteration}"))


def _as_labels(items: list[Any]) -> list[LabelDoc | None]:
    out = []
    for lab in items or []:
        if lab is None:
            out.append(None)
        else:
            out.append(lab if isinstance(lab, LabelDoc) else LabelDoc.model_validate(
                {k: v for k, v in lab.items() if k not in ("_id", "last_updated")}))
    return out


def _ok_ids(labels: list[LabelDoc | None]) -> list[str]:
    return [lab.label_id for lab in labels if lab is not None and lab.ok]


@store_job(output_schema=PoolIterationDoc)
def pool_step(
    config: dict,
    iteration: int,
    state: dict,
    new_indices: list[int],
    new_labels: list[Any],
    previous_label_ids: list[str],
    committee: dict,
    test_labels: list[Any],
):
    """Score the committee on the held-out labels, record the iteration, decide; unless it stops,
    acquire the next batch and add the next iteration (label → train → this step) to the flow."""
    from almat.learner.committee import Committee
    from almat.learner.jobs import load_labels
    from almat.pool.flow import pool_iteration_flow

    start = time.perf_counter()
    cfg = _config(config)
    pool_state = PoolState.from_dict(state)
    labels = _as_labels(new_labels)
    failed = [i for i, lab in zip(new_indices, labels) if lab is None or not lab.ok]
    pool_state.add(new_indices, failed)
    label_ids = list(dict.fromkeys([*previous_label_ids, *_ok_ids(labels)]))
    test_ids = test_labels if test_labels and isinstance(test_labels[0], str) else _ok_ids(_as_labels(test_labels))
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    device = cfg.learner.hyperparameters.device
    db = require_db()
    try:
        com = Committee.from_store(db, model_ids, device=device)
        test_frames = [lab.to_atoms() for lab in load_labels(db, test_ids)]
        errors = test_errors(com, test_frames)
        stop, n_next = decide_stop(pool_state, iteration, errors, cfg.budget, cfg.total_budget, cfg.max_iterations,
                                   cfg.target_force_rmse)
        acquired_idx: list[int] = []
        acquired_dev: list[float | None] = []
        if stop is None:
            frames = load_pool_frames(db, cfg.name)
            training = [lab.to_atoms() for lab in load_labels(db, label_ids)]
            seed = cfg.acquisition.seed if cfg.acquisition.seed is not None else cfg.seed
            rng = np.random.default_rng([seed, iteration + 1])
            picked = acquire(frames, pool_state, cfg.acquisition.name, n_next, com, iteration, rng,
                             cfg.acquisition.options, training_frames=training)
            acquired_idx = picked.indices
            acquired_dev = [None if not math.isfinite(d) else float(d) for d in picked.model_deviation]
            if not acquired_idx:
                stop = f"acquisition {cfg.acquisition.name!r} picked nothing new"
        doc = PoolIterationDoc(
            campaign=cfg.name,
            iteration=iteration,
            acquisition=cfg.acquisition.name,
            pool_size=pool_state.n_pool,
            test_indices=pool_state.test_indices,
            new_indices=list(new_indices),
            labelled_indices=list(pool_state.labelled),
            failed_indices=list(pool_state.failed),
            acquired_indices=acquired_idx,
            acquired_deviation=acquired_dev,
            n_labels=len(pool_state.labelled),
            n_train_labels=len(label_ids),
            n_unlabelled=len(pool_state.unlabelled),
            label_ids=label_ids,
            test_label_ids=list(test_ids),
            model_ids=model_ids,
            test_errors=errors,
            stop_reason=stop,
            wall_time=time.perf_counter() - start,
        )
        db.upsert("pool_iterations", [doc])
        if stop is None:
            status = CampaignStatus.running
        elif stop.startswith("test force RMSE"):
            status = CampaignStatus.converged
        elif stop.startswith("max_iterations"):
            status = CampaignStatus.max_iterations
        else:
            status = CampaignStatus.stopped
        campaign = db.campaigns.query_one({"name": cfg.name})
        if campaign is not None:
            campaign.update({"status": status.value, "n_iterations": iteration + 1, "stop_reason": stop,
                             "n_labels": len(label_ids) + len(test_ids), "updated_at": utcnow()})
            db.upsert("campaigns", [CampaignDoc.from_store(campaign)])
    finally:
        db.close()
    f = errors.force_rmse
    logger.info("pool %s iteration %d: %d labels, test force RMSE %s%s", cfg.name, iteration, doc.n_labels,
                "n/a" if f is None else f"{f:.4f} eV/Å", f"; stop: {stop}" if stop else
                f"; acquired {len(acquired_idx)} ({cfg.acquisition.name})")
    if stop is not None:
        return doc
    next_flow = pool_iteration_flow(cfg, iteration + 1, pool_state.to_dict(), acquired_idx, label_ids, model_ids,
                                    list(test_ids))
    return Response(output=doc, addition=next_flow)
