"""qa-ray: find the best question-answering fine-tune for a memory budget.

A sweep (:func:`run_sweep`, or ``qa-ray sweep SWEEP.yaml``) runs fine-tunes as Ray Train
trials (:func:`train_loop_per_worker`), searched by Optuna through Ray Tune against several
objectives (EM/F1 up, peak memory down) under budgets the search knows
(:class:`BudgetAwareOptunaSearch`), stops the trials that trail at a rung (:class:`MOASHA`),
and records every trial in MLflow under one parent run with the Pareto front
(:func:`publish_pareto`).

The packages, bottom up; each imports only from its own layer and those below it
(``tests/unit/test_layout.py`` holds the code to this):

  0. ``errors``, ``metrics`` (metric and tag names), ``pareto`` (the front, pure),
     ``scoring`` (SQuAD scoring), ``storage`` and ``live`` (the sweep this driver runs, which
     restored objects rejoin): the vocabulary every layer shares
  1. ``data``: reading and validating datasets, the feature cache
  2. ``tasks``: the task families (extractive, generative, seq2seq, instruction)
  3. ``config``: trial files, validated
  4. ``models`` (building, quantization and LoRA, pruning, the LSTM) and ``search`` (the
     space, the searcher, the early-stopping schedulers)
  5. ``training`` (the per-worker loop as a recipe over its parts) and ``tracking`` (MLflow)
  6. ``report``: the Pareto summary, plots, tables, publishing to MLflow
  7. ``sweep``: sweep files, Ray Tune, the trial function, resume, the console, Ray jobs
  8. ``cli``

The names below load their module on first use, so ``import qa_ray`` stays cheap (no torch,
Ray or MLflow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "TrialConfig": "qa_ray.config.trial",
    "load_trial_config": "qa_ray.config.files",
    "SweepConfig": "qa_ray.sweep.config",
    "load_sweep_config": "qa_ray.sweep.config",
    "run_sweep": "qa_ray.sweep.run",
    "train_loop_per_worker": "qa_ray.training.loop",
    "MOASHA": "qa_ray.search.schedulers.mo_asha",
    "BudgetAwareOptunaSearch": "qa_ray.search.searcher",
    "publish_pareto": "qa_ray.report.publish",
    "summarize": "qa_ray.report.summary",
    "front": "qa_ray.pareto",
    "score": "qa_ray.scoring.squad",
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
    from qa_ray.config.files import load_trial_config
    from qa_ray.config.trial import TrialConfig
    from qa_ray.pareto import front
    from qa_ray.report.publish import publish_pareto
    from qa_ray.report.summary import summarize
    from qa_ray.scoring.squad import score
    from qa_ray.search.schedulers.mo_asha import MOASHA
    from qa_ray.search.searcher import BudgetAwareOptunaSearch
    from qa_ray.sweep.config import SweepConfig, load_sweep_config
    from qa_ray.sweep.run import run_sweep
    from qa_ray.training.loop import train_loop_per_worker


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'qa_ray' has no attribute {name!r}")
