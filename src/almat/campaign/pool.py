"""The pool explorer (``kind: pool``): a fixed pool of structures, a held-out part (labelled once, never
acquired), ``n_init`` random initial labels; each iteration scores the committee on the held-out part
and, unless a stop rule fires, acquires a batch of ``budget`` structures with an acquisition function
(``committee``: highest committee force deviation; ``fps``; ``weighted``; ``random``).

:class:`PoolState`, :func:`acquire` and :func:`decide_stop` are plain functions of the pool, testable
without jobflow or a store."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from pydantic import Field, model_validator

from almat.campaign.explorer import Decision, Exploration, Explorer
from almat.campaign.jobs import as_labels, ok_ids, test_errors
from almat.campaign.sources import load_pool
from almat.learner.committee import Committee
from almat.learner.jobs import load_labels
from almat.schemas import CampaignStatus, LabelDoc, PoolIterationDoc, StructureDoc, StructureSource, TestErrors
from almat.schemas import to_atoms, to_structure
from almat.schemas.section import Section
from almat.select.fps import SelectionContext, build_selection_context, call_policy, policy_needs_descriptors
from almat.select.fps import FPSSelection
from almat.select.lookup import acquisition_policy
from almat.select.policies import RandomSelection
from almat.stores import CampaignDB, require_db, store_job

logger = logging.getLogger(__name__)


class PoolState(Section):
    """Which pool indices are held out, labelled (in order, ``failed`` among them: consumed, never
    retried, not trained on), and still available; ``init`` are the random initial picks, and
    ``test_label_ids`` the labels of the held-out part."""

    n_pool: int
    test_indices: list[int] = Field(default_factory=list)
    labelled: list[int] = Field(default_factory=list)
    failed: list[int] = Field(default_factory=list)
    init: list[int] = Field(default_factory=list)
    new: list[int] = Field(default_factory=list, description="the last batch added")
    test_label_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid(self):
        if self.n_pool < 1:
            raise ValueError("the pool is empty: give at least one structure")
        bad = [i for i in (*self.test_indices, *self.labelled) if not 0 <= int(i) < self.n_pool]
        if bad:
            raise ValueError(f"pool indices out of range 0..{self.n_pool - 1}: {bad[:5]}")
        if set(self.test_indices) & set(self.labelled):
            raise ValueError("held-out (test) indices can never be labelled for training")
        return self

    @classmethod
    def create(cls, n_pool: int, n_init: int, test_fraction: float = 0.0, n_test: int | None = None,
               seed: int = 0) -> "PoolState":
        """Split a pool of ``n_pool``: a random held-out part (``n_test``, or ``test_fraction`` of the pool),
        then ``n_init`` random initial picks from the rest."""
        if n_pool < 1:
            raise ValueError("the pool is empty: give at least one structure")
        n_test = int(round(test_fraction * n_pool)) if n_test is None else n_test
        if not 0 <= n_test < n_pool:
            raise ValueError(f"the held-out part ({n_test}) leaves nothing to learn from in a pool of {n_pool}")
        order = [int(i) for i in np.random.default_rng(seed).permutation(n_pool)]
        rest = order[n_test:]
        if n_init < 2:
            raise ValueError(f"n_init must be >= 2 (a committee needs 2 labels to train), got {n_init}")
        if n_init > len(rest):
            raise ValueError(f"n_init ({n_init}) is larger than the pool without its held-out part ({len(rest)})")
        return cls(n_pool=n_pool, test_indices=sorted(order[:n_test]), init=rest[:n_init])

    @property
    def unlabelled(self) -> list[int]:
        """Indices that may still be acquired (not held out, not yet labelled), ascending."""
        taken = set(self.test_indices) | set(self.labelled)
        return [i for i in range(self.n_pool) if i not in taken]

    @property
    def trained_on(self) -> list[int]:
        return [i for i in self.labelled if i not in set(self.failed)]

    def add(self, indices: Sequence[int], failed: Sequence[int] = ()) -> None:
        """Mark indices as labelled (``failed``: those whose label failed)."""
        indices = [int(i) for i in indices]
        clash = set(indices) & (set(self.test_indices) | set(self.labelled))
        if clash:
            raise ValueError(f"pool indices {sorted(clash)[:5]} are held out or already labelled")
        if len(set(indices)) != len(indices):
            raise ValueError("the same pool index twice in one batch")
        self.labelled.extend(indices)
        self.new = indices
        self.failed.extend(int(i) for i in failed if int(i) in indices)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoolState":
        return cls.model_validate({k: v for k, v in d.items() if not k.startswith("@")})


@dataclass
class Acquired:
    """What :func:`acquire` picked: pool indices (best first) and their committee deviations."""

    indices: list[int]
    model_deviation: list[float]
    requested: int
    capped: bool = False
    n_candidates: int = 0


@dataclass
class PoolCandidate:
    """An unlabelled pool configuration as the selection policies see it."""

    index: int
    structure: Atoms
    model_deviation: float = float("nan")
    energy_deviation: float | None = None
    temperature: float | None = None


def cap_budget(budget: int, n_available: int, what: str = "remaining pool") -> int:
    """``budget`` capped to what is available, with a warning when it had to be capped."""
    if budget > n_available:
        msg = f"budget {budget} is larger than the {what} ({n_available}); acquiring {n_available}"
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)
        return n_available
    return budget


def acquire(frames: Sequence[Atoms], state: PoolState, acquisition: str | Any, budget: int, committee=None,
            iteration: int = 0, rng: np.random.Generator | None = None, options: dict[str, Any] | None = None,
            training_frames: Sequence[Atoms] | None = None) -> Acquired:
    """Pick up to ``budget`` unlabelled pool indices with the acquisition function.

    ``frames`` is the whole pool (indexed like ``state``); ``committee`` scores the candidates (its max
    force deviation, and its descriptors for FPS and weighted acquisition, seeded by ``training_frames``,
    by default the labelled ones). ``iteration`` sets the weighted acquisition's ``w``. A budget larger
    than the remaining pool is capped, with a warning.
    """
    if len(frames) != state.n_pool:
        raise ValueError(f"{len(frames)} frames for a pool of {state.n_pool}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    policy = acquisition_policy(acquisition, options) if isinstance(acquisition, str) else acquisition
    rng = rng if rng is not None else np.random.default_rng(iteration)
    available = state.unlabelled
    n = cap_budget(budget, len(available))
    if n == 0:
        return Acquired([], [], budget, capped=True)
    needs_deviation = not isinstance(policy, (RandomSelection, FPSSelection))
    needs_descriptors = policy_needs_descriptors(policy, iteration)
    if committee is None and (needs_deviation or needs_descriptors):
        raise ValueError(f"acquisition {getattr(policy, 'name', policy)!r} needs a committee")
    atoms = [frames[i] for i in available]
    deviation, energy_dev = np.full(len(available), np.nan), None
    if needs_deviation:
        pred = committee.predict(atoms)
        deviation, energy_dev = pred.model_deviation, pred.energy_deviation
    candidates = [PoolCandidate(i, a, float(deviation[k]), None if energy_dev is None else float(energy_dev[k]),
                                a.info.get("temperature")) for k, (i, a) in enumerate(zip(available, atoms))]
    context = SelectionContext(iteration=iteration)
    if needs_descriptors:
        training = [frames[i] for i in state.trained_on] if training_frames is None else list(training_frames)
        context = build_selection_context(candidates, committee, training, iteration)
    picks = call_policy(policy, candidates, n, rng, context)
    return Acquired([candidates[k].index for k in picks], [candidates[k].model_deviation for k in picks],
                    budget, capped=n < budget, n_candidates=len(candidates))


def decide_stop(state: PoolState, iteration: int, errors: TestErrors, budget: int, total_budget: int | None = None,
                max_iterations: int | None = None, target_force_rmse: float | None = None
                ) -> tuple[str | None, str | None, int]:
    """``(stop kind, reason, next batch size)`` after ``iteration``; kind None goes on. Checked in this
    order: the target test force RMSE, ``max_iterations``, the total budget (training labels, ``n_init``
    included), the exhausted pool."""
    f = errors.force_rmse
    if target_force_rmse is not None and f is not None and f <= target_force_rmse:
        return "converged", f"test force RMSE {f:.4f} <= target {target_force_rmse} eV/Å", 0
    if max_iterations is not None and iteration + 1 >= max_iterations:
        return "max_iterations", f"max_iterations ({max_iterations}) reached", 0
    n_next = budget
    if total_budget is not None:
        left = total_budget - len(state.labelled)
        if left <= 0:
            return "stopped", f"total budget ({total_budget} labels) spent", 0
        n_next = min(n_next, left)
    if not state.unlabelled:
        return "stopped", f"pool exhausted (all {state.n_pool - len(state.test_indices)} non-held-out " \
                          "structures labelled)", 0
    return None, None, n_next


def pool_docs(db: CampaignDB, campaign: str, indices: Sequence[int] | None = None) -> list[StructureDoc]:
    """The stored pool structures of a campaign (``source: pool``), by pool index."""
    criteria: dict[str, Any] = {"campaign": campaign, "source": StructureSource.pool.value}
    if indices is not None:
        criteria["metadata.pool_index"] = {"$in": [int(i) for i in indices]}
    docs = sorted((StructureDoc.from_store(d) for d in db.structures.query(criteria)),
                  key=lambda d: d.metadata["pool_index"])
    if indices is not None and len(docs) != len(set(indices)):
        raise KeyError(f"pool indices of {campaign!r} are missing from the structures collection")
    return docs


def pool_frames(db: CampaignDB, campaign: str) -> list[Atoms]:
    """The stored pool of a campaign as ASE Atoms, in pool-index order."""
    frames = []
    for i, doc in enumerate(pool_docs(db, campaign)):
        if doc.metadata["pool_index"] != i:
            raise RuntimeError(f"pool of {campaign!r} is incomplete in the store: no structure with pool_index {i}")
        frames.append(to_atoms(doc.structure))
        if doc.metadata.get("temperature") is not None:
            frames[-1].info["temperature"] = doc.metadata["temperature"]
    return frames


def _failed(db: CampaignDB, campaign: str, indices: Sequence[int], labels: Sequence[LabelDoc]) -> list[int]:
    """The pool indices among ``indices`` whose label is not ok (or missing)."""
    ok = {lab.structure_hash for lab in labels if lab.ok}
    return [d.metadata["pool_index"] for d in pool_docs(db, campaign, indices) if d.structure_hash not in ok]


@store_job
def start_pool(campaign: str, state: PoolState, test_labels: list, init_labels: list) -> PoolState:
    """The pool state of iteration 0: the split, the initial picks labelled, the held-out labels."""
    db = require_db()
    try:
        state.add(state.init, _failed(db, campaign, state.init, as_labels(init_labels)))
    finally:
        db.close()
    state.test_label_ids = ok_ids(test_labels)
    return state


class PoolExploration(Exploration):
    """The committee's errors on the held-out part, and the batch it acquired (with its deviations)."""

    test_errors: TestErrors = Field(default_factory=TestErrors)
    acquired_indices: list[int] = Field(default_factory=list)
    acquired_deviation: list[float | None] = Field(default_factory=list)


