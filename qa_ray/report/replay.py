"""A finished sweep replayed: its learning-curve table run again through early-stopping rules,
with nothing trained again.

    from qa_ray.report.replay import load_table, replay
    from qa_ray.report.replay_rules import default_rules
    table = load_table("benchmarks/curves/minilm_squad_v1_a.json")
    replay(table, default_rules(table), n=24, workers=4, draws=50)

A table is what ``qa_ray.report.curves`` exports (a JSON file, or the dict it returns). Only its
``complete`` and ``infeasible`` trials are drawn: a pruned trial's curve ends where it stopped.

One draw: N configurations of the table in a random order, run on W workers. A worker starts
the next configuration when it frees. Each result arrives at the trial's start plus its fixed
cost plus its recorded ``train_seconds``; it goes to the real scheduler's ``on_trial_result``
(the last one marked ``final_report``, an infeasible trial's marked so); a STOP or the last
result ends the trial. The draws are the same for every rule.

What a real sweep pays is charged (:class:`Costs`, measured in docs/benchmarks.md, "A sweep's
fixed costs"): a trial's fixed cost depends on the actor policy its rule makes Tune use (no
scheduler: the next trial reuses the actor; a scheduler: a fresh actor per trial, about 1.75 s
more); a stopped trial trains on until Tune ends it (``stop_seconds``), and those steps and
seconds count.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from qa_ray import metrics as m
from qa_ray.errors import ConfigError
from qa_ray.pareto import hypervolume_history, parse_constraint
from qa_ray.report.summary import reference_point

__all__ = [
    "MEASURED",
    "Costs",
    "Outcome",
    "Rule",
    "Table",
    "TableError",
    "config_key",
    "front_hypervolume",
    "iqm",
    "load_table",
    "noise_floor",
    "replay",
    "signal_by_step",
    "simulate",
]

STOP = TrialScheduler.STOP


class TableError(ConfigError):
    """A curve table that cannot be replayed; said in one line (file, field, value)."""

    def __str__(self) -> str:
        return f"{self.source}: {'; '.join(self.errors)}"


@dataclass(frozen=True)
class Costs:
    """What a real sweep pays besides training, per trial (seconds).

    ``reused``: a trial's fixed cost when Tune reuses actors (no scheduler), ``fresh``: when
    each trial starts a fresh actor (any scheduler): 10.5 / 11.5 s and 12.2 / 13.3 s measured
    (docs/benchmarks.md, "A sweep's fixed costs"). ``stop_seconds``: how long a trial stopped
    early trains on before Tune ends it (not measured for a stop; a trial's end, last result
    to run end, measured 1.7 to 2.1 s).
    """

    reused: float = 11.0
    fresh: float = 12.75
    stop_seconds: float = 2.0

    def fixed(self, scheduler: TrialScheduler) -> float:
        """The fixed cost per trial under the actor policy ``qa_ray.sweep.tuner`` picks."""
        return self.reused if type(scheduler) is FIFOScheduler else self.fresh


MEASURED = Costs()  # the defaults, as measured


@dataclass(frozen=True)
class Table:
    """A curve table's usable trials and what their hypervolume is measured against."""

    objectives: tuple[tuple[str, str], ...]
    constraints: tuple  # Constraint
    trials: tuple[dict, ...]  # complete and infeasible ones, with rows
    reference: tuple[float, ...]
    source: str = ""

    def subset(self, indices: Sequence[int]) -> Table:
        return Table(
            self.objectives,
            self.constraints,
            tuple(self.trials[i] for i in indices),
            self.reference,
            self.source,
        )


@dataclass(frozen=True)
class Rule:
    """A stopping rule to replay: ``scheduler(table, n)`` builds it for a draw of ``n``."""

    name: str
    scheduler: Callable[[Table, int], TrialScheduler]
    fraction: float = 1.0  # the share of the draw's configurations run at all
    block: Mapping[str, Any] | None = None  # the `search.scheduler` block it is, if any


