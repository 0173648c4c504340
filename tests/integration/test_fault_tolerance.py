"""A trial survives losing its worker: SIGKILL the Ray Train worker process of a running trial
(as a spot preemption or the OOM killer would) and the trial resumes from its last checkpoint,
ends COMPLETE, keeps one MLflow history, and ends where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from qa_ray.tracking.runs import child_runs
from qa_ray.training.loop import train_loop_per_worker
from tests.helpers import ASSETS

pytestmark = pytest.mark.integration

STEPS, EVERY, EVAL = 300, 15, 60


def _sweep(tmp_path, model) -> tuple[dict, str]:
    base = {
        "name": "killed-worker",
        "model": {"name_or_path": str(model), "dropout": 0.1},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
            "max_eval_examples": 20,
        },
        "train": {
            "max_steps": STEPS,
            "per_device_batch_size": 8,
            "learning_rate": 1e-3,
            "checkpoint_steps": EVERY,
            "eval_steps": EVAL,
            "progress_seconds": 0,
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 2},
        "search": {
            "num_samples": 1,
            "sampler": "random",
            "space": {"params": {"warmup_ratio": {"type": "categorical", "choices": [0.1]}}},
        },
        "storage_path": str(tmp_path / "runs"),
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment_name": "t"},
    }
    return base, base["tracking"]["tracking_uri"]


def _train_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd:
            found.append(p)
    return found


def _registered_steps(runs) -> list[int]:
    """The steps of the checkpoints Ray Train's controller has registered (its snapshot)."""
    steps = []
    for snapshot in runs.rglob("checkpoint_manager_snapshot.json"):
        with contextlib.suppress(ValueError, OSError):  # being rewritten
            results = json.loads(snapshot.read_text())["checkpoint_results"]
            steps += [r["metrics"]["step"] for r in results]
    return steps


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_a_killed_worker_resumes_its_trial_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    base, uri = _sweep(tmp_path, tiny_model_dir("bert"))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base))
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        # -v: the workers' own output too ("resumed from ...")
        [sys.executable, "-m", "qa_ray.cli", "-v", "sweep", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            # Kill mid-training, once Ray Train has registered a checkpoint of the trial.
            if _registered_steps(tmp_path / "runs"):
                workers = _train_workers()
                if workers:
                    killed = workers[0].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        assert killed, "the trial ended (or never checkpointed) before it could be killed"
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert "resumed from" in out, out[-3000:]

    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`qa_ray.role` = 'sweep'"
    )[0]
    (child,) = child_runs(uri, parent.info.run_id)
    assert child.info.status == "FINISHED"
    steps = [h.step for h in client.get_metric_history(child.info.run_id, "train_loss")]
    # One history, a point per report (checkpoints every EVERY steps, evaluations every EVAL):
    # each step once, in order, continuing after the kill (no second start from step 0 or
    # from before the checkpoint).
    assert steps == sorted(set(steps)), steps
    assert set(range(EVAL, STEPS + 1, EVAL)) <= set(steps), steps
    assert all(s % EVERY == 0 for s in steps), steps

    # The same trial run through, in one thread as the Ray worker (1 CPU) computes.
    trial = dict(base, output_dir=str(tmp_path / "through"))
    trial["train"] = {**base["train"], "warmup_ratio": 0.1, "save_checkpoints": False}
    for key in ("search", "storage_path", "tracking"):
        trial.pop(key)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        through = train_loop_per_worker(trial)
    finally:
        torch.set_num_threads(threads)
    final = child.data.metrics
    for key in ("train_loss", "eval_f1", "eval_exact"):
        assert final[key] == pytest.approx(through[key], rel=1e-3, abs=1e-3), key


