"""The sweep's Pareto summary: trials read back from MLflow, the front, budgets, hypervolume.

:func:`summarize` is pure over the trial records; :mod:`.publish` writes what it returns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from qa_ray import metrics as m
from qa_ray.pareto import (
    Constraint,
    front,
    hypervolume_history,
    nondominated_ranks,
)
from qa_ray.tracking import runs as tracking

__all__ = ["ParetoSummary", "best_under", "reference_point"]


@dataclass(frozen=True)
class ParetoSummary:
    """What a sweep's report says, computed from its trial records alone (:func:`summarize`).

    ``trials`` are copies of the records with ``pareto_optimal`` and ``pareto_rank`` set;
    the index fields point into it.
    """

    parent_run_id: str
    objectives: tuple[tuple[str, str], ...]
    trials: list[dict[str, Any]]
    optimal: tuple[int, ...]  # on the front
    feasible: tuple[int, ...]  # completed, every objective, within the constraints
    excluded: int  # failed, stopped early, over a budget, or missing an objective
    hypervolume: list[float]  # after each feasible trial, in the order they ended
    reference: tuple[float, ...]  # the hypervolume's reference point (objective units)
    budgets: tuple[float, ...]  # bounds on the x objective: constraints and --budgets
    best_under: tuple[dict[str, Any], ...]  # per budget: metric, bound, trial index or None

    @property
    def axes(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((y, mode), (x, mode))``: the first objective up, the second (or peak memory)
        across."""
        return self.objectives[0], (
            self.objectives[1] if len(self.objectives) > 1 else (m.PEAK_MEMORY_MB, "min")
        )


def parse_objectives(raw: str | None) -> tuple[tuple[str, str], ...]:
    """A parent run's ``objectives`` param (``[('eval_f1', 'max'), ...]`` as logged) as
    ``(metric, mode)`` pairs; empty when it is missing or does not parse."""
    import ast

    try:
        return tuple((str(k), str(mode)) for k, mode in ast.literal_eval(raw or ""))
    except (ValueError, SyntaxError, TypeError):
        return ()


def sweep_constraints(uri: str, parent_id: str) -> list[str]:
    """The constraints a sweep ran with (its parent run's ``constraints`` param)."""
    raw = tracking.sweep_params(uri, parent_id).get("constraints")
    return json.loads(raw) if raw else []


def reference_point(trials, objectives, budgets: dict[str, float] | None = None) -> list[float]:
    """The hypervolume's reference point, in the objectives' units.

    A metric with a budget (``peak_memory_mb <= 22000``) takes the budget: the hypervolume is
    then the area of the feasible region a sweep covers, comparable across sweeps of the same
    task and budget. Otherwise: 0 for a maximized score (F1, EM: the untrained baseline's
    floor), and for a minimized metric a value worse than every trial's (the worst plus 10 %
    of its size, or plus 1 when it is 0), which moves with the trials.
    """
    budgets = budgets or {}
    ref = []
    for k, mode in objectives:
        if k in budgets:
            ref.append(float(budgets[k]))
            continue
        vals = [
            float(t[k])
            for t in trials
            if isinstance(t.get(k), int | float) and math.isfinite(float(t[k]))
        ]
        if mode == "max":
            ref.append(min(0.0, *vals) if vals else 0.0)
        else:
            worst = max(vals) if vals else 0.0
            ref.append(worst + (abs(worst) * 0.1 or 1.0))
    return ref


def _upper_budgets(constraints, budgets, metric: str) -> list[float]:
    """The budgets on ``metric``: the sweep's ``<=`` / ``<`` constraints, then ``--budgets``."""
    bounds = [c.bound for c in constraints if c.metric == metric and c.is_upper]
    return sorted(set(bounds) | {float(b) for b in budgets})


def best_under(trials, feasible, metric: str, bound: float, objective) -> int | None:
    """The feasible trial with the best first objective among those with ``metric <= bound``."""
    y, mode = objective
    inside = [
        i
        for i in feasible
        if isinstance(trials[i].get(metric), int | float) and trials[i][metric] <= bound
    ]
    if not inside:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(inside, key=lambda i: (sign * float(trials[i][y]), float(trials[i][metric])))


def summarize(
    parent_id: str,
    trials: list[dict[str, Any]],
    objectives,
    constraints: list[Constraint] = (),
    budgets=(),
    reference: list[float] | tuple[float, ...] | None = None,
) -> ParetoSummary:
    """The report of a sweep from its trial records (see :func:`tracking.trial_records`):
    front, ranks, hypervolume history and its reference point, the best trial under each
    budget. Pure: reads and writes nothing.

    Args:
        objectives: ``(metric, mode)`` pairs; the first is the y axis, the second the x axis.
        constraints: feasibility filters; those bounding a minimized objective from above
            are its budgets (drawn, and the hypervolume's reference point).
        budgets: more bounds on the x objective (``--budgets``): each names its best trial;
            none moves the reference point.
        reference: the sweep's reference point as stored with it: kept while every feasible
            trial is inside it, else widened just enough (the caller logs the curve again).
    """
    objs = tuple((k, mode) for k, mode in objectives)
    trials = [dict(t) for t in trials]
    pf = front(trials, objs, constraints)
    feasible = tuple(sorted(pf.optimal + pf.dominated))
    ranks = nondominated_ranks([trials[i] for i in feasible], objs)
    for i, t in enumerate(trials):
        t["pareto_optimal"] = i in pf.optimal
        t["pareto_rank"] = ranks[feasible.index(i)] if i in feasible else None
    x = objs[1][0] if len(objs) > 1 else m.PEAK_MEMORY_MB
    # One reference per sweep: from its constraints (a budget), never from --budgets, which
    # would make curves published with and without them disagree (a 25x change seen).
    budget_of = {k: _upper_budgets(constraints, (), k) for k, mode in objs if mode == "min"}
    ref = reference_point(
        [trials[i] for i in feasible], objs, {k: min(b) for k, b in budget_of.items() if b}
    )
    if reference is not None and len(reference) == len(ref):
        ref = [
            min(float(r), new) if mode == "max" else max(float(r), new)
            for r, new, (_, mode) in zip(reference, ref, objs, strict=True)
        ]
    # in the order the trials ended, so the curve reads "after N completed trials"
    by_end = sorted(feasible, key=lambda i: (trials[i].get("ended") or 0, i))
    hv = hypervolume_history([trials[i] for i in by_end], objs, ref)
    x_budgets = tuple(_upper_budgets(constraints, budgets, x))
    bests = tuple(
        {"metric": x, "bound": b, "trial": best_under(trials, feasible, x, b, objs[0])}
        for b in x_budgets
    )
    return ParetoSummary(
        parent_run_id=parent_id,
        objectives=objs,
        trials=trials,
        optimal=pf.optimal,
        feasible=feasible,
        excluded=len(trials) - len(feasible),
        hypervolume=hv,
        reference=tuple(ref),
        budgets=x_budgets,
        best_under=bests,
    )
