"""qa-ray: find the best question-answering fine-tune for a memory budget.

A sweep (:func:`run_sweep`, or ``qa-ray sweep SWEEP.yaml``) runs fine-tunes as Ray Train
trials (:func:`train_loop_per_worker`), searched by Optuna through Ray Tune against several
objectives (EM/F1 up, peak memory down) under budgets the search knows
(:class:`BudgetAwareOptunaSearch`), stops the trials that trail at a rung (:class:`MOASHA`),
and records every trial in MLflow under one parent run with the Pareto front
(:func:`publish_pareto`).

The modules, from the bottom up: ``metrics`` (names, SQuAD scoring), ``pareto`` (the front,
pure), ``config`` / ``search_space`` / ``sweep_config`` (validated files), ``data`` and
``tasks`` (the task families), ``models``, ``train`` (the loop), ``scheduler`` and
``searcher`` (early stopping, budgets), ``tracking`` (MLflow), ``report`` and ``plots``,
``sweep`` (Ray Tune), ``jobs`` (Ray jobs), ``cli``. The names below load their module on
first use, so ``import qa_ray`` stays cheap (no torch, Ray or MLflow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "TrialConfig": "qa_ray.config",
    "load_trial_config": "qa_ray.config",
    "SweepConfig": "qa_ray.sweep_config",
    "load_sweep_config": "qa_ray.sweep_config",
    "run_sweep": "qa_ray.sweep",
    "train_loop_per_worker": "qa_ray.train",
    "MOASHA": "qa_ray.scheduler",
    "BudgetAwareOptunaSearch": "qa_ray.searcher",
    "publish_pareto": "qa_ray.report",
    "summarize": "qa_ray.report",
    "front": "qa_ray.pareto",
    "score": "qa_ray.metrics",
}

__all__ = [
    "MOASHA",
    "BudgetAwareOptunaSearch",
    "SweepConfig",
    "TrialConfig",
    "__version__",
    "front",
    "load_sweep_config",
    "load_trial_config",
    "publish_pareto",
    "run_sweep",
    "score",
    "summarize",
    "train_loop_per_worker",
]

if TYPE_CHECKING:
    from qa_ray.config import TrialConfig, load_trial_config
    from qa_ray.metrics import score
    from qa_ray.pareto import front
    from qa_ray.report import publish_pareto, summarize
    from qa_ray.scheduler import MOASHA
    from qa_ray.searcher import BudgetAwareOptunaSearch
    from qa_ray.sweep import run_sweep
    from qa_ray.sweep_config import SweepConfig, load_sweep_config
    from qa_ray.train import train_loop_per_worker


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'qa_ray' has no attribute {name!r}")
