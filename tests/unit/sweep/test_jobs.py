"""Submitting a sweep as a Ray job: the command line, the runtime env, the checks before it."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

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


def _model_inside(tiny_model_dir, root, monkeypatch) -> Path:
    """The tiny model copied to ``root/models/bert``, named from ``root`` (the current dir)."""
    shutil.copytree(tiny_model_dir("bert"), root / "models" / "bert")
    monkeypatch.chdir(root)
    return Path("models/bert")


def test_submit_sends_credentials_in_the_environment_not_the_command_line(
    tiny_model_dir, tmp_path, monkeypatch
):
    path, _ = tiny_sweep(tmp_path, [_model_inside(tiny_model_dir, tmp_path, monkeypatch)])
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
    path, _ = tiny_sweep(tmp_path, [_model_inside(tiny_model_dir, tmp_path, monkeypatch)])
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


class _RecordingJobs(_FakeJobs):
    def submit_job(self, **kwargs):
        self.gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
        return super().submit_job(**kwargs)


def test_a_local_model_folder_travels_with_the_job_and_no_other(
    tiny_model_dir, tmp_path, monkeypatch
):
    model = _model_inside(tiny_model_dir, tmp_path, monkeypatch)
    (tmp_path / "models" / "other").mkdir()  # a folder the sweep does not name stays here
    (tmp_path / "models" / "other" / "weights.bin").write_bytes(b"0")
    (tmp_path / ".gitignore").write_text("/models/\n/data/\n")
    path, _ = tiny_sweep(tmp_path, [model])
    fake = _RecordingJobs()
    monkeypatch.setattr(jobs, "_client", lambda address: fake)
    jobs.submit(str(path), [], "http://127.0.0.1:8265", working_dir=str(tmp_path))
    excludes = fake.submitted["runtime_env"]["excludes"]
    assert "models/" not in excludes and "/models/" not in excludes
    assert "/models/other/" in excludes and "/data/" in excludes
    # Ray read the repo's .gitignore (models/) during the upload only while it was told not to
    assert fake.gitignore == "1" and "RAY_RUNTIME_ENV_IGNORE_GITIGNORE" not in os.environ
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(tmp_path, excludes)
    assert not excluded(tmp_path / "models" / "bert" / "config.json")
    assert excluded(tmp_path / "models" / "other" / "weights.bin")


def test_a_model_folder_outside_the_working_dir_is_refused_before_the_cluster(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from qa_ray.cli import main

    outside = tiny_model_dir("bert")
    wd = tmp_path / "repo"
    wd.mkdir()
    path, _ = tiny_sweep(wd, [outside])
    monkeypatch.setattr(jobs, "_client", lambda address: pytest.fail("the cluster was reached"))
    argv = ["submit", str(path), "--address", "http://127.0.0.1:8265", "--working-dir", str(wd)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"`model.name_or_path`: a local folder outside the uploaded working dir {wd}" in err
    assert repr(str(outside)) in err and "search.space.params.model.choices[0]" in err


def test_hf_token_reaches_the_job_in_its_environment_not_its_command_line(
    tiny_model_dir, tmp_path, monkeypatch
):
    path, _ = tiny_sweep(tmp_path, [_model_inside(tiny_model_dir, tmp_path, monkeypatch)])
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret")
    fake = _FakeJobs()
    monkeypatch.setattr(jobs, "_client", lambda address: fake)
    jobs.submit(str(path), [], "http://127.0.0.1:8265", working_dir=str(tmp_path))
    assert fake.submitted["runtime_env"]["env_vars"]["HF_TOKEN"] == "hf_s3cret"
    assert "hf_s3cret" not in fake.submitted["entrypoint"]
