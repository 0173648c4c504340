"""``qa-ray replay``: finished sweeps replayed through early-stopping rules, and the
``search.scheduler`` block (or none) advised for the next sweep of that kind.

qa-ray replay benchmarks/curves/minilm_squad_v1_a.json
qa-ray replay my-sweep --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import logging
import os
import sys
import time

from qa_ray.cli.codes import EXIT_BAD_INPUT, EXIT_OK
from qa_ray.errors import ConfigError


def _load(source: str, uri: str | None):
    """A curve table from a JSON file, or exported from MLflow for a sweep name or run id."""
    from qa_ray.report.replay import load_table

    if source.endswith(".json") or os.path.isfile(source):
        return load_table(source)
    from qa_ray.report.curves import export_curves
    from qa_ray.tracking.runs import resolve_tracking_uri

    return load_table(export_curves(resolve_tracking_uri(None, uri), source), f"sweep {source!r}")


def cmd_replay(args) -> int:
    from qa_ray.report import advise
    from qa_ray.report.replay import (
        format_noise,
        format_signal,
        format_summary,
        noise_floor,
        replay,
        signal_by_step,
    )
    from qa_ray.report.replay_rules import baselines, from_block

    bad = [f"`{flag}` must be {rule}, but got {value}"
           for flag, value, ok, rule in (
               ("--splits", args.splits, args.splits >= 2, ">= 2"),
               ("--draws", args.draws, args.draws >= 1, ">= 1"),
               ("--workers", args.workers, all(w >= 1 for w in args.workers), ">= 1 each"),
               ("--keep", args.keep, 0 < args.keep <= 1, "in (0, 1]"))
           if not ok]  # fmt: skip
    try:
        if bad:
            raise ConfigError("command line", bad)
        table, reruns = advise.pool([_load(s, args.tracking_uri) for s in args.sweep])
        if len(table.trials) < advise.MIN_TRIALS:
            raise ConfigError(table.source, [f"`trials`: a replay needs at least "
                                             f"{advise.MIN_TRIALS} trials run to their end, "
                                             f"but got {len(table.trials)}"])  # fmt: skip
    except ConfigError as exc:
        print(f"error: {exc.source}: {'; '.join(exc.errors)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.verbose:  # a line per stopped trial, thousands of times over
        logging.getLogger("qa_ray.search.schedulers").setLevel(logging.WARNING)
    began = time.perf_counter()
    last = max(t["rows"][-1]["step"] for t in table.trials)
    print(f"{table.source}: {len(table.trials)} trials run to their end; objectives "
          f"{', '.join(f'{k} {mode}' for k, mode in table.objectives)}; hypervolume reference "
          f"{tuple(round(v, 1) for v in table.reference)}")  # fmt: skip
    signal = signal_by_step(table)
    print(format_signal(signal, table.objectives[0][0]))
    noise = None
    for rerun in reruns:
        n = noise_floor(table, rerun)
        print(format_noise(n))
        early = [med for s, (med, _) in n["gap_by_step"].items() if s < last]
        noise = max(noise or 0.0, *early) if early else noise
    separation = advise.separation_step(signal, last)
    blocks = advise.candidate_blocks(table, noise)
    found = advise.cross_validate(table, blocks, args.splits, args.draws, args.workers,
                                  args.keep, args.seed)  # fmt: skip
    steps = advise.eval_steps(table)
    early = min(steps, key=lambda s: abs(s - last / 8)) if steps else last / 8
    late = separation if separation < last else max(s for s in steps if s <= last / 2)
    shown = {"mo_asha": [early, late], "memory_aware": [early, late]}
    if advise.has_per_question(table):
        shown["race"] = [early, late]
    extras = {"memory_aware": {"noise_floor": 1.5, "memory_slack": 0.3},
              "race": {"reduction_factor": 2.0, "alpha": 0.05}}  # fmt: skip
    rules = baselines(table, early)
    for kind, graces in shown.items():
        for g in dict.fromkeys(graces):
            block = {"type": kind, "grace": g, "reduction_factor": 3.0, **extras.get(kind, {})}
            rules.append(from_block(block))
    if found.block and all(r.block != found.block for r in rules):
        rules.append(from_block(found.block, "the recommended block"))
    rungs = [early * 3**k for k in range(3) if early * 3**k < last]
    for w in args.workers:
        results = replay(table, rules, len(table.trials), w, args.draws * 4, args.seed,
                         rungs=rungs)  # fmt: skip
        print(f"\nevery configuration in {args.draws * 4} random orders, {w} worker"
              f"{'s' if w > 1 else ''}; compute and hypervolume against running everything "
              f"(fixed costs of each rule's actor policy included)")  # fmt: skip
        print(format_summary(results, rungs))
    print()
    print(advise.format_advice(found, separation, args.workers, args.draws))
    print(f"({time.perf_counter() - began:.0f} s)")
    return EXIT_OK
