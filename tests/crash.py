"""A seeded crash test: a small bucket sweep whose driver is SIGKILLed at moments drawn from a
seed, resumed each time (on a fresh head, another state folder, for a drawn subset), until it
ends; then the invariants users rely on are checked across Optuna, Tune and MLflow.

    .venv/bin/python -m pytest tests/integration/test_crash.py -m slow   # the long form

Each kill is printed with the seed, so a failure replays: ``QA_RAY_CRASH_SEED=7``.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers import ASSETS

# The moments a kill waits for: a line of the driver's output, then a drawn delay (s).
MOMENTS = {
    "before the first trial": (re.compile(r"^\[qa-ray\] plan: "), (0.0, 3.0)),
    "mid-trial": (re.compile(r"^\[qa-ray\] trial-\w+ step "), (0.0, 2.0)),
    "within a second of a trial's end": (re.compile(r"^\[qa-ray\] \d+/\d+ done, "), (0.0, 1.0)),
    # a resume that extends the sweep (more trials: a second Tune experiment after the first,
    # same study and parent run): the first stage ended, the second starting
    "during a stage change": (re.compile(r"^\[qa-ray\] stage \d+ of \d+ "), (0.0, 4.0)),
    # the progress line once every trial has ended, or MLflow's line as the parent run ends
    # (a resumed sweep that had ended): the Tune loop is over, the report next
    "during the final report": (
        re.compile(r"^\[qa-ray\] (\d+)/(\d+) done, 0 running|View run crash at: "),
        (0.0, 2.0),
    ),
}


NUM_SAMPLES = 3  # the sweep as first started
EXTENDED = 5  # after a stage-change kill: `--resume search.num_samples=5`


@dataclass
class Kill:
    moment: str
    delay_s: float
    fresh_head: bool
    happened: bool = False
    at_line: str = ""


@dataclass
class CrashRun:
    seed: int
    kills: list[Kill] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"crash test seed {self.seed}: {len(self.kills)} kills drawn"]
        for i, k in enumerate(self.kills):
            where = f"after {k.at_line[:70]!r}" if k.happened else "not reached: the run ended"
            lines.append(
                f"  kill {i + 1}: {k.moment} + {k.delay_s:.2f} s"
                f"{' on a fresh head' if k.fresh_head else ''}: {where}"
            )
        lines.append(f"  exit codes: {self.exit_codes}")
        return "\n".join(lines)


def draw_kills(seed: int, n: int) -> list[Kill]:
    """``n`` kills at drawn moments, in the order of a sweep's life (a kill in the final
    report leaves no trial to kill mid-run after it; the plan line and the report come again
    in every resume)."""
    rng = random.Random(seed)
    kinds = list(MOMENTS)
    kills = [
        Kill(m, rng.uniform(*MOMENTS[m][1]), fresh_head=rng.random() < 0.5)
        for m in (rng.choice(kinds) for _ in range(n))
    ]
    return sorted(kills, key=lambda k: kinds.index(k.moment))


def sweep_file(tmp_path: Path, model_dir: Path, storage: str, name: str = "crash") -> Path:
    sweep = {
        "name": name,
        "model": {"name_or_path": str(model_dir), "dropout": 0.1},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
            "max_eval_examples": 10,
        },
        "train": {
            "max_steps": 16,
            "per_device_batch_size": 4,
            "checkpoint_steps": 4,
            "eval_steps": 8,
            "progress_seconds": 0,
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": {
            "num_samples": NUM_SAMPLES,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "seed": 0,
            "space": {
                "params": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
                }
            },
            "scheduler": {"type": "mo_asha", "grace": 8, "reduction_factor": 2},
        },
        "storage_path": storage,
        "tracking": {"experiment_name": "crash"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _all_ended(progress: str) -> bool:
    """Whether a progress line counts every trial ended (done, failed, stopped, infeasible)."""
    total = int(re.search(r"/(\d+) done", progress).group(1))
    ended = sum(
        int(n)
        for n in re.findall(r"(\d+)(?:/\d+)? (?:done|failed|stopped early|infeasible)", progress)
    )
    return ended >= total


def _run_until(cmd, env, cwd, log: Path, kill: Kill | None, timeout_s: float) -> int:
    """Runs the driver; SIGKILLs it ``kill.delay_s`` after the first line of its moment."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env, text=True
    )
    timer: threading.Timer | None = None
    pattern = MOMENTS[kill.moment][0] if kill else None
    deadline = time.monotonic() + timeout_s
    with open(log, "a", buffering=1) as out:
        out.write(f"\n===== {' '.join(cmd[3:])} (kill: {kill})\n")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if pattern and timer is None and pattern.search(line):
                if "done, 0 running" in line and not _all_ended(line):
                    continue
                kill.happened, kill.at_line = True, line.strip()
                timer = threading.Timer(kill.delay_s, proc.send_signal, [signal.SIGKILL])
                timer.start()
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"the driver ran past {timeout_s} s: see {log}")
    code = proc.wait()
    if timer is not None:
        timer.cancel()
    return code


