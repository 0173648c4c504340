"""Multi-objective early stopping: MO-ASHA, a Ray Tune ``TrialScheduler``.

Asynchronous successive halving (Li et al. 2020) ranks the trials that reached a rung by one
metric; MO-ASHA (Schmucker et al. 2021, arXiv:2106.12639; Syne Tune's ``MOASHA``) ranks them
by Pareto rank instead, so a trial goes on while it is in the best ``1/reduction_factor`` of
the trials that reached its rung *on the front*, not on one objective. As Syne Tune's
``NonDominatedPriority``, the order starts from the best first objective and a trial goes on
when its place ``i`` (0 = best) among the ``n`` trials at the rung has ``i / n <= 1 / rf``
(2 of 3 go on at rf 3, 1 of 2, 4 of 9).

Within a non-dominated rank the order is by the objectives that learn (F1, EM, loss), best
first, and only then by those the configuration sets (:data:`qa_ray.metrics.BUDGET_METRICS`:
peak memory, footprint, parameters). Memory is no learning curve: it is known after the first
steps and will not change, so it decides dominance exactly, but it is no reason to keep a
trial that trails on F1 (with crowding distance, the lowest-memory trial is always an end of
the front and was never stopped, however poor). The order never depends on arrival: ties go
to the trial id.

This is the stopping variant (no pausing, no promotion), as Ray's ``ASHAScheduler`` is. A
trial's final result (the loop marks it) is recorded at its rung but never stopped: the trial
has already run its course.

Rungs are at ``grace * reduction_factor**k`` of ``time_attr`` (optimizer steps, or seconds of
training). A trial is judged at its first result at or past a rung; results come at the
loop's evaluations, so ``train.eval_steps`` sets how close to a rung that is. A result past
several rungs at once is recorded at the highest only, as Ray's and Syne Tune's ASHA do. A result that
breaks a budget (the loop marks it infeasible) stops its trial at once; it is never ranked.

Ray Tune does not save a scheduler's state with the experiment, so the rungs are written to
``state_file`` at every decision and read back on ``--resume`` and by a sweep's extensions. A
trial stopped there stays stopped: Tune's saved state may predate the stop (the driver died in
between) and would run it on.

The stop itself reaches Optuna and MLflow through :class:`EarlyStopMarks`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from qa_ray import live
from qa_ray import metrics as m
from qa_ray.pareto import Constraint, dominates

__all__ = ["MOASHA", "EarlyStopMarks"]

logger = logging.getLogger(__name__)


class MOASHA(FIFOScheduler):
    """Successive halving on Pareto rank.

    Args:
        objectives: ``(metric, "min" | "max")`` pairs, the sweep's objectives.
        time_attr: the result key the rungs count (``step`` or ``train_seconds``).
        grace: the first rung; no trial is stopped by rank before it.
        reduction_factor: rungs at ``grace * rf**k``; of the ``n`` trials recorded at a
            rung, those at places ``i <= n / rf`` (0 = best) go on.
        constraints: budgets; a result breaking one on a metric that only grows stops its
            trial at once.
        state_file: where the rungs are kept between driver runs (JSON); ``None``: in memory.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        time_attr: str = m.STEP,
        grace: float,
        reduction_factor: float = 3.0,
        constraints: Sequence[Constraint] = (),
        state_file: str | None = None,
    ):
        super().__init__()
        if grace <= 0 or reduction_factor <= 1:
            raise ValueError(
                f"MO-ASHA needs grace > 0 and reduction_factor > 1, but got grace={grace}, "
                f"reduction_factor={reduction_factor}"
            )
        self.objectives = tuple((k, mode) for k, mode in objectives)
        self.time_attr = time_attr
        self.grace = grace
        self.reduction_factor = reduction_factor
        self.budgets = tuple(c for c in constraints if c.is_budget)
        # Within a non-dominated rank: the learning objectives first, then the set ones.
        learning = [i for i, (k, _) in enumerate(self.objectives) if k not in m.BUDGET_METRICS]
        self._tie_order = tuple(
            learning + [i for i in range(len(self.objectives)) if i not in learning]
        )
        self.state_file = state_file
        # rung index -> {trial id: objective values in minimization form}, in arrival order
        self.rungs: dict[int, dict[str, list[float]]] = {}
        self.judged: dict[str, int] = {}  # trial id -> the highest rung it was judged at
        self.stopped: dict[str, int] = {}  # trial id -> the rung that stopped it
        self._load()

    # ---- the decision ------------------------------------------------------------------------

    def rung(self, k: int) -> float:
        return self.grace * self.reduction_factor**k

    def rung_index(self, t: float) -> int:
        """The highest rung at or below ``t`` (-1: before the first)."""
        if t < self.grace:
            return -1
        k = int(math.floor(math.log(t / self.grace, self.reduction_factor) + 1e-9))
        while self.rung(k + 1) <= t:
            k += 1
        return k

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """CONTINUE or STOP for one result (Tune-free, so it can be tested on its own)."""
        if trial_id in self.stopped:  # stopped before a driver crash Tune's state predates
            return TrialScheduler.STOP
        if result.get(m.INFEASIBLE) or any(
            _number(result.get(c.metric)) is not None and not c.holds(result) for c in self.budgets
        ):
            return TrialScheduler.STOP
        t = _number(result.get(self.time_attr))
        point = [_number(result.get(k)) for k, _ in self.objectives]
        if t is None or any(v is None for v in point):
            return TrialScheduler.CONTINUE  # not an evaluated result: nothing to rank
        k = self.rung_index(t)
        if k <= self.judged.get(trial_id, -1):
            return TrialScheduler.CONTINUE
        key = [
            -v if mode == "max" else v for v, (_, mode) in zip(point, self.objectives, strict=True)
        ]
        # A result past several rungs is recorded at the highest only (Ray's and Syne Tune's
        # ASHA): its better-trained value at the lower rungs would make them harsher.
        self.rungs.setdefault(k, {})[trial_id] = key
        self.judged[trial_id] = k
        # A trial's last result is recorded for the others, but it has run its course.
        keep = result.get(m.FINAL_REPORT) or self.keeps(k, trial_id)
        decision = TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
        if decision == TrialScheduler.STOP:
            self.stopped[trial_id] = k
        self._save()
        return decision

    def keeps(self, k: int, trial_id: str) -> bool:
        """Whether ``trial_id``'s place ``i`` in :meth:`order` of the ``n`` trials at rung k
        has ``i / n <= 1 / rf`` (Syne Tune's MOASHA rule)."""
        order = self.order(k)
        return order.index(trial_id) * self.reduction_factor <= len(order) * (1 + 1e-9)

    def order(self, k: int) -> list[str]:
        """The trial ids at rung k, best first: by non-dominated rank, then within a rank by
        the learning objectives, then by the set ones (memory), then by id."""
        remaining = dict(self.rungs[k])
        out: list[str] = []
        while remaining:
            layer = [
                i
                for i, p in remaining.items()
                if not any(dominates(q, p) for q in remaining.values())
            ]
            layer.sort(key=lambda i: ([remaining[i][d] for d in self._tie_order], i))
            out += layer
            for i in layer:
                del remaining[i]
        return out

    # ---- Ray Tune ----------------------------------------------------------------------------

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are given here, not by Tune's single metric

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        stopped_before = trial.trial_id in self.stopped
        decision = self.decide(trial.trial_id, result)
        if stopped_before:
            logger.info("trial %s was stopped before the driver restarted: stopped again", trial)
        elif decision == TrialScheduler.STOP:
            k = self.stopped.get(trial.trial_id)
            logger.info(
                "trial %s stopped at %s %s: %s",
                trial,
                self.time_attr,
                result.get(self.time_attr),
                "over budget"
                if k is None
                else f"not in the best 1/{self.reduction_factor:g} "
                f"of the {len(self.rungs[k])} trials at rung {k} ({self.rung(k):g})",
            )
        return decision

    def debug_string(self) -> str:
        sizes = {f"{self.rung(k):g}": len(v) for k, v in sorted(self.rungs.items())}
        return f"MO-ASHA on {self.time_attr}: trials per rung {sizes}, stopped {len(self.stopped)}"

    # ---- state kept across driver runs -------------------------------------------------------

    def _save(self) -> None:
        if not self.state_file:
            return
        state = self._state()
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file) as f:
            state = json.load(f)
        self._restore(state)

    def _state(self) -> dict[str, Any]:
        """What the state file keeps (a rule that learns more extends it)."""
        return {"rungs": self.rungs, "judged": self.judged, "stopped": self.stopped}

    def _restore(self, state: dict[str, Any]) -> None:
        self.rungs = {int(k): v for k, v in state["rungs"].items()}
        self.judged, self.stopped = state["judged"], state["stopped"]

    def __setstate__(self, state: dict) -> None:  # Tuner.restore: the rungs as last saved
        self.__dict__.update(state)
        # In this head's state folder: the pickled path is the first head's, which on a new
        # head is missing, or, where it exists, holds another sweep's stale rungs.
        self.state_file = live.repoint(self.state_file)
        self._load()


class EarlyStopMarks(Callback):
    """Marks the result on which the scheduler stopped a trial, so the searcher (Optuna:
    PRUNED), the MLflow run (a tag) and the sweep's outcome can tell an early stop from a
    trial that ran to its end.

    Ray Tune hands callbacks the result after the scheduler's decision, with ``done`` set when
    the decision was STOP, and keeps that result (callbacks may edit it) as the trial's last,
    which the searcher then receives. A trial's own final report never carries ``done``: a
    function trainable's end arrives as a separate, duplicate result that callbacks do not
    see. Only results with every objective were judged; an infeasible one is left as it is.
    """

    def __init__(self, time_attr: str):
        self.time_attr = time_attr

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("done") and not result.get(m.INFEASIBLE):
            result[m.STOPPED_EARLY_AT] = result.get(self.time_attr)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)
