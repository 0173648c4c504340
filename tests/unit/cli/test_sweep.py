"""How ``qa-ray sweep`` ends: the resume command it prints, failures grouped."""

from __future__ import annotations

import argparse
import shlex

from qa_ray.cli import sweep


def test_the_resume_command_repeats_the_sweep_without_credentials():
    args = argparse.Namespace(
        sweep="sweeps/q.yaml", overrides=["search.num_samples=4"], address="http://h:8265",
        tracking_uri="http://alice:s3cret@mlflow:5000",
    )  # fmt: skip
    assert shlex.split(sweep.resume_command(args)) == [
        "qa-ray", "sweep", "sweeps/q.yaml", "search.num_samples=4", "--resume",
        "--address", "http://h:8265", "--tracking-uri", "http://mlflow:5000",
    ]  # fmt: skip


def test_the_resume_command_takes_credentials_out_of_every_override():
    args = argparse.Namespace(
        sweep="q.yaml", address=None, tracking_uri=None,
        overrides=["tracking.tracking_uri=https://alice:s3cret@mlflow:5000/x",
                   "storage_path=s3://key:s3cret2@bucket/runs", "train.max_steps=4"],
        constraint=["peak_memory_mb <= 8000"],
    )  # fmt: skip
    command = sweep.resume_command(args)
    assert "s3cret" not in command and "alice" not in command
    assert shlex.split(command) == [
        "qa-ray", "sweep", "q.yaml", "tracking.tracking_uri=https://mlflow:5000/x",
        "storage_path=s3://key:***@bucket/runs", "train.max_steps=4", "--resume",
        "--constraint", "peak_memory_mb <= 8000",
    ]  # fmt: skip


def test_failures_are_grouped_by_reason_most_frequent_first():
    trials = [
        {"status": "FAILED", "error": "OSError: no model"},
        {"status": "COMPLETE", "error": None},
        {"status": "FAILED", "error": "ValueError: bad rank"},
        {"status": "FAILED", "error": "OSError: no model"},
    ]
    assert sweep.failure_groups(trials) == ["2 x OSError: no model", "1 x ValueError: bad rank"]


def test_the_end_line_says_the_replay_command_after_a_scheduler_or_enough_trials():
    from types import SimpleNamespace

    def cfg(scheduler):
        return SimpleNamespace(name="my sweep", search=SimpleNamespace(scheduler=scheduler))

    uri = "http://user:secret@mlflow:5000"
    seven = [{"status": "COMPLETE"}] * 7 + [{"status": "FAILED"}] * 3
    assert sweep.replay_hint(cfg(None), uri, seven) is None  # too few to replay, no scheduler
    line = sweep.replay_hint(cfg(None), uri, seven + [{"status": "INFEASIBLE"}])
    assert line.endswith("qa-ray replay 'my sweep' --tracking-uri http://mlflow:5000")
    assert sweep.replay_hint(cfg({"type": "mo_asha"}), uri, seven[:2]) is not None
