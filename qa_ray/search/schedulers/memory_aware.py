"""Memory-aware early stopping: a trial is stopped at a rung only when another trial that
needs no more memory is ahead of it by more than a noise floor.

MO-ASHA keeps a fixed share of every rung, so it stops trials that nothing beats on the front
(a full fine-tune behind a cheaper one on F1, when the rung is crowded) and its share says
nothing of how far behind a trial is. Peak memory is set by the configuration and known from
the first evaluation on; F1 is the learning curve. So a trial is stopped at a rung when a
trial recorded there with no more of every set objective (memory, footprint, parameters:
:data:`qa_ray.metrics.BUDGET_METRICS`) is no worse on every learning objective and better on
one by more than ``noise_floor`` (in its units: F1 points). ``memory_slack`` widens "no more"
to "at most that fraction more": a trial only a little leaner than a far better one adds a
thin strip of hypervolume, so stopping it behind that one costs little and saves its steps.
Never stopped:

- the lowest-memory feasible trial at the rung (over-budget ones are stopped at once);
- a trial at a rung inside its learning-rate warmup, when early F1 says little: with steps as
  the time attribute, the warmup the loop reports (``warmup_steps``: over the horizon it
  re-plans to under ``max_train_seconds``), else its ``warmup_ratio`` (sampled, else the
  sweep's) times the steps it plans (``planned_steps``), and at least ``warmup``.

With ``min_signal`` set, a rung also has to have shown that it predicts the end: the rank
correlation (Spearman's), over the trials that have run to their end, between their values at
the rung and their final values must be at least ``min_signal``, over at least
``signal_trials`` such trials. Where learning curves only separate late (the MiniLM tables of
``benchmarks/curves/``: a correlation of 0.0-0.4 up to step 16 of 64), the early rungs then
judge nothing, whatever their grace, and the rule judges where the sweep's own curves say it
can. Until enough trials have finished, no rung judges.

Rungs, budgets, the state file and "stopped stays stopped" are MO-ASHA's
(:class:`qa_ray.search.schedulers.mo_asha.MOASHA`); only the rule at a rung differs. Select it with
``search.scheduler: {type: memory_aware, grace: ..., noise_floor: 1.0, memory_slack: 0.0,
min_signal: null}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from qa_ray import metrics as m
from qa_ray.pareto import Constraint
from qa_ray.search.schedulers.mo_asha import MOASHA, _number

__all__ = ["MemoryAwareStopping", "rank_correlation"]


class MemoryAwareStopping(MOASHA):
    """Stops a trial only when a trial with no more memory is ahead by ``noise_floor``.

    Args:
        objectives: ``(metric, "min" | "max")`` pairs, the sweep's objectives.
        grace: the first rung.
        reduction_factor: rungs at ``grace * rf**k``.
        noise_floor: how far ahead (in a learning objective's units) another trial must be.
        memory_slack: how much more of a set objective (a fraction of the trial's) the trial
            ahead may use; 0 is "no more".
        min_signal: a rung judges only once the finished trials' values there rank as their
            final values do, by at least this rank correlation (``None``: always judges).
        signal_trials: the finished trials that correlation needs, at least.
        warmup: no trial is judged at a rung below it (default: none).
        warmup_ratio, warmup_steps: the sweep's ``train.warmup_ratio`` / ``warmup_steps``, for
            trials that do not sample a ratio (steps win, as in the loop).
        time_attr, constraints, state_file: as :class:`~qa_ray.search.schedulers.mo_asha.MOASHA`'s.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        grace: float,
        reduction_factor: float = 3.0,
        noise_floor: float = 1.0,
        memory_slack: float = 0.0,
        min_signal: float | None = None,
        signal_trials: int = 5,
        warmup: float = 0.0,
        warmup_ratio: float | None = 0.0,
        warmup_steps: int | None = None,
        time_attr: str = m.STEP,
        constraints: Sequence[Constraint] = (),
        state_file: str | None = None,
    ):
        if noise_floor < 0:
            raise ValueError(f"noise_floor must be >= 0, but got noise_floor={noise_floor}")
        if memory_slack < 0:
            raise ValueError(f"memory_slack must be >= 0, but got memory_slack={memory_slack}")
        self.noise_floor, self.warmup = float(noise_floor), float(warmup)
        self.memory_slack = float(memory_slack)
        if min_signal is not None and not -1.0 <= min_signal <= 1.0:
            raise ValueError(f"min_signal must be in [-1, 1], but got min_signal={min_signal}")
        if signal_trials < 3:
            raise ValueError(f"signal_trials must be >= 3, but got signal_trials={signal_trials}")
        self.min_signal = None if min_signal is None else float(min_signal)
        self.signal_trials = int(signal_trials)
        # trial id -> [the rung its final result was recorded at (-1: none), its first
        # learning objective's final value]
        self.finals: dict[str, list[float]] = {}
        self.warmup_ratio = float(warmup_ratio or 0.0)
        self.warmup_steps = float(warmup_steps) if warmup_steps is not None else None
        self.warmups: dict[str, float] = {}  # trial id -> its warmup, in steps
        super().__init__(
            objectives,
            time_attr=time_attr,
            grace=grace,
            reduction_factor=reduction_factor,
            constraints=constraints,
            state_file=state_file,
        )
        self._set = [i for i, (k, _) in enumerate(self.objectives) if k in m.BUDGET_METRICS]
        self._learning = [i for i in range(len(self.objectives)) if i not in self._set]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        loop_warmup = _float(result.get(m.WARMUP_STEPS))
        if self.time_attr == m.STEP and loop_warmup is not None:
            # The loop's own: under max_train_seconds it warms up over the horizon it
            # re-plans to, not over the planned_steps it reports.
            self.warmups[trial.trial_id] = loop_warmup
        elif self.time_attr == m.STEP and trial.trial_id not in self.warmups:
            planned = _float(result.get(m.PLANNED_STEPS))
            config = getattr(trial, "config", None) or {}
            ratio = _float(config.get("warmup_ratio"))
            if ratio is None and self.warmup_steps is not None:
                self.warmups[trial.trial_id] = self.warmup_steps
            elif planned is not None:
                self.warmups[trial.trial_id] = (
                    self.warmup_ratio if ratio is None else ratio
                ) * planned
        return super().on_trial_result(tune_controller, trial, result)

    def __setstate__(self, state: dict) -> None:  # pickled before per-trial warmups
        state.setdefault("warmup_ratio", 0.0)
        state.setdefault("warmup_steps", None)
        state.setdefault("warmups", {})
        state.setdefault("memory_slack", 0.0)
        state.setdefault("min_signal", None)
        state.setdefault("signal_trials", 5)
        state.setdefault("finals", {})
        super().__setstate__(state)

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """MO-ASHA's decision; a trial's final result is also kept, for :meth:`signal`."""
        t = _number(result.get(self.time_attr))  # as MO-ASHA reads results: NaN is none
        if self._learning and t is not None and result.get(m.FINAL_REPORT):
            metric, mode = self.objectives[self._learning[0]]
            v = _number(result.get(metric))
            if v is not None and not result.get(m.INFEASIBLE):
                k = self.rung_index(t)  # recorded there (below, by MO-ASHA) if not judged yet
                at = k if k > self.judged.get(trial_id, -1) else -1
                self.finals[trial_id] = [at, -v if mode == "max" else v]
                self._save()
        return super().decide(trial_id, result)

    def signal(self, k: int) -> tuple[float, int]:
        """The rank correlation between rung k's values and the final ones of the trials that
        ran to their end (but those whose rung-k value is their final one), and how many."""
        rung, d = self.rungs.get(k, {}), self._learning[0]
        pairs = [(rung[t][d], v) for t, (kf, v) in self.finals.items() if t in rung and kf != k]
        return (rank_correlation(pairs) if len(pairs) >= 3 else math.nan), len(pairs)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "finals": self.finals}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.finals = state.get("finals", {})

    def keeps(self, k: int, trial_id: str) -> bool:
        """Whether no trial at rung k with no more of every set objective (``memory_slack``
        more) is ahead of ``trial_id`` by more than the noise floor (values in minimization
        form)."""
        if self.rung(k) < max(self.warmup, self.warmups.get(trial_id, 0.0)) or not self._learning:
            return True
        if self.min_signal is not None:
            rho, n = self.signal(k)
            if n < self.signal_trials or not rho >= self.min_signal:
                return True  # this rung has not shown it predicts the end
        rung = self.rungs[k]
        x = rung[trial_id]
        if self._set and all(x[self._set[0]] <= p[self._set[0]] for p in rung.values()):
            return True  # the lowest-memory trial (rung entries are all within budget)
        room = 1.0 + self.memory_slack
        for other, y in rung.items():
            if other == trial_id or any(y[d] > x[d] * room for d in self._set):
                continue
            if all(y[d] <= x[d] for d in self._learning) and any(
                x[d] - y[d] > self.noise_floor for d in self._learning
            ):
                return False
        return True


def rank_correlation(pairs: Sequence[tuple[float, float]]) -> float:
    """Spearman's rank correlation of the pairs (SciPy's; ties share their mean rank); NaN
    when either side is constant."""
    import warnings

    from scipy.stats import spearmanr

    with warnings.catch_warnings():  # a constant side: NaN, said by the caller
        warnings.simplefilter("ignore")
        rho = spearmanr([x for x, _ in pairs], [y for _, y in pairs]).statistic
    return float(rho)


def _float(v) -> float | None:
    """A number from a result or a config (MLflow-logged params are text)."""
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None
