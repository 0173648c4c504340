"""Replays early-stopping rules on a learning-curve table: the real scheduler objects, driven
through the calls Ray Tune makes, over many random draws of configurations and orders.

    PYTHONPATH=. .venv/bin/python benchmarks/replay.py TABLE.json [--draws 200] [--fixed 10.5]

``TABLE.json`` is a table of ``qa_ray/report/curves.py`` (``python -m qa_ray.report.curves``), or a
synthetic one (``benchmarks/curves/synthetic.py``). Only its ``complete`` and ``infeasible``
trials are drawn: a pruned trial's curve ends where it was stopped.

One draw: N configurations of the table in a random order, run on W workers (1 and 4). A
worker starts the next configuration when it frees; each result arrives at the trial's start
plus a fixed cost (``--fixed``, default 10.5 s: the measured start-up of a trial here) plus
its recorded ``train_seconds``. Each result goes to ``on_trial_result`` (the trial's last one
marked ``final_report``, an ``infeasible`` trial's last one marked so); a STOP or the last
result ends the trial (``on_trial_complete``). The draws are the same for every rule.

Per rule, against running every trial of the draw to its end:

- compute: optimizer steps and simulated seconds (fixed costs included) spent;
- hypervolume of the trials that ran to their end and are feasible, relative to that of
  running everything (reference point: 0 for a score, the budget for a budgeted metric, else
  the table's worst + 10 %): mean, interquartile mean with a 95 % bootstrap interval, and
  the fraction of draws at >= 95 %;
- where compute goes: the share of steps run before each rung (MO-ASHA's first grace's rungs)
  and the share of seconds that are fixed costs.

Baselines: run everything; a random 40 % of the configurations run fully (the rest not at
all); keep the top third on the first objective after the first rung; MO-ASHA at two graces.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from qa_ray import metrics as m
from qa_ray.pareto import hypervolume_history, parse_constraint
from qa_ray.report.summary import reference_point
from qa_ray.search.schedulers.memory_aware import rank_correlation
from qa_ray.search.schedulers.mo_asha import MOASHA

STOP = TrialScheduler.STOP
FIXED_SECONDS = 10.5


# ---- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    objectives: tuple[tuple[str, str], ...]
    constraints: tuple  # Constraint
    trials: tuple[dict, ...]  # complete and infeasible ones, with rows
    reference: tuple[float, ...]


def load_table(path: str) -> Table:
    with open(path) as f:
        raw = json.load(f)
    objectives = tuple((k, mode) for k, mode in raw["objectives"])
    constraints = tuple(parse_constraint(c) for c in raw.get("constraints", []))
    trials = tuple(
        t for t in raw["trials"] if t["outcome"] in ("complete", "infeasible") and t["rows"]
    )
    budgets = {c.metric: c.bound for c in constraints if c.is_upper}
    finals = [t["rows"][-1] for t in trials]
    ref = reference_point(finals, objectives, {k: v for k, v in budgets.items()})
    return Table(objectives, constraints, trials, tuple(ref))


# ---- rules -------------------------------------------------------------------------------------


class TopAfterFirstRung(FIFOScheduler):
    """At its first result at or past ``rung``, a trial goes on if it is in the best third (by
    the first objective) of the trials that reached the rung so far; never judged again."""

    def __init__(self, objective: tuple[str, str], rung: float, time_attr: str = m.STEP):
        super().__init__()
        self.objective, self.rung, self.time_attr = objective, rung, time_attr
        self.seen: dict[str, float] = {}

    def on_trial_result(self, tune_controller, trial, result) -> str:
        if trial.trial_id in self.seen or result.get(self.time_attr, 0) < self.rung:
            return TrialScheduler.CONTINUE
        metric, mode = self.objective
        v = result[metric] * (1 if mode == "max" else -1)
        self.seen[trial.trial_id] = v
        place = sorted(self.seen.values(), reverse=True).index(v)
        keep = result.get(m.FINAL_REPORT) or place * 3 <= len(self.seen)
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP


@dataclass(frozen=True)
class Rule:
    name: str
    scheduler: Callable[[Table], TrialScheduler]
    fraction: float = 1.0  # the share of the draw's configurations run at all


def default_rules(graces: Sequence[float] = (10, 30), rf: float = 3.0) -> list[Rule]:
    rules = [
        Rule("run everything", lambda t: FIFOScheduler()),
        Rule("random 40 %", lambda t: FIFOScheduler(), fraction=0.4),
        Rule(
            f"top third after {graces[0]:g}",
            lambda t: TopAfterFirstRung(t.objectives[0], graces[0]),
        ),
    ]
    for g in graces:
        rules.append(
            Rule(
                f"mo_asha grace {g:g}",
                lambda t, g=g: MOASHA(
                    t.objectives, grace=g, reduction_factor=rf, constraints=t.constraints
                ),
            )
        )
    return rules


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


def simulate(
    table: Table,
    order: Sequence[int],
    scheduler: TrialScheduler,
    workers: int,
    fixed: float = FIXED_SECONDS,
    rungs: Sequence[float] = (),
) -> Outcome:
    """Runs the table's trials ``order`` through ``scheduler`` on ``workers`` workers."""
    out = Outcome(steps_by_rung=[0.0] * (len(rungs) + 1))
    pending = list(order)[::-1]
    events: list[tuple[float, int, int, int]] = []  # (time, seq, table index, row index)
    seq = 0
    trials = {}

    def start(now: float) -> None:
        nonlocal seq
        if not pending:
            return
        i = pending.pop()
        trials[i] = SimpleNamespace(trial_id=f"t{i:04d}", config=table.trials[i]["config"])
        scheduler.on_trial_add(None, trials[i])
        row = table.trials[i]["rows"][0]
        heapq.heappush(events, (now + fixed + row[m.TRAIN_SECONDS], seq, i, 0))
        seq += 1

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, i, j = heapq.heappop(events)
        t = table.trials[i]
        rows = t["rows"]
        # What the loop reports with every result: the steps the trial plans.
        result = {**rows[j], m.TRAINING_ITERATION: j + 1, m.PLANNED_STEPS: rows[-1][m.STEP]}
        last = j == len(rows) - 1
        if last:
            result[m.FINAL_REPORT] = 1.0
            if t["outcome"] == "infeasible":
                result[m.INFEASIBLE] = 1.0
        decision = scheduler.on_trial_result(None, trials[i], result)
        if decision == STOP or last:
            scheduler.on_trial_complete(None, trials[i], result)
            steps = float(rows[j][m.STEP])
            out.steps += steps
            out.seconds += fixed + rows[j][m.TRAIN_SECONDS]
            out.fixed_seconds += fixed
            bounds = [0.0, *rungs, math.inf]
            for k in range(len(bounds) - 1):
                out.steps_by_rung[k] += max(0.0, min(steps, bounds[k + 1]) - bounds[k])
            (out.finished if last and decision != STOP else out.stopped).append(i)
            start(now)
        else:
            nxt = rows[j + 1]
            start_time = now - fixed - rows[j][m.TRAIN_SECONDS]
            heapq.heappush(events, (start_time + fixed + nxt[m.TRAIN_SECONDS], seq, i, j + 1))
            seq += 1
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


