"""Ray Tune's ``OptunaSearch``, told what a budget-aware search needs to know.

Ray's ``OptunaSearch`` tells Optuna two things only: COMPLETE with the last result's values,
or FAIL. It sets no constraint on a trial, so Optuna's constrained samplers (TPE, NSGA-II)
see no budget; it tells a trial the scheduler stopped early COMPLETE with its partial values,
which the samplers then take for a finished trial's; and a trial stopped for breaking a
budget reaches it without scores. :class:`BudgetAwareOptunaSearch` tells Optuna instead:

- every finished trial with its constraint values (Optuna 5's ``Trial.set_constraint``, which
  TPE, NSGA-II and ``Study.best_trials`` read; ``<= 0`` is feasible): one per budget, named by
  its text, and :data:`OTHER_REASON` for "infeasible for another reason" (out of memory).
  The samplers rank infeasible trials by the sum of the positive values, so each is a
  fraction of its bound (``0.25``: 25 % over), not MB or parameters, which would not add up;
  out of memory counts ``1.0``, as far as a trial at twice its budget (it was read as 1 MB
  over). A trial stopped early gets values for its budgets only: its other constraints
  (``eval_f1 >= 50``) were not measured at its end;
- an infeasible trial COMPLETE with what it measured; an objective it never measured (a trial
  stopped before its first evaluation) is given the worst value the study has seen for it
  (if none: ``0`` for a score, the budget's bound for a cost), so it sorts last, and the
  constraint values mark it infeasible; a trial Optuna cannot be told is told FAIL, never left
  RUNNING;
- a trial MO-ASHA stopped (:data:`qa_ray.metrics.STOPPED_EARLY_AT` in its last result)
  PRUNED, with its rung in the user attributes.

With a :class:`MemoryAdmission`, a sampled configuration predicted over a memory budget beyond
the prediction's uncertainty is not launched: Optuna is told it COMPLETE and infeasible with
the *predicted* excess (its ``peak_memory_mb`` objective the predicted peak, other objectives
the worst seen), the admission records it (a child run with outcome ``predicted_infeasible``),
and the searcher samples again within the same ``suggest``, so Tune never sees it and it does
not count against ``num_samples``. After ``max_in_a_row`` rejections in a row the searcher
ends the search (Tune's ``FINISHED``) with a message naming the budget.

A packing admission (``pack_margin`` set: ``resources.pack_by_memory``) also writes each
launched configuration's memory request into it (:data:`qa_ray.metrics.MEMORY_REQUEST_MB`: the
prediction's upper end, peak + ``z`` sd, plus the margin), for the trial to ask Ray for; it is
computed when the trial is sampled, so it uses every measurement taken by then.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from qa_ray import metrics as m
from qa_ray.pareto import Constraint
from qa_ray.search.memory import MemoryModel, Prediction
from qa_ray.search.space import apply_params

__all__ = ["OTHER_REASON", "BudgetAwareOptunaSearch", "MemoryAdmission"]

logger = logging.getLogger(__name__)

OTHER_REASON = "infeasible for another reason (out of memory)"


@dataclass
class MemoryAdmission:
    """Which sampled configurations are launched, by their predicted peak memory.

    Args:
        model: the sweep's memory model (the MLflow callback calibrates the same object).
        base: the sweep's trial config as a dict; a sampled config completes it.
        on_rejected: called with ``(config, prediction, reason)`` for each rejection (the
            sweep records a child run); dropped when the searcher is pickled.
        max_in_a_row: rejections in a row that end the search.
        z: standard deviations the prediction must be over a budget by; with packing, the
            standard deviations above the prediction a trial asks for.
        pack_margin: packing (``resources.pack_by_memory``): the share added to the request;
            None: no requests.
        enforce: False (``search.memory_admission: false``) launches every configuration.
    """

    model: MemoryModel
    base: dict[str, Any]
    on_rejected: Callable[[dict[str, Any], Prediction, str], None] | None = None
    max_in_a_row: int = 100
    z: float = 2.0
    pack_margin: float | None = None
    enforce: bool = True  # False: predictions are logged and packed by, nothing is rejected
    rejected: int = 0
    in_a_row: int = 0
    stopped: str | None = None  # why the search ended, once it has
    _off: bool = field(default=False, repr=False)

    def _predict(self, config: Mapping[str, Any]) -> Prediction | None:
        """The sampled config's prediction, or None once the model cannot be read."""
        if self._off:
            return None
        try:
            return self.model.predict(apply_params(self.base, dict(config)))
        except ValueError as exc:  # a model the account cannot read: admit everything
            logger.warning("memory admission off: %s", exc)
            self._off = True
            return None

    def check(self, config: Mapping[str, Any], budgets: Sequence[Constraint]) -> Prediction | None:
        """The prediction of a configuration predicted over a memory budget, or None (run
        it: within budget, uncertain, or not predictable)."""
        p = self._predict(config)
        if p is not None and any(p.fits(c.bound, self.z) is False for c in budgets):
            return p
        return None

    def request_mb(self, config: Mapping[str, Any]) -> float | None:
        """What a packed trial asks for: ``(peak + z sd) * (1 + pack_margin)``, rounded up to a
        whole MB; None without packing or without a prediction."""
        if self.pack_margin is None or (p := self._predict(config)) is None:
            return None
        return float(math.ceil(round((p.peak_mb + self.z * p.sd_mb) * (1.0 + self.pack_margin), 6)))

    def __getstate__(self):
        return {**self.__dict__, "on_rejected": None}

    def __setstate__(self, state):  # pickled by a qa-ray without packing
        state.setdefault("pack_margin", None)
        state.setdefault("enforce", True)
        self.__dict__.update(state)


class BudgetAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna budgets, infeasible trials and early stops.

    Args:
        constraints: the sweep's budgets.
        admission: keeps configurations predicted over a memory budget from running.
        **kwargs: ``OptunaSearch``'s (``metric`` and ``mode`` as lists).
    """

    def __init__(
        self,
        *args,
        constraints: Sequence[Constraint] = (),
        admission: MemoryAdmission | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.constraints = tuple(constraints)
        self.admission = admission
        self._last: dict[str, dict[str, float]] = {}  # trial id -> numbers of its results

    def __setstate__(self, state):  # a searcher pickled by an earlier qa-ray has no admission
        state.setdefault("admission", None)
        self.__dict__.update(state)

    def suggest(self, trial_id: str) -> dict | str | None:
        from ray.tune.search import Searcher

        a = self.admission
        budgets = [c for c in self.constraints if c.metric == m.PEAK_MEMORY_MB and c.is_upper]
        while True:
            config = super().suggest(trial_id)
            if a is None or not isinstance(config, dict):
                return config
            predicted = a.check(config, budgets) if budgets and a.enforce else None
            if predicted is None:
                a.in_a_row = 0
                if (request := a.request_mb(config)) is not None:
                    config = {**config, m.MEMORY_REQUEST_MB: request}
                return config
            self._reject(trial_id, config, predicted, budgets)
            if a.in_a_row >= a.max_in_a_row:
                a.stopped = (
                    f"{a.in_a_row} sampled configurations in a row predicted over "
                    f"{' and '.join(f'`{c}`' for c in budgets)} (the last: "
                    f"{predicted.peak_mb:.0f} +- {predicted.sd_mb:.0f} MB for {config}): the "
                    "search space has (almost) nothing under the budget; raise the budget or "
                    "shrink the space's memory axes (batch, sequence, rank, bits, model)"
                )
                logger.error("search ended: %s", a.stopped)
                return Searcher.FINISHED

    def _reject(
        self,
        trial_id: str,
        config: dict[str, Any],
        p: Prediction,
        budgets: Sequence[Constraint],
    ) -> None:
        assert self.admission is not None
        a = self.admission
        a.rejected += 1
        a.in_a_row += 1
        ot_trial = self._ot_trials.pop(trial_id)  # the next ask() is a new Optuna trial
        over = [c for c in budgets if p.fits(c.bound, a.z) is False]
        reason = (
            f"predicted {m.PEAK_MEMORY_MB} {p.peak_mb:.0f} +- {p.sd_mb:.0f} breaks the budget "
            + " and ".join(str(c) for c in over)
        )
        seen = {m.PEAK_MEMORY_MB: p.peak_mb}
        for name, value in self.violations(seen, {m.INFEASIBLE: 1.0}).items():
            ot_trial.set_constraint(name, value)
        ot_trial.set_user_attr("qa_ray.predicted_infeasible", reason)
        try:
            self._ot_study.tell(ot_trial, self._values(seen))
        except Exception as exc:  # no value to give an objective yet: FAIL, never RUNNING
            logger.warning("optuna could not be told a rejected trial: %s; told FAIL", exc)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        logger.info("not launched (%d rejected so far): %s: %s", a.rejected, config, reason)
        if a.on_rejected is not None:
            a.on_rejected(config, p, reason)

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
        try:
            self._ot_study._storage.get_trial(ot_trial._trial_id)
        except KeyError:
            # The study was restored from a copy older than this trial (a driver killed
            # between sampling it and saving the study, see qa_ray.sweep.bucket): the trial's
            # result stays in Tune and MLflow; the study cannot be told of it.
            logger.warning(
                "optuna trial of %s is not in the restored study: its result is not told", trial_id
            )
            self._completed_trials.add(trial_id)
            return None
        infeasible = bool(result.get(m.INFEASIBLE))
        pruned = result.get(m.STOPPED_EARLY_AT) is not None and not infeasible
        for name, value in self.violations(seen, result, pruned=pruned).items():
            ot_trial.set_constraint(name, value)
        if infeasible:
            ot_trial.set_user_attr("qa_ray.infeasible", str(result.get(m.INFEASIBLE_REASON)))
        try:
            if pruned:
                ot_trial.set_user_attr("qa_ray.stopped_early_at", result[m.STOPPED_EARLY_AT])
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, self._values(seen))
        except Exception as exc:  # as OptunaSearch does: e.g. a NaN objective
            logger.warning("optuna could not be told trial %s: %s; told FAIL", trial_id, exc)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def violations(
        self, seen: dict[str, float], result: dict[str, Any], pruned: bool = False
    ) -> dict[str, float]:
        """Per constraint, its measured excess as a fraction of its bound (0 when unmeasured,
        or, for a ``pruned`` trial, when it is no budget: a partial F1 says nothing of the
        final one); then :data:`OTHER_REASON`: 1.0 if the trial is infeasible for a reason no
        budget shows, else 0.0."""
        values = {
            str(c): _relative(c, seen[c.metric])
            if c.metric in seen and (c.is_budget or not pruned)
            else 0.0
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
        bounds = [c.bound for c in self.constraints if c.metric == metric and c.is_upper]
        if bounds:  # no trial measured it yet: the budget is as bad as a feasible one gets
            return max(bounds)
        raise ValueError(f"an infeasible trial has no {metric!r} and the study no other value")

    def _remember(self, trial_id: str, result: dict[str, Any]) -> None:
        self._last.setdefault(trial_id, {}).update(m.finite_numbers(result))


def _relative(c: Constraint, value: float) -> float:
    """``c``'s violation at ``value`` as a fraction of its bound (as is for a bound of 0)."""
    return c.violation(value) / (abs(c.bound) or 1.0)
