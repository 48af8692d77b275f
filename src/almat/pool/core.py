"""Pool-based active learning, pure Python (no jobflow, no store).

The pool is a fixed list of configurations (ASE ``Atoms``). A part of it is held out as a test
set (labelled once, never acquired); ``n_init`` random configurations are labelled first; then each
iteration trains a committee on the labels so far, scores it on the test set and, unless a stopping
rule fires, acquires a batch of ``budget`` more configurations with an acquisition function
(``committee``: highest committee force deviation; ``fps``; ``weighted``; ``random``), which the
oracle labels for the next iteration.

>>> state = PoolState.create(100, n_init=8, test_fraction=0.2, seed=0)          # doctest: +SKIP
>>> result = run_pool_loop(frames, calculator_oracle(EMT), mace_committee_trainer(hp, 2),
...                        n_init=8, budget=8, acquisition="committee")        # doctest: +SKIP

The jobflow version (``almat.pool.flow``) runs the same steps as jobs on the store, with the same
:class:`PoolState`, :func:`acquire`, :func:`test_errors` and :func:`decide_stop`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

from almat.schemas import TestErrors

logger = logging.getLogger(__name__)

__all__ = [
    "ACQUISITIONS",
    "Acquired",
    "PoolCandidate",
    "PoolRunResult",
    "PoolState",
    "acquire",
    "acquisition_names",
    "calculator_oracle",
    "cap_budget",
    "decide_stop",
    "get_acquisition",
    "mace_committee_trainer",
    "run_pool_loop",
    "test_errors",
]

#: acquisition name -> almat selection policy (any other registered selection policy works by its own name)
ACQUISITIONS: dict[str, str] = {
    "committee": "max_deviation",
    "fps": "fps",
    "weighted": "weighted",
    "random": "random",
}


def acquisition_names() -> list[str]:
    """The valid acquisition names: the pool aliases, then the other registered selection policies."""
    import almat.select  # noqa: F401  (registers every built-in policy)
    from almat.select.policies import SELECTION_POLICIES

    return [*ACQUISITIONS, *sorted(set(SELECTION_POLICIES) - set(ACQUISITIONS))]


def get_acquisition(name: str, options: dict[str, Any] | None = None):
    """The selection policy behind an acquisition name; unknown names list the valid ones."""
    import almat.select  # noqa: F401
    from almat.select.policies import SELECTION_POLICIES, get_policy

    policy_name = ACQUISITIONS.get(name, name)
    if policy_name not in SELECTION_POLICIES:
        raise ValueError(f"unknown acquisition {name!r}; valid: {', '.join(acquisition_names())}")
    try:
        return get_policy(policy_name, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for acquisition {name!r}: {exc}") from None


def _needs_deviation(policy) -> bool:
    """Whether the policy looks at the committee deviation (random and FPS don't)."""
    from almat.select import FPSSelection, RandomSelection

    return not isinstance(policy, (RandomSelection, FPSSelection))


def _needs_committee(policy, iteration: int) -> bool:
    from almat.select import policy_needs_descriptors

    return _needs_deviation(policy) or policy_needs_descriptors(policy, iteration)


# -- state -----------------------------------------------------------------------------------------


@dataclass
class PoolState:
    """Which pool indices are held out, labelled (in order), and still available.

    ``labelled`` are the indices sent to the oracle for training, in the order they were acquired
    (``failed`` among them, when the oracle failed: consumed, never retried, not trained on).
    ``init`` are the random initial picks (labelled first).
    """

    n_pool: int
    test_indices: list[int] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    init: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.n_pool < 1:
            raise ValueError("the pool is empty: give at least one structure")
        bad = [i for i in (*self.test_indices, *self.labelled) if not 0 <= int(i) < self.n_pool]
        if bad:
            raise ValueError(f"pool indices out of range 0..{self.n_pool - 1}: {bad[:5]}")
        if set(self.test_indices) & set(self.labelled):
            raise ValueError("held-out (test) indices can never be labelled for training")

    @classmethod
    def create(cls, n_pool: int, n_init: int, test_fraction: float = 0.0, n_test: int | None = None,
               seed: int = 0) -> "PoolState":
        """Split a pool of ``n_pool``: a random held-out part (``n_test``, or ``test_fraction`` of the
        pool), then ``n_init`` random initial labels from the rest."""
        if n_pool < 1:
            raise ValueError("the pool is empty: give at least one structure")
        if n_test is None:
            n_test = int(round(test_fraction * n_pool))
        if n_test < 0:
            raise ValueError(f"n_test must be >= 0, got {n_test}")
        if n_test >= n_pool:
            raise ValueError(f"the held-out part ({n_test}) leaves nothing to learn from in a pool of {n_pool}")
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(n_pool)]
        test = sorted(order[:n_test])
        rest = order[n_test:]
        if n_init < 2:
            raise ValueError(f"n_init must be >= 2 (a committee needs 2 labels to train), got {n_init}")
        if n_init > len(rest):
            raise ValueError(f"n_init ({n_init}) is larger than the pool without its held-out part ({len(rest)})")
        return cls(n_pool, test, [], [], rest[:n_init])

    @property
    def unlabelled(self) -> list[int]:
        """Indices that may still be acquired (not held out, not yet labelled), ascending."""
        taken = set(self.test_indices) | set(self.labelled)
        return [i for i in range(self.n_pool) if i not in taken]

    @property
    def trained_on(self) -> list[int]:
        failed = set(self.failed)
        return [i for i in self.labelled if i not in failed]

    def add(self, indices: Sequence[int], failed: Sequence[int] = ()) -> None:
        """Mark indices as labelled (``failed``: those whose label failed)."""
        indices = [int(i) for i in indices]
        clash = set(indices) & (set(self.test_indices) | set(self.labelled))
        if clash:
            raise ValueError(f"pool indices {sorted(clash)[:5]} are held out or already labelled")
        if len(set(indices)) != len(indices):
            raise ValueError("the same pool index twice in one batch")
        self.labelled.extend(indices)
        self.failed.extend(int(i) for i in failed if int(i) in indices)

    def to_dict(self) -> dict[str, Any]:
        return {"n_pool": self.n_pool, "test_indices": list(self.test_indices), "labelled": list(self.labelled),
                "failed": list(self.failed), "init": list(self.init)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoolState":
        return cls(int(d["n_pool"]), list(d.get("test_indices", [])), list(d.get("labelled", [])),
                   list(d.get("failed", [])), list(d.get("init", [])))


# -- acquisition ------------------------------------------------------------------------------------


@dataclass
class PoolCandidate:
    """An unlabelled pool configuration as the selection policies see it."""

    index: int
    structure: Atoms
    model_deviation: float = float("nan")
    energy_deviation: float | None = None
    temperature: float | None = None


@dataclass
class Acquired:
    """What :func:`acquire` picked: pool indices (best first) and their committee deviations."""

    indices: list[int]
    model_deviation: list[float]
    requested: int
    capped: bool = False
    n_candidates: int = 0


def cap_budget(budget: int, n_available: int, what: str = "remaining pool") -> int:
    """``budget`` capped to what is available, with a warning when it had to be capped."""
    if budget > n_available:
        msg = f"budget {budget} is larger than the {what} ({n_available}); acquiring {n_available}"
        warnings.warn(msg, stacklevel=3)
        logger.warning(msg)
        return n_available
    return budget


def acquire(
    frames: Sequence[Atoms],
    state: PoolState,
    acquisition: str | Any,
    budget: int,
    committee=None,
    iteration: int = 0,
    rng: np.random.Generator | None = None,
    options: dict[str, Any] | None = None,
    training_frames: Sequence[Atoms] | None = None,
) -> Acquired:
    """Pick up to ``budget`` unlabelled pool indices with the acquisition function.

    ``frames`` is the whole pool (indexed like ``state``); ``committee`` (an
    ``almat.learner.Committee``) scores the candidates: its max force deviation per frame, and
    its descriptors for FPS and weighted acquisition (seeded by ``training_frames``, by default
    the labelled ones). ``iteration`` is that of the committee that picks (it sets the weighted
    acquisition's ``w``). A budget larger than the remaining pool is capped, with a warning.
    """
    from almat.select import SelectionContext, build_selection_context, call_policy, policy_needs_descriptors

    if len(frames) != state.n_pool:
        raise ValueError(f"{len(frames)} frames for a pool of {state.n_pool}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    policy = get_acquisition(acquisition, options) if isinstance(acquisition, str) else acquisition
    rng = rng if rng is not None else np.random.default_rng(iteration)
    available = state.unlabelled
    n = cap_budget(budget, len(available))
    if n == 0:
        return Acquired([], [], budget, capped=True, n_candidates=0)
    if committee is None and _needs_committee(policy, iteration):
        raise ValueError(f"acquisition {getattr(policy, 'name', policy)!r} needs a committee")
    atoms = [frames[i] for i in available]
    deviation = np.full(len(available), np.nan)
    energy_dev: np.ndarray | None = None
    if committee is not None and _needs_deviation(policy):
        pred = committee.predict(atoms)
        deviation, energy_dev = pred.model_deviation, pred.energy_deviation
    candidates = [
        PoolCandidate(i, a, float(deviation[k]), None if energy_dev is None else float(energy_dev[k]),
                      a.info.get("temperature"))
        for k, (i, a) in enumerate(zip(available, atoms))
    ]
    context = SelectionContext(iteration=iteration)
    if committee is not None and policy_needs_descriptors(policy, iteration):
        if training_frames is None:
            training_frames = [frames[i] for i in state.trained_on]
        context = build_selection_context(candidates, committee, list(training_frames), iteration)
    picks = call_policy(policy, candidates, n, rng, context)
    return Acquired([candidates[k].index for k in picks], [candidates[k].model_deviation for k in picks],
                    budget, capped=n < budget, n_candidates=len(candidates))


# -- test score -------------------------------------------------------------------------------------


def test_errors(committee, frames: Sequence[Atoms]) -> TestErrors:
    """Committee-mean errors on labelled frames (``atoms.calc`` holds energy and forces)."""
    frames = [a for a in frames if a is not None]
    if not frames:
        return TestErrors()
    pred = committee.predict(frames)
    de, df = [], []
    for i, atoms in enumerate(frames):
        de.append((pred.mean_energy[i] - atoms.get_potential_energy()) / len(atoms))
        df.append(pred.mean_forces(i) - np.asarray(atoms.get_forces()))
    df_all = np.concatenate(df)
    return TestErrors(
        n_structures=len(frames),
        energy_rmse_per_atom=float(np.sqrt(np.mean(np.square(de)))),
        force_rmse=float(np.sqrt(np.mean(np.square(df_all)))),
        force_mae=float(np.mean(np.abs(df_all))),
        max_force_error=float(np.linalg.norm(df_all, axis=1).max()),
    )


test_errors.__test__ = False  # not a pytest test


def decide_stop(
    state: PoolState,
    iteration: int,
    errors: TestErrors,
    budget: int,
    total_budget: int | None = None,
    max_iterations: int | None = None,
    target_force_rmse: float | None = None,
) -> tuple[str | None, int]:
    """Whether to stop after ``iteration`` (a reason, or None) and the next batch size.

    Checked in this order: the target test force RMSE, ``max_iterations``, the total budget (training
    labels, ``n_init`` included), the exhausted pool.
    """
    f_rmse = errors.force_rmse
    if target_force_rmse is not None and f_rmse is not None and f_rmse <= target_force_rmse:
        return f"test force RMSE {f_rmse:.4f} <= target {target_force_rmse} eV/Å", 0
    if max_iterations is not None and iteration + 1 >= max_iterations:
        return f"max_iterations ({max_iterations}) reached", 0
    n_next = budget
    if total_budget is not None:
        left = total_budget - len(state.labelled)
        if left <= 0:
            return f"total budget ({total_budget} labels) spent", 0
        n_next = min(n_next, left)
    n_left = len(state.unlabelled)
    if n_left == 0:
        return f"pool exhausted (all {state.n_pool - len(state.test_indices)} non-held-out structures labelled)", 0
    return None, n_next


# -- oracle and learner callables ---------------------------------------------------------------------


def calculator_oracle(make_calculator: Callable[[], Any]) -> Callable[[Sequence[Atoms]], list[Atoms | None]]:
    """An oracle function for :func:`run_pool_loop` from an ASE calculator factory (``EMT``, ...).

    Each frame comes back as a copy carrying energy and forces as SinglePointCalculator results;
    a frame whose calculation fails or is not finite comes back as ``None``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    def oracle(frames: Sequence[Atoms]) -> list[Atoms | None]:
        out: list[Atoms | None] = []
        calc = make_calculator()
        for atoms in frames:
            a = atoms.copy()
            a.calc = calc
            try:
                e, f = float(a.get_potential_energy()), np.asarray(a.get_forces(), dtype=float)
                if not (math.isfinite(e) and np.isfinite(f).all()):
                    raise FloatingPointError("non-finite energy or forces")
            except Exception as exc:  # noqa: BLE001 - a failed label must not stop the loop
                logger.warning("oracle failed: %s: %s", type(exc).__name__, exc)
                out.append(None)
                continue
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
            out.append(a)
        return out

    return oracle


def mace_committee_trainer(hyperparameters=None, n_models: int = 2, base_seed: int = 0, warm_start: bool = True):
    """A train function for :func:`run_pool_loop`: ``n_models`` MACE models, as ``TrainCommitteeMaker``
    trains them (seed ``base_seed + 1000 * iteration + k``; member k continues from the previous
    member k with ``warm_start``)."""
    from almat.learner.committee import Committee
    from almat.learner.mace import MaceHyperParameters, train_mace

    if n_models < 2:
        raise ValueError(f"a committee needs at least 2 models, got n_models={n_models}")
    hp = hyperparameters if isinstance(hyperparameters, MaceHyperParameters) else MaceHyperParameters(
        **(hyperparameters or {}))

    def train(frames: Sequence[Atoms], iteration: int, previous=None) -> Committee:
        ids = [str(i) for i in range(len(frames))]
        models = []
        for k in range(n_models):
            init = previous.models[k] if (warm_start and previous is not None and k < len(previous.models)) else None
            result = train_mace(list(frames), ids, hp, seed=base_seed + 1000 * iteration + k, init_model=init)
            models.append(result.model)
        return Committee(models, [f"it{iteration}-m{k}" for k in range(n_models)], device=hp.device)

    return train


# -- the loop ---------------------------------------------------------------------------------------


@dataclass
class PoolRunResult:
    """The records of a pool run (one ``PoolIterationDoc`` per iteration) and its final state."""

    records: list
    state: PoolState
    committee: Any = None
    oracle_calls: int = 0
    wall_time: float = 0.0

    @property
    def stop_reason(self) -> str | None:
        return self.records[-1].stop_reason if self.records else None


def run_pool_loop(
    pool: Sequence[Atoms],
    oracle_fn: Callable[[Sequence[Atoms]], list[Atoms | None]],
    train_fn: Callable[..., Any],
    *,
    n_init: int = 8,
    budget: int = 8,
    total_budget: int | None = None,
    acquisition: str = "committee",
    acquisition_options: dict[str, Any] | None = None,
    test_fraction: float = 0.2,
    n_test: int | None = None,
    test_set: Sequence[Atoms] | None = None,
    max_iterations: int = 10,
    target_force_rmse: float | None = None,
    seed: int = 0,
    name: str = "pool",
    on_iteration: Callable[[Any], None] | None = None,
) -> PoolRunResult:
    """Run pool-based active learning in process: label ``n_init`` random structures, then repeat
    train → score on the held-out part → (stop?) → acquire ``budget`` → label.

    ``oracle_fn(frames)`` returns labelled copies (``None`` for a failure); ``train_fn(frames,
    iteration, previous_committee)`` returns a committee (see :func:`mace_committee_trainer`).
    ``test_set`` (labelled frames) replaces the held-out part of the pool; otherwise ``n_test`` or
    ``test_fraction`` of the pool is held out and labelled once. Returns one
    :class:`~almat.pool.documents.PoolIterationDoc` per iteration.
    """
    from almat.pool.documents import PoolIterationDoc

    start = time.perf_counter()
    frames = list(pool)
    if not frames:
        raise ValueError("the pool is empty: give at least one structure")
    policy = get_acquisition(acquisition, acquisition_options)
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if test_set is not None:
        state = PoolState.create(len(frames), n_init, n_test=0, seed=seed)
        test_labels = [a for a in test_set if a is not None]
        calls = 0
    else:
        state = PoolState.create(len(frames), n_init, test_fraction=test_fraction, n_test=n_test, seed=seed)
        test_labels = [a for a in oracle_fn([frames[i] for i in state.test_indices]) if a is not None]
        calls = len(state.test_indices)
    rng = np.random.default_rng(seed)
    labels: dict[int, Atoms] = {}
    new = list(state.init)
    committee = None
    records = []
    iteration = 0
    while True:
        labelled = oracle_fn([frames[i] for i in new])
        calls += len(new)
        failed = [i for i, lab in zip(new, labelled) if lab is None]
        state.add(new, failed)
        labels.update({i: lab for i, lab in zip(new, labelled) if lab is not None})
        train = [labels[i] for i in state.trained_on]
        if len(train) < 2:
            raise RuntimeError(f"only {len(train)} ok label(s) to train on; the oracle failed on {len(failed)}")
        t0 = time.perf_counter()
        committee = train_fn(train, iteration, committee)
        errors = test_errors(committee, test_labels)
        stop, n_next = decide_stop(state, iteration, errors, budget, total_budget, max_iterations,
                                   target_force_rmse)
        acquired = Acquired([], [], 0)
        if stop is None:
            acquired = acquire(frames, state, policy, n_next, committee, iteration, rng,
                               training_frames=train)
            if not acquired.indices:
                stop = f"acquisition {acquisition!r} picked nothing new"
        record = PoolIterationDoc(
            campaign=name,
            iteration=iteration,
            acquisition=acquisition,
            pool_size=state.n_pool,
            test_indices=list(state.test_indices),
            new_indices=list(new),
            labelled_indices=list(state.labelled),
            failed_indices=list(state.failed),
            acquired_indices=acquired.indices,
            acquired_deviation=[None if not math.isfinite(d) else d for d in acquired.model_deviation],
            n_labels=len(state.labelled),
            n_train_labels=len(train),
            n_unlabelled=len(state.unlabelled),
            model_ids=list(getattr(committee, "model_ids", [])),
            test_errors=errors,
            stop_reason=stop,
            wall_time=time.perf_counter() - t0,
        )
        records.append(record)
        logger.info("pool %s iteration %d: %d labels, test force RMSE %s%s", name, iteration, record.n_labels,
                    "n/a" if errors.force_rmse is None else f"{errors.force_rmse:.4f} eV/Å",
                    f"; stop: {stop}" if stop else "")
        if on_iteration is not None:
            on_iteration(record)
        if stop is not None:
            break
        new = acquired.indices
        iteration += 1
    return PoolRunResult(records, state, committee, calls, time.perf_counter() - start)