def load_table(source: str | Mapping[str, Any], name: str | None = None) -> Table:
    """A curve table from a JSON file (or the dict ``export_curves`` returns), checked.

    Raises:
        TableError: the file is missing or not JSON, or a field a replay reads is absent or
            of the wrong kind (said with the file, the field and the value).
    """
    where = name or (source if isinstance(source, str) else "the table")
    if isinstance(source, str):
        try:
            with open(source) as f:
                raw = json.load(f)
        except OSError as e:
            raise TableError(where, [f"cannot be read ({e.strerror or e})"]) from None
        except json.JSONDecodeError as e:
            raise TableError(where, [f"not JSON ({e.msg}, line {e.lineno})"]) from None
    else:
        raw = source
    if not isinstance(raw, dict) or raw.get("schema") != "qa-ray/curves":
        got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise TableError(where, [f"`schema` must be 'qa-ray/curves', but got {got!r}"])
    objectives = raw.get("objectives")
    if not (
        isinstance(objectives, list)
        and objectives
        and all(isinstance(o, list) and len(o) == 2 and o[1] in ("min", "max") for o in objectives)
    ):
        raise TableError(where, [f"`objectives` must be [[metric, 'max'|'min'], ...], but got "
                                 f"{objectives!r}"])  # fmt: skip
    try:
        constraints = tuple(parse_constraint(c) for c in raw.get("constraints") or [])
    except ValueError as e:
        raise TableError(where, [f"`constraints`: {e}"]) from None
    trials = []
    for k, t in enumerate(raw.get("trials") or []):
        if t.get("outcome") not in ("complete", "infeasible") or not t.get("rows"):
            continue
        bad = [r for r in t["rows"] if not all(isinstance(r.get(c), int | float)
                                               for c in (m.STEP, m.TRAIN_SECONDS))]  # fmt: skip
        if bad:
            raise TableError(where, [f"`trials[{k}].rows`: a row needs a number at `step` and "
                                     f"`train_seconds`, but got {bad[0]!r}"])  # fmt: skip
        trials.append(t)
    objectives = tuple((str(a), str(b)) for a, b in objectives)
    budgets = {c.metric: c.bound for c in constraints if c.is_upper}
    ref = reference_point([t["rows"][-1] for t in trials], objectives, budgets)
    return Table(objectives, constraints, tuple(trials), tuple(ref), where)


# ---- one draw ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    steps: float = 0.0
    seconds: float = 0.0
    fixed_seconds: float = 0.0
    finished: list[int] = field(default_factory=list)  # table indices run to their end
    stopped: list[int] = field(default_factory=list)
    steps_by_rung: list[float] = field(default_factory=list)
    hypervolume: float = 0.0


def _warmup_steps(config: Mapping[str, Any], horizon: float) -> float | None:
    """The warmup the training loop uses (``qa_ray.training.schedule.warmup_steps``) over the
    steps it really ran: with ``max_train_seconds`` the loop re-plans its horizon to the steps
    the budget allows, which a finished trial's last step is."""
    steps = config.get("warmup_steps", config.get("train.warmup_steps"))
    ratio = config.get("warmup_ratio", config.get("train.warmup_ratio"))
    try:
        if steps is not None:
            return float(steps)
        return None if ratio is None else round(float(ratio) * horizon)
    except (TypeError, ValueError):
        return None


