"""Tunes memory_aware's parameters on one curve table, chosen on some configurations and
judged on the others.

    PYTHONPATH=. .venv/bin/python benchmarks/tune_rule.py benchmarks/curves/minilm_squad_v1_a.json

Every combination of grace, reduction factor, noise floor, memory slack (and, with
``--min-signals``, the rung gate ``min_signal``) in the grid is cross-validated as
``qa-ray replay`` does (``qa_ray/report/advise.py``): the table's configurations are split in
two halves ``--splits`` times; on one half each setting is replayed (the real scheduler,
simulated asynchronous arrival, 1 and 4 workers, ``--draws`` orders, fixed costs of its actor
policy included) and the cheapest in seconds whose hypervolume IQM keeps ``--keep`` (default
0.95) in every worker cell is chosen; that choice is judged on the other half. A setting is
chosen by a point estimate on draws of its tuning half, and its figures are those of halves it
was not chosen on: more ``--draws`` make them less noisy, not easier to pass (the old choice,
the lower end of a bootstrap interval that narrows as the draws grow, passed more settings the
more draws it ran).

The setting chosen on most splits is printed with the command that judges it on another
table, unless it loses more than ``1 - keep`` on the held-out halves. Bad input: one line on
stderr, exit 2.
"""

from __future__ import annotations

import collections
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import OneLineParser  # noqa: E402

from qa_ray.report.advise import cross_validate  # noqa: E402
from qa_ray.report.replay import TableError, iqm, load_table  # noqa: E402
from qa_ray.report.replay_rules import block_name  # noqa: E402


def grid_blocks(
    graces: Sequence[float],
    rfs: Sequence[float],
    floors: Sequence[float],
    slacks: Sequence[float],
    signals: Sequence[float | None] = (None,),
) -> list[dict]:
    """Every memory_aware block of the grid."""
    return [
        {
            "type": "memory_aware",
            "grace": g,
            "reduction_factor": rf,
            "noise_floor": nf,
            "memory_slack": sl,
            "min_signal": sig,
        }  # fmt: skip
        for g, rf, nf, sl, sig in itertools.product(graces, rfs, floors, slacks, signals)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="tune_rule.py", description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--splits", type=int, default=20, help="halves drawn (default 20)")
    p.add_argument("--draws", type=int, default=10, help="orders per half and cell (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--keep", type=float, default=0.95, help="the hypervolume ratio to keep")
    p.add_argument("--graces", type=float, nargs="+", default=[2, 4, 8])
    p.add_argument("--rfs", type=float, nargs="+", default=[2, 3])
    p.add_argument("--noise-floors", type=float, nargs="+", default=[1, 1.5, 2, 3, 4])
    p.add_argument("--memory-slacks", type=float, nargs="+", default=[0, 0.1, 0.3])
    p.add_argument(
        "--min-signals", type=_signal, nargs="+", default=[None],
        help="memory_aware's min_signal values ('none': off); default: off only",
    )  # fmt: skip
    args = p.parse_args(argv)
    bad = [f"{flag} must be {rule}, but got {v}" for flag, v, ok, rule in (
        ("--splits", args.splits, args.splits >= 2, ">= 2"),
        ("--draws", args.draws, args.draws >= 1, ">= 1"),
        ("--workers", args.workers, all(w >= 1 for w in args.workers), ">= 1 each"),
        ("--keep", args.keep, 0 < args.keep <= 1, "in (0, 1]"),
        ("--graces", args.graces, all(g > 0 for g in args.graces), "> 0 each"),
        ("--rfs", args.rfs, all(r > 1 for r in args.rfs), "> 1 each"),
        ("--noise-floors", args.noise_floors, all(x >= 0 for x in args.noise_floors), ">= 0 each"),
        ("--memory-slacks", args.memory_slacks, all(x >= 0 for x in args.memory_slacks),
         ">= 0 each")) if not ok]  # fmt: skip
    try:
        if bad:
            raise ValueError("; ".join(bad))
        table = load_table(args.table)
        blocks = grid_blocks(args.graces, args.rfs, args.noise_floors, args.memory_slacks,
                             args.min_signals)  # fmt: skip
        began = time.perf_counter()
        advice = cross_validate(table, blocks, args.splits, args.draws, args.workers, args.keep,
                                args.seed)  # fmt: skip
    except (TableError, ValueError) as e:
        print(f"tune_rule.py: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.table}: {len(table.trials)} trials; {len(blocks)} settings, {args.splits} splits "
        f"into halves of {advice.half} (chosen on one, judged on the other), workers "
        f"{' and '.join(map(str, args.workers))}, {args.draws} orders each; chosen: the cheapest "
        f"in seconds whose hypervolume IQM keeps {args.keep} in every cell of its tuning half"
    )
    times = collections.Counter(advice.chosen)
    rows = []
    for b in blocks:
        name = block_name(b)
        tuned = [t[name] for t in advice.tuned]
        held = [h[name] for h in advice.held]
        rows.append((statistics.fmean(h[1] for h in held), name, tuned, held))
    print(f"\n{'setting':<40} {'chosen':>6}  tuning halves: hv IQM, secs   held-out: hv IQM, secs")
    for secs, name, tuned, held in sorted(rows)[:40]:
        print(
            f"{name:<40} {times[name]:6d}  {iqm([t[0] for t in tuned]):14.3f} "
            f"{statistics.fmean(t[1] for t in tuned):5.0%}   {iqm([h[0] for h in held]):17.3f} "
            f"{secs:5.0%}"
        )
    print("\n(the 40 cheapest on the held-out halves; IQM over the splits)")
    print(f"held-out, each split's own choice: hv IQM {iqm(advice.procedure_hv):.3f}, seconds "
          f"{statistics.fmean(advice.procedure_seconds):.0%} (none chosen: 1.000 at 100 %)")  # fmt: skip
    if advice.block is None:
        print(f"no setting to recommend: {advice.reason}")
    else:
        c = advice.block
        print(
            f"\nchosen: {block_name(c)}, on {times[block_name(c)]} of {args.splits} splits. "
            "Judge it on another table:\n  PYTHONPATH=. .venv/bin/python benchmarks/replay.py "
            f"OTHER_TABLE.json --graces {c['grace']:g} {3 * c['grace']:g} "
            f"--rf {c['reduction_factor']:g} --noise-floor {c['noise_floor']:g} "
            f"--memory-slack {c['memory_slack']:g}"
            + ("" if c["min_signal"] is None else f" --min-signal {c['min_signal']:g}")
        )
    print(f"\n{time.perf_counter() - began:.1f} s")
    return 0


def _signal(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


if __name__ == "__main__":
    import logging

    logging.getLogger("qa_ray.search.schedulers").setLevel(logging.WARNING)
    sys.exit(main())