def crash_sweep(
    seed: int, n_kills: int, tmp_path: Path, model_dir: Path, bucket: str, uri: str
) -> tuple[CrashRun, str, Path]:
    """Runs the sweep through ``n_kills`` drawn kills, resuming each time, to its end.

    Returns:
        The run (kills, exit codes), the sweep's parent run id and its last state folder.
    """
    run = CrashRun(seed, draw_kills(seed, n_kills))
    drawn = [
        f"{k.moment} + {k.delay_s:.2f} s{' (fresh head)' if k.fresh_head else ''}"
        for k in run.kills
    ]
    print(f"crash test seed {seed}: kills drawn: {'; '.join(drawn)}", flush=True)
    path = sweep_file(tmp_path, model_dir, f"s3://{bucket}/sweeps")
    base = [sys.executable, "-m", "qa_ray.cli", "sweep", str(path), f"tracking.tracking_uri={uri}"]
    head = 0
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "crash.log"
    started = extended = False
    pending = list(run.kills)
    for _attempt in range(n_kills + 4):
        kill = pending.pop(0) if pending else None
        if kill is not None and kill.moment == "during a stage change":
            if started:
                extended = True  # this run extends the sweep, and every later one keeps it
            else:  # only a started sweep can be extended: first run it as started, unkilled
                pending.insert(0, kill)
                kill = None
        state = tmp_path / f"head-{head}"
        env["QA_RAY_STATE_DIR"] = str(state)
        cmd = [*base, *(["--resume"] if started else [])]
        if extended:
            cmd.append(f"search.num_samples={EXTENDED}")
        code = _run_until(cmd, env, tmp_path, log, kill, timeout_s=900)
        run.exit_codes.append(code)
        started = started or code == -signal.SIGKILL or code == 0
        if code == 0 and not pending:
            parent = json.loads((state / "crash" / "qa_ray_sweep.json").read_text())
            return run, parent["parent_run_id"], state
        if code not in (0, -signal.SIGKILL):
            raise AssertionError(f"{run.describe()}\nexit {code}: see {log}")
        if kill is not None and kill.happened and kill.fresh_head:
            head += 1  # the next run on a new machine: another state folder, the old one gone
    raise AssertionError(f"{run.describe()}\nthe sweep did not end: see {log}")