# Minutes on 2 cores: the default suite runs the same SIGKILL and --resume on bucket storage
# (tests/integration/test_bucket.py); this one, on local storage, runs with `pytest -m slow`.
@pytest.mark.slow
def test_a_killed_driver_resumes_and_every_trial_keeps_one_whole_curve(tiny_model_dir, tmp_path):
    """SIGKILL of the sweep's driver mid-trial (a closed laptop, an OOM-killed head), then
    ``--resume``: exit 0, no trial lost or run twice, every run and the parent FINISHED, no
    Optuna trial left RUNNING, and each trial's curve a point per report, each step once.

    Ray Train's controller and workers outlive the killed driver by seconds and go on
    checkpointing (up to the run's end, on a short run): the resumed trial restores from a
    checkpoint the driver never heard of and sends the curve points it missed."""
    import optuna

    steps, every = 80, 10
    base, uri = _sweep(tmp_path, tiny_model_dir("bert"))
    base["name"] = "killed-driver"
    base["train"] = {**base["train"], "max_steps": steps, "checkpoint_steps": every,
                     "eval_steps": 40}  # fmt: skip
    base["resources"] = {"num_workers": 1, "cpus_per_worker": 1}
    base["search"] = {**base["search"], "num_samples": 2, "max_concurrent_trials": 2}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base))
    cmd = [sys.executable, "-m", "qa_ray.cli", "-v", "sweep", str(path)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if any(s >= 40 for s in _registered_steps(tmp_path / "runs")):
                    proc.send_signal(signal.SIGKILL)  # the driver, mid-trial: no handler runs
                    break
                time.sleep(0.1)
            assert proc.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "first.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    client = MlflowClient(uri)
    parent = json.loads((tmp_path / "runs" / "killed-driver" / "qa_ray_sweep.json").read_text())[
        "parent_run_id"
    ]
    before = {r.data.tags["qa_ray.trial_id"] for r in child_runs(uri, parent)}
    assert client.get_run(parent).info.status == "RUNNING"  # nothing could end it

    # As a user would: resume at once (the old cluster's processes may still be going).
    resumed = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    out = resumed.stdout + resumed.stderr
    (tmp_path / "resume.log").write_text(out)
    assert resumed.returncode == 0, out[-4000:]
    assert "resumed from" in out, out[-4000:]

    children = child_runs(uri, parent)
    trial_ids = [r.data.tags["qa_ray.trial_id"] for r in children]
    assert len(children) == 2 and len(set(trial_ids)) == 2 and before <= set(trial_ids)
    assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]
    assert client.get_run(parent).info.status == "FINISHED"
    for run in children:
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [h.step for h in history] == list(range(every, steps + 1, every)), run.info.run_id
        assert run.data.metrics["step"] == steps and "eval_f1" in run.data.metrics
    study = optuna.load_study(
        study_name="killed-driver",
        storage=f"sqlite:///{tmp_path / 'runs' / 'killed-driver' / 'optuna.db'}",
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def _out_of_memory_on_rank_1(config: dict) -> dict:
    """The real loop, with rank 1's second micro-batch running out of CUDA memory and every
    attempt of the worker group counted (a file per attempt and rank)."""
    from pathlib import Path

    import ray.train

    from qa_ray.tasks import extractive

    rank = ray.train.get_context().get_world_rank()
    attempts = Path(config["output_dir"], "attempts")
    attempts.mkdir(parents=True, exist_ok=True)
    before = len(list(attempts.iterdir()))
    (attempts / f"{before}-rank{rank}").touch()
    if before >= 4:  # a third attempt: the retries go on (the test fails on the count)
        return {}
    if rank == 1:
        real, calls = extractive.loss, []

        def loss(model, batch):
            calls.append(1)
            if len(calls) == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return real(model, batch)

        extractive.loss = loss
    return train_loop_per_worker(config)


def _reports_to(path):
    """A Ray Train callback writing every report's rank-0 metrics to ``path``, a line each (it
    runs in the controller's process)."""
    from ray.train import UserCallback

    class Reports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps(metrics[0]) + "\n")

    return Reports()


@pytest.mark.slow  # two real Ray Train workers and a restart of the group: `pytest -m slow`
def test_an_out_of_memory_with_two_workers_is_not_retried_forever(tiny_model_dir, tmp_path):
    """max_failures=-1 restarts a failed group forever: the out-of-memory mark ends the
    second attempt infeasible at once, and the run finishes with that result."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from qa_ray import metrics as m
    from qa_ray.sweep.trial import _trainer_class
    from tests.helpers import trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, train__max_steps=6)
    cfg["resources"] = {"num_workers": 2}
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        result = _trainer_class()(
            _out_of_memory_on_rank_1,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(
                name="oom",
                storage_path=str(tmp_path / "ray"),
                failure_config=FailureConfig(max_failures=-1),
                callbacks=[_reports_to(tmp_path / "reports.jsonl")],
            ),
        ).fit()
    finally:
        ray.shutdown()
    assert result.error is None
    attempts = sorted(p.name.split("-")[1] for p in (tmp_path / "out" / "attempts").iterdir())
    assert attempts == ["rank0", "rank0", "rank1", "rank1"]  # two attempts, not more
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    last = reports[-1]
    assert last[m.INFEASIBLE] == 1.0 and last[m.FINAL_REPORT] == 1.0 and last[m.STEP] == 0
    reason = last[m.INFEASIBLE_REASON]
    assert reason.startswith("out of memory at ") and reason.endswith(
        "(the attempt before; not retried)"
    )
    assert "Tried to allocate 9.00 GiB" in reason
    assert (tmp_path / "ray" / "oom" / "out_of_memory.json").is_file()
