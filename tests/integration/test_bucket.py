"""A sweep outlives its head node: its whole state in a bucket (a real S3 API server on
loopback, moto's server mode), the driver SIGKILLed mid-trial, its local state folder gone (a
fresh head), and ``--resume`` finishes it from the bucket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import boto3
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from qa_ray.tracking.runs import child_runs
from tests.dashboard import mlflow_server
from tests.helpers import ASSETS

pytestmark = pytest.mark.integration

STEPS, EVERY = 80, 10


def _registered_steps(exp_uri: str) -> list[int]:
    """The steps of the checkpoints Ray Train's controllers registered, read from the bucket."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(exp_uri)
    steps = []
    with contextlib.suppress(OSError):
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
            if info.path.endswith("checkpoint_manager_snapshot.json"):
                with contextlib.suppress(ValueError, OSError, KeyError):
                    with fs.open_input_stream(info.path) as f:
                        results = json.loads(f.read())["checkpoint_results"]
                    steps += [r["metrics"]["step"] for r in results]
    return steps


def _keys(bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_a_killed_driver_on_a_fresh_head_resumes_the_sweep_from_the_bucket(
    tiny_model_dir, tmp_path, s3_bucket
):
    storage = f"s3://{s3_bucket}/sweeps"
    sweep = {
        "name": "bucket-sweep",
        "model": {"name_or_path": str(tiny_model_dir("bert")), "dropout": 0.1},
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
            "eval_steps": 40,
            "progress_seconds": 0,
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": {
            "num_samples": 2,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "space": {"params": {"warmup_ratio": {"type": "categorical", "choices": [0.1]}}},
            # MO-ASHA with its one rung at the end: its rungs travel with the sweep too.
            "scheduler": {"type": "mo_asha", "grace": 40, "reduction_factor": 2},
        },
        "storage_path": storage,
        "tracking": {"experiment_name": "bucket"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", f"s3://{s3_bucket}/mlflow", tmp_path / "mlflow.log"
    ) as uri:
        env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1",
               "QA_RAY_STATE_DIR": str(tmp_path / "head-1")}  # fmt: skip
        cmd = [
            sys.executable,
            "-m",
            "qa_ray.cli",
            "sweep",
            str(path),
            f"tracking.tracking_uri={uri}",
        ]
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
            )
            try:
                deadline = time.monotonic() + 300
                while proc.poll() is None and time.monotonic() < deadline:
                    if any(s >= 40 for s in _registered_steps(f"{storage}/bucket-sweep")):
                        proc.send_signal(signal.SIGKILL)  # mid-trial: no handler runs
                        break
                    time.sleep(0.5)
                assert proc.wait(timeout=30) == -signal.SIGKILL, (
                    tmp_path / "first.log"
                ).read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
        state = json.loads((tmp_path / "head-1" / "bucket-sweep" / "qa_ray_sweep.json").read_text())
        parent = state["parent_run_id"]
        before = {r.data.tags["qa_ray.trial_id"] for r in child_runs(uri, parent)}
        assert _keys(s3_bucket, "sweeps/bucket-sweep/qa_ray_state/")  # the state is there too

        # A fresh head: the local state folder is gone (the same path, ~/.cache/qa_ray/sweeps by
        # default, on a new machine); everything comes back from the bucket.
        import shutil

        shutil.rmtree(tmp_path / "head-1")
        resumed = subprocess.run(
            [*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        out = resumed.stdout + resumed.stderr
        (tmp_path / "resume.log").write_text(out)
        assert resumed.returncode == 0, out[-4000:]

        client = MlflowClient(uri)
        children = child_runs(uri, parent)
        trial_ids = [r.data.tags["qa_ray.trial_id"] for r in children]
        assert len(children) == 2 and len(set(trial_ids)) == 2 and before <= set(trial_ids)
        assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]
        assert client.get_run(parent).info.status == "FINISHED"
        for run in children:
            history = client.get_metric_history(run.info.run_id, "train_loss")
            steps = [h.step for h in history]
            assert steps == sorted(set(steps)) and steps[0] == EVERY, (run.info.run_id, steps)
            assert steps == list(range(EVERY, steps[-1] + 1, EVERY))
        study = optuna.load_study(
            study_name="bucket-sweep",
            storage=f"sqlite:///{tmp_path / 'head-1' / 'bucket-sweep' / 'optuna.db'}",
        )
        assert len(study.trials) == 2
        assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
        # MLflow's artifacts (the trials' final results, the Pareto report) are in the bucket.
        artifacts = _keys(s3_bucket, "mlflow/")
        assert any(k.endswith("final_result.json") for k in artifacts), artifacts[:20]
        assert any("/pareto/" in k for k in artifacts), artifacts[:20]
        # The driver let go of its lock when it finished.
        assert not _keys(s3_bucket, "sweeps/bucket-sweep/qa_ray_state/driver.lock")
