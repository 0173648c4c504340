"""The Tune and Optuna objects a sweep config becomes: sampler, define-by-run space, early
stopping scheduler and ``TuneConfig``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qa_ray.config.trial import TrialConfig, parse_constraints
from qa_ray.search.space import suggest

if TYPE_CHECKING:
    from pathlib import Path

    from qa_ray.sweep.config import SchedulerConfig, SweepConfig

logger = logging.getLogger(__name__)


def build_sampler(cfg: SweepConfig):
    """The Optuna sampler; TPE and NSGA-II learn the budgets (and out-of-memory regions)
    from the constraint values :class:`~qa_ray.search.searcher.BudgetAwareOptunaSearch` sets."""
    import optuna

    s = cfg.search
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True)


class DefineByRun:
    """The Optuna define-by-run space (a picklable callable, saved with the searcher)."""

    def __init__(self, space, base: TrialConfig):
        self.space, self.base = space, base

    def __call__(self, trial):
        return suggest(trial, self.space, self.base)


def _trial_name(trial) -> str:
    return f"trial-{trial.trial_id.split('_')[-1]}"


def early_stopping(cfg: SweepConfig, local: Path):
    """The sweep's ``search.scheduler`` as a Ray Tune scheduler, or None (every trial runs
    to its end)."""
    if cfg.search.scheduler is None:
        return None
    return build_scheduler(
        cfg.search.scheduler,
        [(o.metric, o.mode) for o in cfg.objectives],
        parse_constraints(cfg.constraints, cfg.model.task),
        state_file=str(local / "mo_asha.json"),
        warmup_ratio=cfg.train.warmup_ratio,
        warmup_steps=cfg.train.warmup_steps,
    )


def build_scheduler(
    sc: SchedulerConfig,
    objectives,
    constraints,
    state_file: str | None = None,
    warmup_ratio: float | None = 0.0,
    warmup_steps: int | None = None,
):
    """The scheduler a ``search.scheduler`` block names (also what ``benchmarks/replay.py``
    rebuilds from a curve table's block). ``warmup_ratio`` / ``warmup_steps``: the sweep's,
    for memory_aware's trials that sample no ratio."""
    from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping
    from qa_ray.search.schedulers.mo_asha import MOASHA
    from qa_ray.search.schedulers.race import PairedRace
    from qa_ray.sweep.config import OWN_FIELDS

    cls = {"mo_asha": MOASHA, "memory_aware": MemoryAwareStopping, "race": PairedRace}[sc.type]
    rule = {k: getattr(sc, k) for k in OWN_FIELDS[sc.type]}
    if cls is not MOASHA:  # the rules that keep out of warmup
        rule.update(warmup_ratio=warmup_ratio, warmup_steps=warmup_steps)
    return cls(
        objectives,
        time_attr=sc.time_attr,
        grace=sc.grace,
        reduction_factor=sc.reduction_factor,
        constraints=constraints,
        state_file=state_file,
        **rule,
    )


def tune_config(searcher, scheduler, num_samples: int, p: dict):
    """Tune's settings for one stage of the sweep.

    A trial's actor is reused by the next trial when no scheduler stops trials: that saves
    starting a Python process and importing Ray Train and torch again (about 3.5 s a trial on
    a 2-core CPU). With a scheduler it is not: a trial stopped early is still inside its
    ``TorchTrainer.fit()``, which only ends when Tune kills its actor (and with it the Train
    controller and workers); a reused actor would keep that run training.
    """
    from ray import tune

    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=p["max_concurrent_trials"],
        reuse_actors=scheduler is None,
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )
