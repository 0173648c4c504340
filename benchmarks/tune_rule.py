"""Tunes memory_aware's parameters on one curve table, for judging on another.

    PYTHONPATH=. .venv/bin/python benchmarks/tune_rule.py benchmarks/curves/minilm_squad_v1_a.json

Every combination of grace, reduction factor, noise floor, memory slack (and, with
``--min-signals``, the rung gate ``min_signal``) in the grid is
replayed (``benchmarks/replay.py``: the real scheduler, simulated asynchronous arrival) on the
same seeded draws at N = 12 and 24 configurations, 1 and 4 workers (``--sizes``,
``--workers``). The chosen setting is the
one with the least mean compute (steps relative to running every trial to its end, averaged
over the cells) among those whose interquartile-mean hypervolume ratio has the lower end
of its 95 % bootstrap interval at or above ``--keep`` (default 0.95) in every cell. It prints
the settings on the cheap side of that frontier and the command that judges the chosen one on
another table. Tune on one table only: a setting chosen on the table it is judged on says
nothing of the next sweep.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import FIXED_SECONDS, Rule, load_table, replay  # noqa: E402

from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping  # noqa: E402


def grid_rules(
    graces: Sequence[float],
    rfs: Sequence[float],
    floors: Sequence[float],
    slacks: Sequence[float],
    signals: Sequence[float | None] = (None,),
) -> list[tuple[dict, Rule]]:
    out = []
    for g, rf, nf, sl, sig in itertools.product(graces, rfs, floors, slacks, signals):
        params = {
            "grace": g,
            "reduction_factor": rf,
            "noise_floor": nf,
            "memory_slack": sl,
            "min_signal": sig,
        }
        out.append(
            (
                params,
                Rule(
                    f"g{g:g} rf{rf:g} nf{nf:g} slack{sl:g}"
                    + ("" if sig is None else f" sig{sig:g}"),
                    lambda t, p=params: MemoryAwareStopping(
                        t.objectives, constraints=t.constraints, **p
                    ),
                ),
            )
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed", type=float, default=FIXED_SECONDS)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 24])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--keep", type=float, default=0.95, help="the hypervolume ratio to keep")
    p.add_argument("--graces", type=float, nargs="+", default=[2, 4, 8])
    p.add_argument("--rfs", type=float, nargs="+", default=[2, 3])
    p.add_argument("--noise-floors", type=float, nargs="+", default=[1, 1.5, 2, 3, 4])
    p.add_argument("--memory-slacks", type=float, nargs="+", default=[0, 0.05, 0.1, 0.2, 0.3])
    p.add_argument(
        "--min-signals", type=_signal, nargs="+", default=[None],
        help="memory_aware's min_signal values ('none': off); default: off only",
    )  # fmt: skip
    args = p.parse_args(argv)
    table = load_table(args.table)
    cell_keys = list(itertools.product(args.sizes, args.workers))
    grid = grid_rules(
        args.graces, args.rfs, args.noise_floors, args.memory_slacks, args.min_signals
    )
    began = time.perf_counter()
    cells = {
        (n, w): replay(table, [r for _, r in grid], n, w, args.draws, args.seed, args.fixed)
        for n, w in cell_keys
    }
    rows = []
    for params, rule in grid:
        s = [cells[c][rule.name] for c in cell_keys]
        rows.append(
            {
                "params": params,
                "name": rule.name,
                "steps": statistics.fmean(x["steps"] for x in s),
                "worst_low": min(x["hv_iqm_ci"][0] for x in s),
                "cells": s,
            }
        )
    ok = sorted((r for r in rows if r["worst_low"] >= args.keep), key=lambda r: r["steps"])
    print(
        f"{args.table}: {len(table.trials)} trials; {len(grid)} settings x {len(cell_keys)} cells "
        f"(N, workers) x {args.draws} draws; keep: the IQM's 95 % interval >= {args.keep} in "
        "every cell"
    )
    head = "  ".join(f"{f'N={n} W={w}':<19}" for n, w in cell_keys)
    print(f"\n{'':<26} {'':>10}  per cell: steps, hv IQM [its 95 % interval's low end]")
    print(f"{'setting':<26} {'mean steps':>10}  {head}")
    for r in sorted(rows, key=lambda r: r["steps"])[:40]:
        cells_text = "  ".join(
            f"{x['steps']:5.0%} {x['hv_iqm']:.3f} [{x['hv_iqm_ci'][0]:.3f}]" for x in r["cells"]
        )
        mark = "*" if ok and r is ok[0] else ("+" if r["worst_low"] >= args.keep else " ")
        print(f"{mark}{r['name']:<25} {r['steps']:10.0%}  {cells_text}")
    print("\n(the 40 cheapest; + keeps the hypervolume, * the chosen setting)")
    if not ok:
        print(f"no setting keeps {args.keep} in every cell")
        return 0
    c = ok[0]["params"]
    print(
        f"\nchosen: {ok[0]['name']}, mean steps {ok[0]['steps']:.0%}. Judge it on another "
        "table:\n  PYTHONPATH=. .venv/bin/python benchmarks/replay.py OTHER_TABLE.json "
        f"--graces {c['grace']:g} {3 * c['grace']:g} --rf {c['reduction_factor']:g} "
        f"--noise-floor {c['noise_floor']:g} --memory-slack {c['memory_slack']:g}"
        + ("" if c["min_signal"] is None else f" --min-signal {c['min_signal']:g}")
    )
    print(f"\n{time.perf_counter() - began:.1f} s")
    return 0


def _signal(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


if __name__ == "__main__":
    sys.exit(main())