def replay(
    table: Table,
    rules: Sequence[Rule],
    n: int,
    workers: int,
    draws: int = 200,
    seed: int = 0,
    fixed: float = FIXED_SECONDS,
    rungs: Sequence[float] = (),
) -> dict[str, dict[str, Any]]:
    """Per rule: per-draw ratios against running everything, and their summary."""
    rng = random.Random(seed)
    if len(table.trials) < n:
        raise ValueError(f"the table has {len(table.trials)} usable trials, fewer than N={n}")
    plan = []
    for _ in range(draws):
        order = rng.sample(range(len(table.trials)), n)
        plan.append((order, rng.sample(order, max(1, round(0.4 * n)))))
    runs = {r.name: [] for r in rules}
    everything = [
        simulate(table, order, FIFOScheduler(), workers, fixed, rungs) for order, _ in plan
    ]
    for rule in rules:
        for (order, subset), full in zip(plan, everything, strict=True):
            chosen = [i for i in order if i in set(subset)] if rule.fraction < 1 else order
            o = simulate(table, chosen, rule.scheduler(table), workers, fixed, rungs)
            runs[rule.name].append((o, full))
    return {name: summarize(pairs) for name, pairs in runs.items()}


def summarize(pairs: Sequence[tuple[Outcome, Outcome]]) -> dict[str, Any]:
    steps = [o.steps / f.steps for o, f in pairs]
    seconds = [o.seconds / f.seconds for o, f in pairs]
    hv = [o.hypervolume / f.hypervolume for o, f in pairs if f.hypervolume > 0]
    total_steps = sum(o.steps for o, _ in pairs) or 1.0
    by_rung = [
        sum(o.steps_by_rung[k] for o, _ in pairs) / total_steps
        for k in range(len(pairs[0][0].steps_by_rung))
    ]
    return {
        "steps": statistics.fmean(steps),
        "seconds": statistics.fmean(seconds),
        "hv_mean": statistics.fmean(hv) if hv else math.nan,
        "hv_iqm": iqm(hv) if hv else math.nan,
        "hv_iqm_ci": bootstrap_interval(hv) if hv else (math.nan, math.nan),
        "hv_at_95": sum(v >= 0.95 for v in hv) / len(hv) if hv else math.nan,
        "hv_draws": len(hv),
        "hv_range": _central(hv) if hv else (math.nan, math.nan),
        "steps_by_rung": by_rung,
        "fixed_share": sum(o.fixed_seconds for o, _ in pairs) / sum(o.seconds for o, _ in pairs),
    }