@store_job(output_schema=PoolExploration)
def explore_pool(config, iteration: int, committee: Any, train_ids: list, state: PoolState) -> PoolExploration:
    """Score the committee on the held-out labels and, unless a stop rule fires, acquire the next batch."""
    model_ids = list(committee["model_ids"] if isinstance(committee, dict) else committee.model_ids)
    db = require_db()
    try:
        com = Committee.from_store(db, model_ids, device=config.learner.hyperparameters.device)
        errors = test_errors(com, load_labels(db, state.test_label_ids))
        kind, stop, n_next = decide_stop(state, iteration, errors, config.budget, config.total_budget,
                                         config.max_iterations, config.target_force_rmse)
        picked = Acquired([], [], 0)
        if kind is None:
            seed = config.acquisition.seed if config.acquisition.seed is not None else config.seed
            picked = acquire(pool_frames(db, config.name), state, config.acquisition.name, n_next, com, iteration,
                             np.random.default_rng([seed, iteration + 1]), config.acquisition.options,
                             training_frames=[lab.to_atoms() for lab in load_labels(db, train_ids)])
            if not picked.indices:
                kind, stop = "stopped", f"acquisition {config.acquisition.name!r} picked nothing new"
        by_index = {d.metadata["pool_index"]: d for d in pool_docs(db, config.name, picked.indices)}
    finally:
        db.close()
    f = errors.force_rmse
    logger.info("pool %s iteration %d: %d labels, test force RMSE %s%s", config.name, iteration, len(state.labelled),
                "n/a" if f is None else f"{f:.4f} eV/Å",
                f"; stop: {stop}" if stop else f"; acquired {len(picked.indices)} ({config.acquisition.name})")
    return PoolExploration(
        campaign=config.name, iteration=iteration, candidates=[by_index[i] for i in picked.indices], stop=kind,
        stop_reason=stop, test_errors=errors, acquired_indices=picked.indices,
        acquired_deviation=[None if not math.isfinite(d) else float(d) for d in picked.model_deviation])


