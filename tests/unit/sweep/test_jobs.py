"""Submitting a sweep as a Ray job: the command line, the runtime env, the checks before it."""

from __future__ import annotations

import shlex

import pytest

from qa_ray.errors import ConfigError
from qa_ray.sweep import jobs
from tests.helpers import tiny_sweep


def test_the_entrypoint_runs_this_checkouts_cli_on_the_cluster():
    cmd = jobs.entrypoint("sweeps/a b.yaml", ["search.num_samples=4"], "http://head:5000")
    assert shlex.split(cmd) == [
        "python", "-m", "qa_ray.cli", "sweep", "sweeps/a b.yaml", "search.num_samples=4",
        "--address", "auto", "--tracking-uri", "http://head:5000",
    ]  # fmt: skip


class _FakeJobs:
    def __init__(self):
        self.submitted = {}

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return kwargs["submission_id"]


def test_submit_sends_credentials_in_the_environment_not_the_command_line(
    tiny_model_dir, tmp_path, monkeypatch
):
    path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")])
    fake = _FakeJobs()
    monkeypatch.setattr(jobs, "_client", lambda address: fake)
    job = jobs.submit(
        str(path), ["search.num_samples=2"], "http://127.0.0.1:8265",
        tracking_uri="http://alice:s3cret@mlflow:5000", working_dir=str(tmp_path),
        submission_id="job-1",
    )  # fmt: skip
    assert job == "job-1"
    sent = fake.submitted
    assert "s3cret" not in sent["entrypoint"] and "alice" not in sent["entrypoint"]
    assert "--tracking-uri http://mlflow:5000" in sent["entrypoint"]
    env = sent["runtime_env"]["env_vars"]
    assert (
        env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    )
    assert sent["runtime_env"]["working_dir"] == str(tmp_path.resolve())
    assert ".venv" in " ".join(sent["runtime_env"]["excludes"])
    assert sent["metadata"]["qa_ray.sweep_file"] == "sweep.yaml"


def test_a_sweep_outside_the_working_dir_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")])
    monkeypatch.setattr(jobs, "_client", lambda address: pytest.fail("the cluster was reached"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="inside the uploaded working dir"):
        jobs.submit(str(path), [], "http://127.0.0.1:8265", working_dir=str(tmp_path / "elsewhere"))


def test_submit_takes_credentials_out_of_a_tracking_uri_override(
    tiny_model_dir, tmp_path, monkeypatch
):
    path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")])
    fake = _FakeJobs()
    monkeypatch.setattr(jobs, "_client", lambda address: fake)
    jobs.submit(
        str(path), ["tracking.tracking_uri=https://alice:s3cret@mlflow:5000"],
        "http://127.0.0.1:8265", working_dir=str(tmp_path), submission_id="job-1",
    )  # fmt: skip
    sent = fake.submitted
    assert "s3cret" not in sent["entrypoint"] and "alice" not in sent["entrypoint"]
    assert "tracking.tracking_uri=https://mlflow:5000" in shlex.split(sent["entrypoint"])
    env = sent["runtime_env"]["env_vars"]
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cret")


def test_submit_refuses_a_password_in_any_other_override(tiny_model_dir, tmp_path, monkeypatch):
    path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")])
    monkeypatch.setattr(jobs, "_client", lambda address: pytest.fail("the cluster was reached"))
    with pytest.raises(ConfigError) as info:
        jobs.submit(str(path), ["storage_path=s3://key:s3cret@bucket/runs"],
                    "http://127.0.0.1:8265", working_dir=str(tmp_path))  # fmt: skip
    (error,) = info.value.errors
    assert "s3cret" not in error
    assert error.startswith("override 'storage_path=s3://key:***@bucket/runs': a password")