def check_invariants(uri: str, parent_id: str, state: Path, experiment_uri: str) -> list[str]:
    """What must hold after the last resume; returns the violations (none: all hold).

    ``experiment_uri`` is the sweep's first Tune experiment; an extension's are read from the
    sweep state's stages."""
    import optuna
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    from qa_ray.metrics import TAG_OUTCOME, TAG_TRIAL_ID
    from qa_ray.search.searcher import TRIAL_ID_ATTR
    from qa_ray.tracking.runs import child_runs

    problems: list[str] = []
    client = MlflowClient(uri)
    children = child_runs(uri, parent_id)
    study = optuna.load_study(
        study_name="crash", storage=f"sqlite:///{state / 'crash' / 'optuna.db'}"
    )
    stages = json.loads((state / "crash" / "qa_ray_sweep.json").read_text())["stages"]
    paths = [experiment_uri] + [f"{s['storage_path']}/{s['name']}" for s in stages[1:]]
    tune_trials = {t.trial_id: t for p in paths for t in ExperimentAnalysis(p).trials}
    planned = sum(s["num_samples"] for s in stages)
    if len(tune_trials) != planned:
        problems.append(
            f"{len(tune_trials)} Tune trials over {len(stages)} stages, {planned} planned"
        )

    launched = [t for t in study.trials if "qa_ray.predicted_infeasible" not in t.user_attrs]
    by_tune = {}
    for t in launched:
        tid = t.user_attrs.get(TRIAL_ID_ATTR)
        if tid is None or tid in by_tune:
            problems.append(f"optuna trial {t.number} ({t.state.name}): no or a shared Tune id")
        by_tune[tid] = t
    runs = {}
    for r in children:
        tid = r.data.tags.get(TAG_TRIAL_ID)
        if tid is None:
            continue
        if tid in runs:
            problems.append(f"two MLflow runs for Tune trial {tid}")
        runs[tid] = r
        if r.info.status == "RUNNING":
            problems.append(f"MLflow run of {tid} left RUNNING")
    # A trial sampled after Tune's last snapshot and lost with the driver: Tune never knew
    # it; MLflow and Optuna must both say it failed.
    for tid in set(runs) - set(tune_trials):
        r, ot = runs.pop(tid), by_tune.pop(tid, None)
        if r.info.status != "FAILED" or (ot is not None and ot.state.name != "FAIL"):
            problems.append(f"lost trial {tid}: MLflow {r.info.status}, Optuna {ot and ot.state}")
    for tid in set(by_tune) - set(tune_trials):
        if by_tune[tid].state.name == "FAIL":
            by_tune.pop(tid)
    if set(by_tune) != set(tune_trials) or set(runs) != set(tune_trials):
        problems.append(
            f"trials do not correspond: optuna {sorted(by_tune)}, tune {sorted(tune_trials)}, "
            f"mlflow {sorted(runs)}"
        )
    outcome = {"COMPLETE": "complete", "PRUNED": "pruned"}
    for tid, tt in tune_trials.items():
        ot, r = by_tune.get(tid), runs.get(tid)
        if ot is None or r is None:
            continue
        for k, v in ot.params.items():
            if k in tt.config and tt.config[k] != v:
                problems.append(f"{tid}: {k} is {tt.config[k]} in Tune, {v} in Optuna")
            if str(v) != r.data.params.get(k):
                problems.append(f"{tid}: {k} is {r.data.params.get(k)} in MLflow, {v} in Optuna")
        if tt.status != "TERMINATED":
            problems.append(f"{tid}: Tune status {tt.status}")
        tag = r.data.tags.get(TAG_OUTCOME)
        if ot.state == optuna.trial.TrialState.COMPLETE and ot.user_attrs.get("qa_ray.infeasible"):
            want = "infeasible"
        else:
            want = outcome.get(ot.state.name, ot.state.name.lower())
        if tag != want or r.info.status != "FINISHED":
            problems.append(f"{tid}: Optuna {ot.state.name}, MLflow {r.info.status} {tag}")
        for key in ("train_loss", "eval_f1"):
            steps = [h.step for h in client.get_metric_history(r.info.run_id, key)]
            if len(steps) != len(set(steps)):
                problems.append(f"{tid}: {key} logged twice at a step: {sorted(steps)}")
    if (status := client.get_run(parent_id).info.status) != "FINISHED":
        problems.append(f"the parent run is {status}")
    running = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    if running:
        problems.append(f"optuna trials left RUNNING: {running}")
    return problems
