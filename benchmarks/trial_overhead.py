"""The sweep's fixed costs: 3 MiniLM trials of fixed work through `qa-ray sweep` against the same
3 configurations through `qa-ray train`, one after another.

Prints, per run: wall time, the time spent training and evaluating (the trials' own
``train_seconds`` and ``eval_seconds``), and what is left, the fixed cost; then the per-trial
overhead of the sweep over the sequential runs, the sweep/sequential wall ratio, the time from
`qa-ray sweep` to the first optimizer step, from the last result to the sweep's exit, and where
the sweep's extra time goes (from MLflow's run and metric timestamps): start-up before the first
trial, each trial's set-up (trial start to first step), and the gaps between trials.

    bash scripts/stage_minilm.sh models
    .venv/bin/python benchmarks/trial_overhead.py --out /tmp/overhead

About 6 minutes on a 2-core CPU. Figures go to OUT/trial_overhead.json too.

With ``--scheduler`` the sweep runs MO-ASHA with its first rung at the trials' last step: no
trial is stopped, but each starts in a fresh Tune actor, as in any sweep with early stopping
(a trial that is stopped must lose its actor; without a scheduler actors are reused).
``--steps 150`` makes the trials about 3 minutes long (about 20 minutes a run).

Bad input (``--steps`` under 1, a sweep that does not validate with the fixed work's overrides,
e.g. the model not staged, an OUT that cannot be made): one line on stderr, exit 2, before any
trial runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import BadInput, OneLineParser, check_flags, make_folder, refuse  # noqa: E402

from qa_ray import metrics as m  # noqa: E402
from qa_ray.config.trial import TrialConfig  # noqa: E402
from qa_ray.errors import ConfigError  # noqa: E402
from qa_ray.search.space import apply_params, suggest  # noqa: E402
from qa_ray.sweep.config import load_sweep_config  # noqa: E402
from qa_ray.tracking.runs import child_runs, find_parent_run, mlflow_client  # noqa: E402

SWEEP = "sweeps/quickstart.yaml"


def fixed_work(steps: int) -> list[str]:
    """Fixed work: ``steps`` optimizer steps at an effective batch of 16 (20: about 25 s of
    training here; 150: about 3 minutes), 50 questions scored at the end."""
    return [
        f"train.max_steps={steps}",
        "train.max_train_seconds=null",
        "train.save_checkpoints=false",
        "data.max_eval_examples=50",
        "search.num_samples=3",
    ]


CONFIGS = [
    {"finetune": "full", "learning_rate": 2.0e-4, "warmup_ratio": 0.05, "per_device_batch_size": 16},
    {"finetune": "lora", "learning_rate": 3.0e-4, "warmup_ratio": 0.0, "per_device_batch_size": 16,
     "lora_r": 16, "lora_alpha_multiple": 2},
    {"finetune": "lora", "learning_rate": 4.0e-4, "warmup_ratio": 0.05, "per_device_batch_size": 8,
     "lora_r": 8, "lora_alpha_multiple": 4},
]  # fmt: skip


def scheduler(steps: int) -> str:
    """MO-ASHA whose first rung is the last step: a fresh trial actor per trial, none stopped."""
    return "search.scheduler=" + json.dumps({"grace": steps})


def sweep(out: Path, name: str, overrides: list[str]) -> dict:
    uri = f"sqlite:///{out / 'mlflow.db'}"
    points = "search.initial_points=" + json.dumps(CONFIGS)
    cmd = [sys.executable, "-m", "qa_ray.cli", "sweep", SWEEP, *overrides, points, f"name={name}",
           f"storage_path={out / 'runs'}", "--tracking-uri", uri]  # fmt: skip
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t1 = time.time()
    client = mlflow_client(uri)
    trials = []
    for c in child_runs(uri, find_parent_run(uri, name)):
        hist = {k: client.get_metric_history(c.info.run_id, k) for k in
                (m.STEP, m.TRAIN_SECONDS, m.EVAL_SECONDS)}  # fmt: skip
        first = min(hist[m.TRAIN_SECONDS], key=lambda h: h.step)
        trials.append({
            "start": c.info.start_time / 1000,
            "end": c.info.end_time / 1000,
            "first_step": first.timestamp / 1000 - first.value,  # report time - training so far
            "last_result": max(h.timestamp for h in hist[m.STEP]) / 1000,
            "train_seconds": max(h.value for h in hist[m.TRAIN_SECONDS]),
            "eval_seconds": sum(h.value for h in hist[m.EVAL_SECONDS]),
        })  # fmt: skip
    trials.sort(key=lambda t: t["start"])
    work = sum(t["train_seconds"] + t["eval_seconds"] for t in trials)
    return {
        "wall": t1 - t0,
        "work": work,
        "work_per_trial": [round(t["train_seconds"] + t["eval_seconds"], 1) for t in trials],
        "fixed": t1 - t0 - work,
        "start_to_first_step": trials[0]["first_step"] - t0,
        "last_result_to_exit": t1 - trials[-1]["last_result"],
        "where": {
            "before the first trial": trials[0]["start"] - t0,
            "trial set-up (trial start to first step), mean": statistics.mean(
                t["first_step"] - t["start"] for t in trials
            ),
            "trial end (last result to run end), mean": statistics.mean(
                t["end"] - t["last_result"] for t in trials
            ),
            "between trials, mean": statistics.mean(
                b["start"] - a["end"] for a, b in zip(trials, trials[1:], strict=False)
            ),
        },
    }


def sequential(out: Path, overrides: list[str]) -> dict:
    base = load_sweep_config(SWEEP, overrides)
    t0, work = time.time(), []
    for i, params in enumerate(CONFIGS):
        # What the sweep derives too (gradient accumulation from the space's effective batch).
        derived = suggest(optuna.trial.FixedTrial(params), base.space, base.trial_config())
        cfg = apply_params(base.trial_config().model_dump(mode="json"), {**params, **derived})
        cfg["output_dir"] = str(out / f"train-{i}")
        path = out / f"train-{i}.yaml"
        path.write_text(yaml.safe_dump(TrialConfig.model_validate(cfg).model_dump(mode="json")))
        subprocess.run(
            [sys.executable, "-m", "qa_ray.cli", "train", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        metrics = json.loads((out / f"train-{i}" / "metrics.json").read_text())
        work.append(metrics[m.TRAIN_SECONDS] + metrics.get(m.EVAL_SECONDS, 0.0))
    wall = time.time() - t0
    return {
        "wall": wall,
        "work": sum(work),
        "work_per_trial": [round(w, 1) for w in work],
        "fixed": wall - sum(work),
    }


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="trial_overhead.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder for stores and runs")
    p.add_argument(
        "--scheduler", action="store_true", help="the sweep with MO-ASHA (fresh trial actors)"
    )
    p.add_argument(
        "--steps", type=int, default=20, help="optimizer steps per trial (150: 3-minute trials)"
    )
    args = p.parse_args(argv)
    work = fixed_work(args.steps)
    with_scheduler = [scheduler(args.steps)] if args.scheduler else []
    try:
        check_flags([("--steps", args.steps, args.steps >= 1, ">= 1")])
        load_sweep_config(SWEEP, work + with_scheduler)  # what both runs read, checked first
        make_folder("--out", args.out)
    except (BadInput, ConfigError) as e:
        return refuse(p.prog, e)
    seq = sequential(args.out, work)
    swp = sweep(args.out, f"overhead-{time.strftime('%H%M%S')}", work + with_scheduler)
    n = len(CONFIGS)
    result = {
        "sequential": seq,
        "sweep": swp,
        "scheduler": args.scheduler,
        "steps": args.steps,
        "per_trial_overhead_s": (swp["fixed"] - seq["fixed"]) / n,
        "sweep_over_sequential_wall": swp["wall"] / seq["wall"],
    }
    print(json.dumps(result, indent=2))
    (args.out / "trial_overhead.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