def simulate(
    table: Table,
    order: Sequence[int],
    scheduler: TrialScheduler,
    workers: int,
    costs: Costs = MEASURED,
    rungs: Sequence[float] = (),
) -> Outcome:
    """Runs the table's trials ``order`` through ``scheduler`` on ``workers`` workers."""
    fixed = costs.fixed(scheduler)
    out = Outcome(steps_by_rung=[0.0] * (len(rungs) + 1))
    bounds = [0.0, *rungs, math.inf]
    pending = list(order)[::-1]
    events: list[tuple[float, int, int, int]] = []  # (time, seq, table index, row; -1: free)
    seq = 0
    trials, began = {}, {}

    def push(when: float, i: int, j: int) -> None:
        nonlocal seq
        heapq.heappush(events, (when, seq, i, j))
        seq += 1

    def start(now: float) -> None:
        if not pending:
            return
        i = pending.pop()
        trials[i] = SimpleNamespace(trial_id=f"t{i:04d}", config=table.trials[i]["config"])
        scheduler.on_trial_add(None, trials[i])
        began[i] = now + fixed
        push(began[i] + table.trials[i]["rows"][0][m.TRAIN_SECONDS], i, 0)

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, i, j = heapq.heappop(events)
        if j < 0:  # a stopped trial's worker is free again
            start(now)
            continue
        t = table.trials[i]
        rows = t["rows"]
        # What the loop reports with every result: the steps it plans, the warmup it uses.
        horizon = rows[-1][m.STEP]
        result = {**rows[j], m.TRAINING_ITERATION: j + 1, m.PLANNED_STEPS: horizon}
        warmup = _warmup_steps(t["config"], horizon)
        if warmup is not None:
            result[m.WARMUP_STEPS] = warmup
        last = j == len(rows) - 1
        if last:
            result[m.FINAL_REPORT] = 1.0
            if t["outcome"] == "infeasible":
                result[m.INFEASIBLE] = 1.0
        decision = scheduler.on_trial_result(None, trials[i], result)
        if decision != STOP and not last:
            push(began[i] + rows[j + 1][m.TRAIN_SECONDS], i, j + 1)
            continue
        scheduler.on_trial_complete(None, trials[i], result)
        steps, seconds = float(rows[j][m.STEP]), fixed + rows[j][m.TRAIN_SECONDS]
        if last:
            out.finished.append(i) if decision != STOP else out.stopped.append(i)
            start(now)
        else:  # it trains on, at its pace to the next row, until Tune ends it
            nxt = rows[j + 1]
            pace = (nxt[m.STEP] - steps) / max(
                1e-9, nxt[m.TRAIN_SECONDS] - rows[j][m.TRAIN_SECONDS]
            )
            steps = min(float(nxt[m.STEP]), steps + pace * costs.stop_seconds)
            seconds += costs.stop_seconds
            out.stopped.append(i)
            push(now + costs.stop_seconds, i, -1)
        out.steps += steps
        out.seconds += seconds
        out.fixed_seconds += fixed
        for k in range(len(bounds) - 1):
            out.steps_by_rung[k] += max(0.0, min(steps, bounds[k + 1]) - bounds[k])
    out.hypervolume = front_hypervolume(table, out.finished)
    return out


def front_hypervolume(table: Table, indices: Sequence[int]) -> float:
    """Hypervolume of the feasible finished trials' final values."""
    finals = []
    for i in indices:
        t = table.trials[i]
        row = t["rows"][-1]
        if t["outcome"] == "infeasible" or not all(c.holds(row) for c in table.constraints):
            continue
        finals.append({**row, "status": "COMPLETE"})
    if not finals:
        return 0.0
    return hypervolume_history(finals, table.objectives, table.reference)[-1]


# ---- many draws and their statistics -----------------------------------------------------------


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle half (sorted, 25 % trimmed each side)."""
    v = sorted(values)
    n = len(v)
    lo, hi = n // 4, n - n // 4
    return statistics.fmean(v[lo:hi]) if hi > lo else statistics.fmean(v)


def bootstrap_interval(values, stat=iqm, n: int = 1000, seed: int = 0, level: float = 0.95):
    rng = random.Random(seed)
    stats = sorted(stat(rng.choices(values, k=len(values))) for _ in range(n))
    a = (1 - level) / 2
    return stats[int(a * n)], stats[min(n - 1, int((1 - a) * n))]


def central(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Where the middle ``level`` of the values fall (what one more run should land in)."""
    v = sorted(values)
    a = (1 - level) / 2
    return v[int(a * (len(v) - 1))], v[math.ceil((1 - a) * (len(v) - 1))]