def _central(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Where the middle ``level`` of single draws fall (what one more run should land in)."""
    v = sorted(values)
    a = (1 - level) / 2
    return v[int(a * (len(v) - 1))], v[math.ceil((1 - a) * (len(v) - 1))]


def format_summary(results: dict[str, dict[str, Any]], rungs: Sequence[float]) -> str:
    heads = [f"<{r:g}" for r in rungs] + ["rest"]
    lines = [
        f"{'rule':<24} {'steps':>6} {'secs':>6} {'hv mean':>8} {'hv IQM [95 % CI]':>22} "
        f"{'>=95%':>6}  steps per rung ({' '.join(heads)})  fixed"
    ]
    for name, s in results.items():
        lo, hi = s["hv_iqm_ci"]
        share = " ".join(f"{v:4.0%}" for v in s["steps_by_rung"])
        lines.append(
            f"{name:<24} {s['steps']:6.0%} {s['seconds']:6.0%} {s['hv_mean']:8.3f} "
            f"{s['hv_iqm']:8.3f} [{lo:.3f}, {hi:.3f}] {s['hv_at_95']:6.0%}  {share}  "
            f"{s['fixed_share']:4.0%}"
        )
    return "\n".join(lines)


# ---- when the curves start to say something ---------------------------------------------------------


def signal_by_step(table: Table) -> dict[float, float]:
    """Spearman's rank correlation, over the table's trials, between the first objective at
    each recorded step and at the trial's end: how much a rung there can know of the end.
    Near 0, any rule that stops trials there is guessing."""
    metric = table.objectives[0][0]
    final = {i: t["rows"][-1].get(metric) for i, t in enumerate(table.trials)}
    by_step: dict[float, list[tuple[float, float]]] = {}
    for i, t in enumerate(table.trials):
        for r in t["rows"][:-1]:
            if r.get(metric) is not None and final[i] is not None:
                by_step.setdefault(r[m.STEP], []).append((r[metric], final[i]))
    return {s: rank_correlation(pairs) for s, pairs in sorted(by_step.items()) if len(pairs) >= 3}


def format_signal(signal: dict[float, float], metric: str) -> str:
    cells = "; ".join(f"{s:g}: {rho:+.2f}" for s, rho in signal.items())
    return f"rank correlation of {metric} at a step with its final value, by step: {cells}"


# ---- the noise floor: the same configurations with another seed ---------------------------------

# Params that name a trial or seed it, not its configuration.
_NOT_CONFIG = (
    "seed", "name", "output_dir", "train.seed", "tracking", "storage_path", "memory_request_mb",
)  # fmt: skip


def _config_key(config: dict[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in config.items() if k not in _NOT_CONFIG))


def noise_floor(table: Table, rerun: Table) -> dict[str, Any]:
    """The same configurations run again with another seed (``rerun``): per configuration in
    both, how far apart the first objective lands at each recorded step, and the hypervolume
    ratio between the two seeds' run-everything fronts over those configurations (either way
    round): what no early-stopping rule can be judged more finely than."""
    first = {_config_key(t["config"]): i for i, t in enumerate(table.trials)}
    pairs = [
        (first[key], j)
        for j, t in enumerate(rerun.trials)
        if (key := _config_key(t["config"])) in first
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


def format_noise(n: dict[str, Any]) -> str:
    steps = "; ".join(f"{s:g}: {med:.2f} / {mx:.2f}" for s, (med, mx) in n["gap_by_step"].items())
    lo, hi = sorted(n["hv_ratio"])
    return (
        f"noise floor ({n['configurations']} configurations rerun with another seed): "
        f"|{n['metric']} difference| median / max by step: {steps}\n"
        f"hypervolume ratio between the two seeds' run-everything fronts: {lo:.3f} and {hi:.3f}"
    )


# ---- a live sweep against the replay --------------------------------------------------------------


def scheduler_from_block(block: dict[str, Any], table: Table) -> TrialScheduler:
    """The scheduler a sweep's ``search.scheduler`` block (as its curve table records it)
    names, built as a sweep builds it (``qa_ray.sweep.tuner.build_scheduler``; no state
    file)."""
    from qa_ray.sweep.config import SchedulerConfig
    from qa_ray.sweep.tuner import build_scheduler

    return build_scheduler(SchedulerConfig(**block), table.objectives, table.constraints)


def live_check(
    table: Table,
    live_path: str,
    workers: int,
    draws: int = 200,
    seed: int = 0,
    fixed: float = FIXED_SECONDS,
) -> dict[str, Any]:
    """A sweep run live with a scheduler (``live_path``, its curve table) against the same
    configurations run to their end (in ``table``) and against the replay of that scheduler.

    The live ratios: the hypervolume of the live trials that ran to their end (their own
    values) over that of every matched configuration run to its end (the table's), and the
    steps and seconds (``fixed`` a trial added to both) live over run-to-end. The replay: the
    same scheduler on the same configurations in the live order (one deterministic run), and
    over ``draws`` random draws of as many configurations of the table, the central 95 % of
    single draws and the IQM's bootstrap interval."""
    with open(live_path) as f:
        raw = json.load(f)
    if not raw.get("scheduler"):
        raise ValueError(f"{live_path}: the sweep ran without a scheduler (`scheduler` is null)")
    index = {_config_key(t["config"]): i for i, t in enumerate(table.trials)}
    matched, missing = [], []
    for t in raw["trials"]:
        if t["outcome"] not in ("complete", "pruned", "infeasible") or not t["rows"]:
            continue
        key = _config_key(t["config"])
        (matched.append((t, index[key])) if key in index else missing.append(t["name"]))
    if missing:
        raise ValueError(
            f"{live_path}: {len(missing)} live trial(s) have no configuration in the table "
            f"({', '.join(missing[:3])}): run the live sweep with the table's sampler and seed"
        )
    live = Table(table.objectives, table.constraints, tuple(t for t, _ in matched), table.reference)
    finished = [j for j, (t, _) in enumerate(matched) if t["outcome"] != "pruned"]
    order = [i for _, i in matched]
    full = simulate(table, order, FIFOScheduler(), workers, fixed)
    steps = sum(t["rows"][-1][m.STEP] for t, _ in matched)
    seconds = sum(fixed + t["rows"][-1][m.TRAIN_SECONDS] for t, _ in matched)
    again = simulate(table, order, scheduler_from_block(raw["scheduler"], table), workers, fixed)
    rule = Rule("live rule", lambda t: scheduler_from_block(raw["scheduler"], t))
    drawn = replay(table, [rule], len(order), workers, draws, seed, fixed)["live rule"]
    # The same configurations measured twice (live and in the table), step by step.
    gaps: dict[str, list[float]] = {k: [] for k, _ in table.objectives}
    for t, i in matched:
        recorded = {r[m.STEP]: r for r in table.trials[i]["rows"]}
        for row in t["rows"]:
            for k in gaps:
                a, b = row.get(k), recorded.get(row[m.STEP], {}).get(k)
                if a is not None and b:
                    gaps[k].append(a / b - 1)
    return {
        "scheduler": raw["scheduler"],
        "trials": len(order),
        "stopped": len(order) - len(finished),
        "hv": front_hypervolume(live, finished) / full.hypervolume,
        # the live decisions on the table's values: the rule's part of the live ratio
        "hv_table_values": front_hypervolume(table, [order[j] for j in finished])
        / full.hypervolume,
        "measured_apart": {k: (min(v), max(v)) for k, v in gaps.items() if v},
        "steps": steps / full.steps,
        "seconds": seconds / full.seconds,
        "replayed": {
            "hv": again.hypervolume / full.hypervolume,
            "steps": again.steps / full.steps,
            "stopped": len(again.stopped),
        },
        "draws": drawn,
    }


def format_live(r: dict[str, Any], workers: int) -> str:
    d = r["draws"]
    lo, hi = d["hv_range"]
    ci_lo, ci_hi = d["hv_iqm_ci"]
    inside = lo <= r["hv"] <= hi
    return "\n".join(
        [
            f"live sweep: {r['scheduler']}, {r['trials']} trials, {r['stopped']} stopped early",
            f"  live:                     hv ratio {r['hv']:.3f} at {r['steps']:.0%} of the steps, "
            f"{r['seconds']:.0%} of the seconds",
            f"  live decisions on the table's values: hv ratio {r['hv_table_values']:.3f}",
            "  the same configurations at the same steps, live against the table: "
            + "; ".join(
                f"{k} {lo:+.1%} to {hi:+.1%}" for k, (lo, hi) in r["measured_apart"].items()
            ),
            f"  replayed, same order, {workers} worker{'s' if workers > 1 else ''}: hv ratio "
            f"{r['replayed']['hv']:.3f} at {r['replayed']['steps']:.0%} of the steps, "
            f"{r['replayed']['stopped']} stopped early",
            f"  replay, {d['hv_draws']} draws of {r['trials']}: hv IQM {d['hv_iqm']:.3f} "
            f"[{ci_lo:.3f}, {ci_hi:.3f}], central 95 % of draws [{lo:.3f}, {hi:.3f}], "
            f"steps {d['steps']:.0%}",
            f"  the live ratio is {'inside' if inside else 'OUTSIDE'} the replay's central 95 %",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 24])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--fixed", type=float, default=FIXED_SECONDS)
    p.add_argument("--graces", type=float, nargs=2, default=[10, 30])
    p.add_argument("--rf", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-floor", type=float, default=1.0, help="memory_aware's, F1 points")
    p.add_argument("--warmup", type=float, default=0.0, help="memory_aware's, steps")
    p.add_argument(
        "--memory-slack", type=float, default=0.0, help="memory_aware's, a fraction"
    )  # fmt: skip
    p.add_argument("--min-signal", type=float, help="memory_aware's (default: none)")
    p.add_argument("--signal-trials", type=int, default=5, help="memory_aware's")
    p.add_argument(
        "--rerun", help="a table of some of the same configurations with another seed: "
        "prints the noise floor"
    )  # fmt: skip
    p.add_argument(
        "--live", help="the curve table of a sweep run with a scheduler on configurations of "
        "TABLE: its ratios against the replay's (then only that is printed)"
    )  # fmt: skip
    p.add_argument("--live-workers", type=int, default=2, help="the live sweep's concurrency")
    args = p.parse_args(argv)
    table = load_table(args.table)
    if args.live:
        try:
            r = live_check(table, args.live, args.live_workers, args.draws, args.seed, args.fixed)
        except ValueError as e:  # a live table that does not fit (said with its path)
            print(f"replay.py: {e}", file=sys.stderr)
            return 2
        print(f"{args.table}: {len(table.trials)} trials; fixed cost {args.fixed:g} s")
        print(format_live(r, args.live_workers))
        return 0
    rules = default_rules(args.graces, args.rf) + _extra_rules(
        args.rf,
        args.graces[0],
        args.noise_floor,
        args.warmup,
        args.memory_slack,
        args.min_signal,
        args.signal_trials,
    )
    longest = max(t["rows"][-1][m.STEP] for t in table.trials)
    rungs = [r for k in range(4) if (r := args.graces[0] * args.rf**k) < longest]
    print(
        f"{args.table}: {len(table.trials)} trials; reference {table.reference}; "
        f"{args.draws} draws; fixed cost {args.fixed:g} s; ratios to running everything"
    )
    print(format_signal(signal_by_step(table), table.objectives[0][0]))
    if args.rerun:
        print(format_noise(noise_floor(table, load_table(args.rerun))))
    began = time.perf_counter()
    for n in args.sizes:
        for w in args.workers:
            results = replay(table, rules, n, w, args.draws, args.seed, args.fixed, rungs)
            print(f"\nN={n}, {w} worker{'s' if w > 1 else ''}")
            print(format_summary(results, rungs))
    print(f"\n{time.perf_counter() - began:.1f} s")
    return 0


def _extra_rules(
    rf: float,
    grace: float = 10,
    noise_floor: float = 1.0,
    warmup: float = 0.0,
    memory_slack: float = 0.0,
    min_signal: float | None = None,
    signal_trials: int = 5,
) -> list[Rule]:
    from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping

    return [
        Rule(
            f"memory_aware grace {grace:g}",
            lambda t: MemoryAwareStopping(
                t.objectives,
                grace=grace,
                reduction_factor=rf,
                noise_floor=noise_floor,
                memory_slack=memory_slack,
                min_signal=min_signal,
                signal_trials=signal_trials,
                warmup=warmup,
                constraints=t.constraints,
            ),
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
