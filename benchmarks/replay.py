"""Replays early-stopping rules on a learning-curve table: the research side of
``qa-ray replay`` (the simulator lives in ``qa_ray/report/replay.py``, the rules and the
literature's baselines in ``qa_ray/report/replay_rules.py``).

    PYTHONPATH=. .venv/bin/python benchmarks/replay.py TABLE.json [--draws 200] [--sizes 12 24]

``TABLE.json`` is a table of ``qa_ray/report/curves.py`` (``python -m qa_ray.report.curves``), or a
synthetic one (``benchmarks/curves/synthetic.py``). Only its ``complete`` and ``infeasible``
trials are drawn: a pruned trial's curve ends where it was stopped.

Draws of N configurations in random orders on W workers (1 and 4), the same for every rule;
each rule against running everything: steps and seconds spent (each rule's actor policy's
fixed cost per trial, and a stopped trial's run-on until Tune ends it, included:
``qa_ray.report.replay.Costs``), the hypervolume kept (mean, IQM with a 95 % bootstrap
interval, share of draws at >= 95 %), the share of steps before each rung, the fixed costs'
share. Rules: the baselines (run everything, a random 40 %, top third after the first grace,
Dodge et al. 2020's start many / stop early at 20 and 30 %, Egele et al. 2023's one epoch then
the top K), MO-ASHA at two graces, memory_aware at the first.

``--live LIVE.json``: a sweep run live with a scheduler on configurations of TABLE, against the
replay of that scheduler. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler

from qa_ray import metrics as m
from qa_ray.report.replay import (  # noqa: F401  (what tests and tune_rule.py read here)
    MEASURED,
    Costs,
    Outcome,
    Rule,
    Table,
    TableError,
    bootstrap_interval,
    config_key,
    format_noise,
    format_signal,
    format_summary,
    front_hypervolume,
    iqm,
    load_table,
    noise_floor,
    replay,
    signal_by_step,
    simulate,
)
from qa_ray.report.replay_rules import baselines, from_block, scheduler_from_block

_config_key = config_key


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments said in one line on stderr, exit 2 (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def default_rules(table: Table, graces: Sequence[float] = (10, 30), rf: float = 3.0) -> list[Rule]:
    """The baselines, then MO-ASHA at each grace."""
    return baselines(table, graces[0]) + [
        from_block({"type": "mo_asha", "grace": g, "reduction_factor": rf}, f"mo_asha grace {g:g}")
        for g in graces
    ]


# ---- a live sweep against the replay --------------------------------------------------------------


def live_check(
    table: Table,
    live_path: str,
    workers: int,
    draws: int = 200,
    seed: int = 0,
    costs: Costs = MEASURED,
) -> dict[str, Any]:
    """A sweep run live with a scheduler (``live_path``, its curve table) against the same
    configurations run to their end (in ``table``) and against the replay of that scheduler.

    The live ratios: the hypervolume of the live trials that ran to their end (their own
    values) over that of every matched configuration run to its end (the table's), and the
    steps and seconds (each side's fixed costs per trial added) live over run-to-end. The replay: the
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
    full = simulate(table, order, FIFOScheduler(), workers, costs)
    steps = sum(t["rows"][-1][m.STEP] for t, _ in matched)
    seconds = sum(costs.fresh + t["rows"][-1][m.TRAIN_SECONDS] for t, _ in matched)
    again = simulate(table, order, scheduler_from_block(raw["scheduler"], table), workers, costs)
    rule = from_block(raw["scheduler"], "live rule")
    drawn = replay(table, [rule], len(order), workers, draws, seed, costs)["live rule"]
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
    p = OneLineParser(prog="replay.py", description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 24])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--fixed-reused", type=float, default=Costs.reused,
                   help="a trial's fixed cost with reused actors (no scheduler), s")  # fmt: skip
    p.add_argument("--fixed-fresh", type=float, default=Costs.fresh,
                   help="a trial's fixed cost in a fresh actor (any scheduler), s")  # fmt: skip
    p.add_argument("--stop-seconds", type=float, default=Costs.stop_seconds,
                   help="how long a stopped trial trains on until Tune ends it, s")  # fmt: skip
    p.add_argument("--graces", type=float, nargs=2, default=[10, 30])
    p.add_argument("--rf", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-floor", type=float, default=1.0, help="memory_aware's, F1 points")
    p.add_argument("--warmup", type=float, default=0.0, help="memory_aware's, steps")
    p.add_argument("--memory-slack", type=float, default=0.0,
                   help="memory_aware's, a fraction")  # fmt: skip
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
    try:
        return _run(args)
    except (ValueError, KeyError, TypeError) as e:  # a table or option that does not fit
        print(f"replay.py: {e if isinstance(e, ValueError) else repr(e)}", file=sys.stderr)
        return 2


def _run(args) -> int:
    bad = [f"{flag} must be {rule}, but got {v}" for flag, v, ok, rule in (
        ("--draws", args.draws, args.draws >= 1, ">= 1"),
        ("--sizes", args.sizes, all(n >= 1 for n in args.sizes), ">= 1 each"),
        ("--workers", args.workers, all(w >= 1 for w in args.workers), ">= 1 each"),
        ("--graces", args.graces, all(g > 0 for g in args.graces), "> 0 each"),
        ("--rf", args.rf, args.rf > 1, "> 1"),
        ("--fixed-reused", args.fixed_reused, args.fixed_reused >= 0, ">= 0"),
        ("--fixed-fresh", args.fixed_fresh, args.fixed_fresh >= 0, ">= 0"),
        ("--stop-seconds", args.stop_seconds, args.stop_seconds >= 0, ">= 0")) if not ok]  # fmt: skip
    if bad:
        raise ValueError("; ".join(bad))
    costs = Costs(args.fixed_reused, args.fixed_fresh, args.stop_seconds)
    table = load_table(args.table)
    if not table.trials:
        raise TableError(args.table, ["`trials`: none is complete or infeasible with rows"])
    head = (f"{args.table}: {len(table.trials)} trials; fixed cost per trial {costs.reused:g} s "
            f"(reused actors) / {costs.fresh:g} s (fresh); a stopped trial runs on "
            f"{costs.stop_seconds:g} s")  # fmt: skip
    if args.live:
        r = live_check(table, args.live, args.live_workers, args.draws, args.seed, costs)
        print(head)
        print(format_live(r, args.live_workers))
        return 0
    too_many = [n for n in args.sizes if n > len(table.trials)]
    if too_many:
        raise ValueError(f"--sizes {too_many[0]}: the table has {len(table.trials)} usable trials")
    rules = default_rules(table, args.graces, args.rf) + [
        from_block(
            {
                "type": "memory_aware",
                "grace": args.graces[0],
                "reduction_factor": args.rf,
                "noise_floor": args.noise_floor,
                "memory_slack": args.memory_slack,
                "min_signal": args.min_signal,
                "signal_trials": args.signal_trials,
                "warmup": args.warmup,
            },
            f"memory_aware grace {args.graces[0]:g}",
        )  # fmt: skip
    ]
    longest = max(t["rows"][-1][m.STEP] for t in table.trials)
    rungs = [r for k in range(4) if (r := args.graces[0] * args.rf**k) < longest]
    print(f"{head}; reference {table.reference}; {args.draws} draws; ratios to running everything")
    print(format_signal(signal_by_step(table), table.objectives[0][0]))
    if args.rerun:
        print(format_noise(noise_floor(table, load_table(args.rerun))))
    began = time.perf_counter()
    for n in args.sizes:
        for w in args.workers:
            results = replay(table, rules, n, w, args.draws, args.seed, costs, rungs)
            print(f"\nN={n}, {w} worker{'s' if w > 1 else ''}")
            print(format_summary(results, rungs))
    print(f"\n{time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    import logging

    logging.getLogger("qa_ray.search.schedulers").setLevel(logging.WARNING)
    sys.exit(main())
