"""Pool-based active learning: a fixed pool of structures, a held-out part, an acquisition function.

- ``almat.pool.core``: the loop in pure Python (``PoolState``, ``acquire``, ``run_pool_loop``),
  testable and usable without jobflow or a store;
- ``almat.pool.flow`` / ``almat.pool.runner``: the same loop as a dynamic jobflow Flow on the store
  (``run_pool_campaign``), one ``PoolIterationDoc`` per iteration in ``pool_iterations``;
- ``almat.pool.plots``: learning curves (held-out force RMSE against labels).
"""

from almat.pool.config import (
    AcquisitionSettings,
    PerturbSettings,
    PoolCampaignConfig,
    PoolQuery,
    PoolSource,
    load_pool,
    load_pool_config,
)
from almat.pool.core import (
    ACQUISITIONS,
    Acquired,
    PoolCandidate,
    PoolRunResult,
    PoolState,
    acquire,
    acquisition_names,
    calculator_oracle,
    cap_budget,
    decide_stop,
    get_acquisition,
    mace_committee_trainer,
    run_pool_loop,
    test_errors,
)
from almat.pool.documents import PoolIterationDoc
from almat.pool.flow import PoolCampaignMaker, pool_iteration_flow
from almat.pool.plots import learning_curves, plot_learning_curve, plot_method_comparison
from almat.pool.runner import PoolCampaignResult, load_pool_iterations, run_pool_campaign

__all__ = [
    "ACQUISITIONS",
    "AcquisitionSettings",
    "Acquired",
    "PerturbSettings",
    "PoolCampaignConfig",
    "PoolCampaignMaker",
    "PoolCampaignResult",
    "PoolCandidate",
    "PoolIterationDoc",
    "PoolQuery",
    "PoolRunResult",
    "PoolSource",
    "PoolState",
    "acquire",
    "acquisition_names",
    "calculator_oracle",
    "cap_budget",
    "decide_stop",
    "get_acquisition",
    "learning_curves",
    "load_pool",
    "load_pool_config",
    "load_pool_iterations",
    "mace_committee_trainer",
    "plot_learning_curve",
    "plot_method_comparison",
    "pool_iteration_flow",
    "run_pool_campaign",
    "run_pool_loop",
    "test_errors",
]
