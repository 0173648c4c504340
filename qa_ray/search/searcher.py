"""Ray Tune's ``OptunaSearch``, told what a budget-aware search needs to know.

Ray's ``OptunaSearch`` tells Optuna two things only: COMPLETE with the last result's values,
or FAIL. It sets no constraint on a trial, so Optuna's constrained samplers (TPE, NSGA-II)
see no budget; it tells a trial the scheduler stopped early COMPLETE with its partial values,
which the samplers then take for a finished trial's; and a trial stopped for breaking a
budget reaches it without scores. :class:`BudgetAwareOptunaSearch` tells Optuna instead:

- every finished trial with its constraint values (Optuna 5's ``Trial.set_constraint``, which
  TPE, NSGA-II and ``Study.best_trials`` read; ``<= 0`` is feasible): one per budget, named by
  its text, and :data:`OTHER_REASON` for "infeasible for another reason" (out of memory);
- an infeasible trial COMPLETE with what it measured; an objective it never measured (a trial
  stopped before its first evaluation) is given the worst value the study has seen for it
  (``0`` for a score if none), so it sorts last, and the constraint values mark it infeasible;
- a trial MO-ASHA stopped (:data:`qa_ray.metrics.STOPPED_EARLY_AT` in its last result)
  PRUNED, with its rung in the user attributes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from qa_ray import metrics as m
from qa_ray.pareto import Constraint

__all__ = ["OTHER_REASON", "BudgetAwareOptunaSearch"]

logger = logging.getLogger(__name__)

OTHER_REASON = "infeasible for another reason (out of memory)"


class BudgetAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna budgets, infeasible trials and early stops.

    Args:
        constraints: the sweep's budgets.
        **kwargs: ``OptunaSearch``'s (``metric`` and ``mode`` as lists).
    """

    def __init__(self, *args, constraints: Sequence[Constraint] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.constraints = tuple(constraints)
        self._last: dict[str, dict[str, float]] = {}  # trial id -> numbers of its results

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._remember(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or not result:
            self._last.pop(trial_id, None)
            return super().on_trial_complete(trial_id, result, error)
        self._remember(trial_id, result)
        seen = self._last.pop(trial_id)
        ot_trial = self._ot_trials[trial_id]
        for name, value in self.violations(seen, result).items():
            ot_trial.set_constraint(name, value)
        infeasible = bool(result.get(m.INFEASIBLE))
        if infeasible:
            ot_trial.set_user_attr("qa_ray.infeasible", str(result.get(m.INFEASIBLE_REASON)))
        stopped_at = result.get(m.STOPPED_EARLY_AT)
        try:
            if stopped_at is not None and not infeasible:
                ot_trial.set_user_attr("qa_ray.stopped_early_at", stopped_at)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, self._values(seen))
        except Exception as exc:  # as OptunaSearch does: e.g. a NaN objective
            logger.warning("optuna could not be told trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def violations(self, seen: dict[str, float], result: dict[str, Any]) -> dict[str, float]:
        """Per budget, its measured excess (0 when unmeasured); then :data:`OTHER_REASON`:
        1.0 if the trial is infeasible for a reason no budget shows, else 0.0."""
        values = {
            str(c): c.violation(seen[c.metric]) if c.metric in seen else 0.0
            for c in self.constraints
        }
        other = bool(result.get(m.INFEASIBLE)) and not any(v > 0 for v in values.values())
        return {**values, OTHER_REASON: 1.0 if other else 0.0}

    def _values(self, seen: dict[str, float]) -> list[float]:
        return [
            seen[k] if k in seen else self._worst(k, mode)
            for k, mode in zip(self._metric, self._mode, strict=True)
        ]

    def _worst(self, metric: str, mode: str) -> float:
        i = self._metric.index(metric)
        done = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        values = [t.values[i] for t in done if t.values and math.isfinite(t.values[i])]
        if values:
            return min(values) if mode == "max" else max(values)
        if mode == "max":
            return 0.0  # scores (F1, EM) are >= 0
        raise ValueError(f"an infeasible trial has no {metric!r} and the study no other value")

    def _remember(self, trial_id: str, result: dict[str, Any]) -> None:
        self._last.setdefault(trial_id, {}).update(m.finite_numbers(result))