def replay(
    table: Table,
    rules: Sequence[Rule],
    n: int,
    workers: int,
    draws: int = 200,
    seed: int = 0,
    costs: Costs = MEASURED,
    rungs: Sequence[float] = (),
    bootstrap: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per rule: per-draw ratios against running everything (with reused actors), and their
    summary (:func:`summarize`)."""
    rng = random.Random(seed)
    if len(table.trials) < n:
        raise ValueError(f"the table has {len(table.trials)} usable trials, fewer than N={n}")
    plan = []
    for _ in range(draws):
        order = rng.sample(range(len(table.trials)), n)
        plan.append((order, set(rng.sample(order, max(1, round(0.4 * n))))))
    everything = [simulate(table, o, FIFOScheduler(), workers, costs, rungs) for o, _ in plan]
    out = {}
    for rule in rules:
        pairs = []
        for (order, subset), full in zip(plan, everything, strict=True):
            chosen = [i for i in order if i in subset] if rule.fraction < 1 else order
            o = simulate(table, chosen, rule.scheduler(table, n), workers, costs, rungs)
            pairs.append((o, full))
        out[rule.name] = summarize(pairs, bootstrap)
    return out


def summarize(pairs: Sequence[tuple[Outcome, Outcome]], bootstrap: bool = True) -> dict[str, Any]:
    """Steps and seconds spent, and hypervolume kept, against running everything."""
    steps = [o.steps / f.steps for o, f in pairs]
    seconds = [o.seconds / f.seconds for o, f in pairs]
    hv = [o.hypervolume / f.hypervolume for o, f in pairs if f.hypervolume > 0]
    total_steps = sum(o.steps for o, _ in pairs) or 1.0
    by_rung = [
        sum(o.steps_by_rung[k] for o, _ in pairs) / total_steps
        for k in range(len(pairs[0][0].steps_by_rung))
    ]
    nan2 = (math.nan, math.nan)
    return {
        "steps": statistics.fmean(steps),
        "seconds": statistics.fmean(seconds),
        "hv": hv,
        "hv_mean": statistics.fmean(hv) if hv else math.nan,
        "hv_iqm": iqm(hv) if hv else math.nan,
        "hv_iqm_ci": bootstrap_interval(hv) if hv and bootstrap else nan2,
        "hv_at_95": sum(v >= 0.95 for v in hv) / len(hv) if hv else math.nan,
        "hv_draws": len(hv),
        "hv_range": central(hv) if hv else nan2,
        "steps_by_rung": by_rung,
        "fixed_share": sum(o.fixed_seconds for o, _ in pairs) / sum(o.seconds for o, _ in pairs),
    }


def format_summary(results: Mapping[str, Mapping[str, Any]], rungs: Sequence[float]) -> str:
    heads = [f"<{r:g}" for r in rungs] + ["rest"]
    width = max(24, *(len(k) for k in results))
    lines = [
        f"{'rule':<{width}} {'steps':>6} {'secs':>6} {'hv mean':>8} {'hv IQM [95 % CI]':>22} "
        f"{'>=95%':>6}  steps per rung ({' '.join(heads)})  fixed"
    ]
    for name, s in results.items():
        lo, hi = s["hv_iqm_ci"]
        share = " ".join(f"{v:4.0%}" for v in s["steps_by_rung"])
        lines.append(
            f"{name:<{width}} {s['steps']:6.0%} {s['seconds']:6.0%} {s['hv_mean']:8.3f} "
            f"{s['hv_iqm']:8.3f} [{lo:.3f}, {hi:.3f}] {s['hv_at_95']:6.0%}  {share}  "
            f"{s['fixed_share']:4.0%}"
        )
    return "\n".join(lines)


# ---- when the curves start to say something ----------------------------------------------------


def signal_by_step(table: Table) -> dict[float, float]:
    """Spearman's rank correlation, over the table's trials, between the first objective at
    each recorded step and at the trial's end: how much a rung there can know of the end.
    Near 0, any rule that stops trials there is guessing."""
    from qa_ray.search.schedulers.memory_aware import rank_correlation

    metric = table.objectives[0][0]
    final = {i: t["rows"][-1].get(metric) for i, t in enumerate(table.trials)}
    by_step: dict[float, list[tuple[float, float]]] = {}
    for i, t in enumerate(table.trials):
        for r in t["rows"][:-1]:
            if r.get(metric) is not None and final[i] is not None:
                by_step.setdefault(r[m.STEP], []).append((r[metric], final[i]))
    return {s: rank_correlation(pairs) for s, pairs in sorted(by_step.items()) if len(pairs) >= 3}


def format_signal(signal: Mapping[float, float], metric: str) -> str:
    cells = "; ".join(f"{s:g}: {rho:+.2f}" for s, rho in signal.items())
    return f"rank correlation of {metric} at a step with its final value, by step: {cells}"


# ---- the noise floor: the same configurations with another seed --------------------------------

# Params that name a trial or seed it, not its configuration.
_NOT_CONFIG = (
    "seed", "name", "output_dir", "train.seed", "tracking", "storage_path", "memory_request_mb",
)  # fmt: skip


def config_key(config: Mapping[str, Any]) -> tuple:
    """A configuration, whatever seed or name it ran under."""
    return tuple(sorted((k, str(v)) for k, v in config.items() if k not in _NOT_CONFIG))


def noise_floor(table: Table, rerun: Table) -> dict[str, Any]:
    """The same configurations run again with another seed (``rerun``): per configuration in
    both, how far apart the first objective lands at each recorded step, and the hypervolume
    ratio between the two seeds' run-everything fronts over those configurations (either way
    round): what no early-stopping rule can be judged more finely than."""
    first = {config_key(t["config"]): i for i, t in enumerate(table.trials)}
    pairs = [
        (first[key], j)
        for j, t in enumerate(rerun.trials)
        if (key := config_key(t["config"])) in first
    ]
    if not pairs:
        raise ValueError("no configuration of the rerun table is in the table")
    metric = table.objectives[0][0]
    gaps: dict[float, list[float]] = {}
    for i, j in pairs:
        a = {r[m.STEP]: r.get(metric) for r in table.trials[i]["rows"]}
        for r in rerun.trials[j]["rows"]:
            if a.get(r[m.STEP]) is not None and r.get(metric) is not None:
                gaps.setdefault(r[m.STEP], []).append(abs(r[metric] - a[r[m.STEP]]))
    hv_a = front_hypervolume(table, [i for i, _ in pairs])
    both = Table(table.objectives, table.constraints, rerun.trials, table.reference)
    hv_b = front_hypervolume(both, [j for _, j in pairs])
    return {
        "configurations": len(pairs),
        "metric": metric,
        "gap_by_step": {s: (statistics.median(g), max(g)) for s, g in sorted(gaps.items())},
        "hv_ratio": (hv_b / hv_a if hv_a else math.nan, hv_a / hv_b if hv_b else math.nan),
    }


def format_noise(n: Mapping[str, Any]) -> str:
    steps = "; ".join(f"{s:g}: {med:.2f} / {mx:.2f}" for s, (med, mx) in n["gap_by_step"].items())
    lo, hi = sorted(n["hv_ratio"])
    return (
        f"noise floor ({n['configurations']} configurations rerun with another seed): "
        f"|{n['metric']} difference| median / max by step: {steps}\n"
        f"hypervolume ratio between the two seeds' run-everything fronts: {lo:.3f} and {hi:.3f}"
    )
