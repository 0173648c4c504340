"""The Pareto front of a sweep, as pure functions over plain trial records.

A trial is a mapping with its metric values (and anything else, e.g. params). ``front`` keeps
the non-dominated trials for any number of objectives; trials that failed or miss an objective
(absent or NaN) are excluded and counted; constraints (``peak_memory_mb <= 16000``) filter the
feasible set first.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qa_ray.metrics import BUDGET_METRICS

__all__ = [
    "Constraint",
    "ParetoFront",
    "crowding_distances",
    "dominates",
    "front",
    "hypervolume_2d",
    "hypervolume_history",
    "nondominated_ranks",
    "parse_constraint",
    "pareto_order",
]

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, trial: Mapping[str, Any]) -> bool:
        return _OPS[self.op](float(trial[self.metric]), self.bound)

    @property
    def is_upper(self) -> bool:
        """An upper bound (``<=`` or ``<``): a ceiling, as a budget is."""
        return self.op in ("<=", "<")

    @property
    def is_budget(self) -> bool:
        """A ceiling on a metric that only grows during a trial: broken once, broken for good."""
        return self.is_upper and self.metric in BUDGET_METRICS

    def violation(self, value: float) -> float:
        """How far ``value`` is past the bound, Optuna's way: ``<= 0`` is feasible (a value on
        the bound of a strict ``<`` counts as feasible there)."""
        return value - self.bound if self.is_upper else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_constraint(text: str) -> Constraint:
    """Parses ``"peak_memory_mb <= 16000"``."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", text)
    try:
        bound = float(match[3]) if match else math.nan
    except ValueError:
        bound = math.nan
    if not match or not math.isfinite(bound):
        raise ValueError(
            f"a constraint must look like 'metric <= number' (a finite number), but got {text!r}"
        )
    return Constraint(match[1], match[2], bound)


@dataclass(frozen=True)
class ParetoFront:
    """Indices into the input trials: the front, the dominated, and the excluded."""

    objectives: tuple[tuple[str, str], ...]
    optimal: tuple[int, ...]
    dominated: tuple[int, ...]
    excluded: tuple[int, ...]  # failed, or an objective missing/NaN
    infeasible: tuple[int, ...]  # violates a constraint


def _valid(trial: Mapping[str, Any], metrics: Sequence[str]) -> bool:
    if trial.get("status", "COMPLETE") not in ("COMPLETE", "TERMINATED", "FINISHED"):
        return False
    for k in metrics:
        v = trial.get(k)
        if v is None or isinstance(v, bool):
            return False
        try:
            if math.isnan(float(v)):
                return False
        except (TypeError, ValueError):
            return False
    return True


def _key(trial: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> tuple[float, ...]:
    # Minimization form: a "max" objective is negated.
    return tuple(-float(trial[k]) if mode == "max" else float(trial[k]) for k, mode in objectives)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (minimization): no worse in all, better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def front(
    trials: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    constraints: Sequence[Constraint] = (),
) -> ParetoFront:
    """The non-dominated trials; equal points are all on the front.

    Args:
        trials: records with the objective metrics (and an optional ``status``).
        objectives: ``(metric, "min" | "max")`` pairs.
        constraints: feasibility filters applied before the front is taken.
    """
    objectives = tuple((k, mode) for k, mode in objectives)
    for k, mode in objectives:
        if mode not in ("min", "max"):
            raise ValueError(f"objective mode must be 'min' or 'max', but got ({k!r}, {mode!r})")
    metrics = [k for k, _ in objectives]
    excluded, infeasible, candidates = [], [], []
    for i, t in enumerate(trials):
        if not _valid(t, metrics + [c.metric for c in constraints]):
            excluded.append(i)
        elif not all(c.holds(t) for c in constraints):
            infeasible.append(i)
        else:
            candidates.append(i)
    keys = {i: _key(trials[i], objectives) for i in candidates}
    optimal = [i for i in candidates if not any(dominates(keys[j], keys[i]) for j in candidates)]
    opt = set(optimal)
    return ParetoFront(
        objectives=objectives,
        optimal=tuple(optimal),
        dominated=tuple(i for i in candidates if i not in opt),
        excluded=tuple(excluded),
        infeasible=tuple(infeasible),
    )


def nondominated_ranks(
    trials: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]
) -> dict[int, int]:
    """Rank 0 is the front, rank 1 the front once rank 0 is removed, ... (valid trials only)."""
    metrics = [k for k, _ in objectives]
    remaining = {i: _key(t, objectives) for i, t in enumerate(trials) if _valid(t, metrics)}
    ranks, r = {}, 0
    while remaining:
        layer = [
            i
            for i in remaining
            if not any(dominates(remaining[j], remaining[i]) for j in remaining)
        ]
        for i in layer:
            ranks[i] = r
            del remaining[i]
        r += 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point among ``points``: the sum over objectives of
    the gap between its two neighbours, each objective scaled to its range; the extremes of
    every objective get ``inf``. Larger means more alone, so keeping it spreads the set."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        lo, hi = points[order[0]][k], points[order[-1]][k]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            dist[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return dist


def pareto_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``points`` (minimization) best first: by non-dominated rank, and within a
    rank by crowding distance, largest first (ties: the earlier index first)."""
    remaining = list(range(len(points)))
    order: list[int] = []
    while remaining:
        layer = [
            i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)
        ]
        crowd = crowding_distances([points[i] for i in layer])
        order += [i for _, i in sorted(zip(crowd, layer, strict=True), key=lambda c: (-c[0], c[1]))]
        remaining = [i for i in remaining if i not in set(layer)]
    return order


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by ``points`` (minimization) and bounded by ``reference``.

    Points not strictly better than the reference in both objectives add nothing.
    """
    rx, ry = reference
    pts = sorted((x, y) for x, y in points if x < rx and y < ry)
    area, best_y = 0.0, ry
    for x, y in pts:  # sweep along x; each point adds the strip below the best y so far
        if y < best_y:
            area += (rx - x) * (best_y - y)
            best_y = y
    return area


def hypervolume_history(
    trials: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    reference: Sequence[float],
) -> list[float]:
    """Hypervolume of the valid trials seen so far, after each trial (in the given order).

    ``reference`` is in the objectives' own units (e.g. ``(0, 4096)`` for F1 max / MB min);
    two objectives use :func:`hypervolume_2d`, more use Optuna's implementation.
    """
    metrics = [k for k, _ in objectives]
    ref = [-r if mode == "max" else r for r, (_, mode) in zip(reference, objectives, strict=True)]
    seen: list[tuple[float, ...]] = []
    out = []
    for t in trials:
        if _valid(t, metrics):
            seen.append(_key(t, objectives))
        if len(objectives) == 2:
            out.append(hypervolume_2d(seen, ref))
        else:
            out.append(_optuna_hypervolume(seen, ref))
    return out


def _optuna_hypervolume(points, reference) -> float:
    import numpy as np

    # Private in Optuna (no public hypervolume function for arbitrary points): held by the
    # optuna pin in constraints.txt; tests/unit/test_pareto.py checks it against a 3-D case.
    from optuna._hypervolume import compute_hypervolume

    pts = [p for p in points if all(a < b for a, b in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.asarray(pts, float), np.asarray(reference, float)))