@dataclass
class PoolExplorer(Explorer):
    """A fixed pool: the committee scores it, the acquisition function picks from it."""

    kind = "pool"
    records = "pool_iterations"
    record_class = PoolIterationDoc
    exploration_class = PoolExploration

    def elements(self, config):
        if any(s.query is not None for s in config.pool):
            return []
        return [s for a in load_pool(config) for s in a.get_chemical_symbols()]

    def setup(self, maker, db):
        """Store the pool (``source: pool``, ``metadata.pool_index``) and split it; the held-out and the
        initial structures come back to be labelled."""
        cfg = maker.config
        frames = load_pool(cfg, db)
        state = PoolState.create(len(frames), cfg.n_init, cfg.test_fraction, cfg.n_test, seed=cfg.seed)
        docs = []
        for i, atoms in enumerate(frames):
            meta = {"pool_index": i, "held_out": i in set(state.test_indices)}
            meta.update({k: atoms.info[k] for k in ("pool_origin", "temperature", "perturbation")
                         if atoms.info.get(k) is not None})
            docs.append(StructureDoc(structure=to_structure(atoms), source=StructureSource.pool, campaign=cfg.name,
                                     iteration=None, metadata=meta))
        db.upsert("structures", docs)
        logger.info("pool campaign %s: %d structures, %d held out, %d initial", cfg.name, len(frames),
                    len(state.test_indices), len(state.init))
        return {"state": state, "test": [docs[i] for i in state.test_indices], "init": [docs[i] for i in state.init]}

    def initial(self, maker, setup):
        test, init = maker.label(setup["test"], -1, "held-out"), maker.label(setup["init"], -1, "initial")
        start = start_pool(maker.config.name, setup["state"], test.output, init.output)
        start.name = "start pool"
        return [test, init, maker.declare(start, "select")], init.output, start.output

    def explore(self, maker, iteration, committee, train_ids, state):
        j = explore_pool(maker.config, iteration, committee, train_ids, state)
        j.name = f"explore it{iteration}"
        return [maker.declare(j, "explore")], j.output

    def held_out_ids(self, db, name, config):
        last = db.pool_iterations.query_one({"campaign": name}, properties=["test_label_ids"])
        return set(last["test_label_ids"]) if last else set()

    def decide(self, maker, db, iteration, committee, exploration, labels, held_out, train_ids, state):
        cfg, x = maker.config, exploration
        state = state if isinstance(state, PoolState) else PoolState.model_validate(state)
        status = {None: CampaignStatus.running, "converged": CampaignStatus.converged,
                  "max_iterations": CampaignStatus.max_iterations}.get(exploration.stop, CampaignStatus.stopped)
        record = PoolIterationDoc(
            campaign=cfg.name, iteration=iteration, acquisition=cfg.acquisition.name, pool_size=state.n_pool,
            test_indices=state.test_indices, new_indices=state.new, labelled_indices=state.labelled,
            failed_indices=state.failed, acquired_indices=x.acquired_indices,
            acquired_deviation=x.acquired_deviation, n_labels=len(state.labelled), n_train_labels=len(train_ids),
            n_unlabelled=len(state.unlabelled), label_ids=train_ids, test_label_ids=state.test_label_ids,
            model_ids=committee.model_ids, test_errors=x.test_errors,
            stop_reason=exploration.stop_reason)
        if status == CampaignStatus.running:
            state = state.model_copy(deep=True)
            state.add(x.acquired_indices, _failed(db, cfg.name, x.acquired_indices, labels))
        return Decision(record, status, exploration.stop_reason, list(dict.fromkeys(train_ids + ok_ids(labels))),
                        state)

    def resume_state(self, db, config, last, label_ids):
        state = PoolState(n_pool=last["pool_size"], test_indices=last["test_indices"],
                          labelled=last["labelled_indices"], failed=last["failed_indices"],
                          test_label_ids=last["test_label_ids"])
        acquired = last["acquired_indices"]
        hashes = {d.structure_hash for d in pool_docs(db, config.name, acquired)}
        labels = [LabelDoc.from_store(x) for x in db.labels.query(
            {"campaign": config.name, "structure_hash": {"$in": sorted(hashes)}})]
        state.add(acquired, _failed(db, config.name, acquired, labels))
        return list(dict.fromkeys(last["label_ids"] + ok_ids(labels))), state
