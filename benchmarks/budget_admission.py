"""A budget sweep whose space is about half over budget, run twice: every sampled configuration
launched (``search.memory_admission=false``, the "before"), then with admission (the "after"):
configurations predicted over the budget beyond their uncertainty are never launched.

Real all-MiniLM-L6-v2 on SQuAD v1.1 dev, on CPU (peak RSS), full fine-tunes at sequence 256
with micro-batches 4 to 64, 4 optimizer steps a trial, a budget of ``peak_memory_mb <= 3000``
(a first try of this script measured batch 4 at 1535 MB, 8 at about 2005, 32 at about 4260 and
64 at about 7800: batches 4-16 fit, 32-64 do not), random sampling with the same seed, one
trial at a time. Prints, per run: trials launched, launched over budget (INFEASIBLE), rejected
before launch (``predicted_infeasible``), and the trial seconds (child runs' wall time, start-up
included) and optimizer steps spent on launched configurations that broke the budget, against
those spent in all.

    bash scripts/stage_minilm.sh models
    PYTHONPATH=. .venv/bin/python benchmarks/budget_admission.py --out /tmp/admission

About 15 minutes on 2 CPU cores. Figures go to OUT/budget_admission.json too. Bad input (a
missing model or data file, a sweep it cannot validate, ``--samples`` under 1, an OUT that
cannot be made): one line on stderr, exit 2, before any trial runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import BadInput, OneLineParser, check_flags, make_folder, refuse  # noqa: E402

from qa_ray import metrics as m  # noqa: E402
from qa_ray.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 3000


def sweep_file(out: Path, model: str, data: str, samples: int) -> Path:
    sweep = {
        "name": "budget-admission",
        "model": {"name_or_path": model, "task": "extractive", "finetune": "full"},
        "data": {
            "path": data,
            "eval_fraction": 0.2,
            "split_seed": None,
            "max_eval_examples": 50,
            "max_seq_length": 256,
            "doc_stride": 64,
            "cache_dir": str(out / "cache"),
        },
        "train": {"max_steps": 4, "learning_rate": 1e-4, "save_checkpoints": False},
        "resources": {"num_workers": 1, "cpus_per_worker": 2},
        "search": {
            "space": {
                "params": {
                    "per_device_batch_size": {
                        "type": "categorical",
                        "choices": [4, 8, 16, 32, 48, 64],
                    },
                    "learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True},
                }
            },
            "sampler": "random",
            "seed": 0,
            "num_samples": samples,
            "max_concurrent_trials": 1,
        },
        "constraints": [f"peak_memory_mb <= {BUDGET}"],
        "storage_path": str(out / "runs"),
        "tracking": {
            "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
            "experiment_name": "budget-admission",
        },
    }
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def run(path: Path, admission: bool, name: str, out: Path) -> dict:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "qa_ray.cli", "sweep", str(path), f"name={name}",
         f"search.memory_admission={'true' if admission else 'false'}"],
        capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ,
                                                       "QA_RAY_STATE_DIR": str(out / "state")},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stdout[-3000:]}")
    return {"wall_seconds": time.monotonic() - began, **summarize(out, name)}


def summarize(out: Path, name: str) -> dict:
    from qa_ray.tracking.runs import child_runs, find_parent_run

    uri = f"sqlite:///{out / 'mlflow.db'}"
    children = child_runs(uri, find_parent_run(uri, name))
    rows = []
    for c in children:
        outcome = c.data.tags.get(m.TAG_OUTCOME)
        end = c.info.end_time or c.info.start_time
        rows.append(
            {
                "outcome": outcome,
                "batch": int(float(c.data.params.get("per_device_batch_size", 0))),
                "peak_memory_mb": c.data.metrics.get(m.PEAK_MEMORY_MB),
                "predicted_mb": c.data.metrics.get(m.PREDICTED_PEAK_MEMORY_MB),
                "steps": c.data.metrics.get(m.STEP, 0.0),
                "seconds": (end - c.info.start_time) / 1000,
            }
        )
    launched = [r for r in rows if r["outcome"] != "predicted_infeasible"]
    over = [r for r in launched if r["outcome"] == "infeasible"]
    return {
        "launched": len(launched),
        "launched_over_budget": len(over),
        "rejected_before_launch": len(rows) - len(launched),
        "seconds_all": sum(r["seconds"] for r in launched),
        "seconds_over_budget": sum(r["seconds"] for r in over),
        "steps_all": sum(r["steps"] for r in launched),
        "steps_over_budget": sum(r["steps"] for r in over),
        "trials": rows,
    }


def checked_sweep(args) -> Path:
    """The flags checked, OUT made and the sweep file written and validated as ``qa-ray sweep``
    will (from ROOT, where :func:`run` runs it; its data records read too), before any trial.

    Raises:
        BadInput: a flag the sweep cannot use.
        ConfigError: the sweep file written from the flags does not validate.
    """
    from qa_ray.config.paths import local_path_errors
    from qa_ray.sweep.config import load_sweep_config

    check_flags([("--samples", args.samples, args.samples >= 1, ">= 1")])
    out, here = args.out.resolve(), os.getcwd()
    os.chdir(ROOT)
    try:
        # qa-ray's own rule for a path that is clearly local and missing, said with the flag
        flags = {"`model.name_or_path`": "--model", "`data.path`": "--data"}
        blocks = {"model": {"name_or_path": args.model}, "data": {"path": args.data}}
        missing = local_path_errors(blocks)
        if missing:
            raise BadInput("; ".join(flags[e.split(":")[0]] + e[e.index(":") :] for e in missing))
        make_folder("--out", out)
        path = sweep_file(out, args.model, args.data, args.samples)
        load_sweep_config(str(path))
    finally:
        os.chdir(here)
    return path


def main(argv=None) -> int:
    ap = OneLineParser(prog="budget_admission.py", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/squad/dev-v1.1.json.gz"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args(argv)
    try:
        path = checked_sweep(args)
    except (BadInput, ConfigError) as e:
        return refuse(ap.prog, e)
    results = {
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/budget_admission.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget": f"peak_memory_mb <= {BUDGET}",
        "before (every config launched)": run(path, False, "budget-before", args.out),
        "after (admission)": run(path, True, "budget-after", args.out),
    }
    (args.out / "budget_admission.json").write_text(json.dumps(results, indent=2))
    print(f"{results['budget']}, {args.samples} trials launched each, random sampler seed 0")
    print(f"{'run':<32} {'launched':>8} {'over':>5} {'rejected':>8} {'s over / all':>16} "
          f"{'steps over / all':>17}")  # fmt: skip
    for name in ("before (every config launched)", "after (admission)"):
        r = results[name]
        print(
            f"{name:<32} {r['launched']:>8} {r['launched_over_budget']:>5} "
            f"{r['rejected_before_launch']:>8} "
            f"{r['seconds_over_budget']:7.0f} / {r['seconds_all']:<6.0f} "
            f"{r['steps_over_budget']:7.0f} / {r['steps_all']:<7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
