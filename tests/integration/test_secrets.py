"""Planted secrets never land anywhere: a sweep tracked at ``http://user:PASSWORD@host`` with
``AWS_SECRET_ACCESS_KEY`` in its environment; the console, the MLflow store and its artifacts,
``runs/`` and Ray's session logs are searched for both."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qa_ray.tracking.runs import find_parent_run
from tests.dashboard import mlflow_server
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration

PASSWORD = "pw-planted-4b1d"
AWS_SECRET = "aws-planted-9c7e"


def _files_holding(root: Path, secret: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                pass
    return found


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_no_secret_in_console_store_runs_or_ray_logs(tiny_model_dir, tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    store = tmp_path / "store"
    store.mkdir()
    with mlflow_server(
        f"sqlite:///{store / 'server.db'}", store / "artifacts", tmp_path / "mlflow.log"
    ) as url:
        secret_url = url.replace("http://", f"http://alice:{PASSWORD}@")
        path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=1,
                             tracking_uri=secret_url)  # fmt: skip
        env = dict(
            os.environ,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET,
            RAY_TMPDIR=str(ray_tmp),
            PYTHONUNBUFFERED="1",
        )
        env.pop("MLFLOW_TRACKING_PASSWORD", None)
        done = subprocess.run(
            [sys.executable, "-m", "qa_ray.cli", "sweep", str(path)],
            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        parent = find_parent_run(url, "tiny-sweep")  # the sweep reached the server
        assert MlflowClient(url).get_run(parent).info.status == "FINISHED"
    console = done.stdout + done.stderr
    # the URI is printed without its credentials (they went to the environment)
    assert f"MLflow parent run {parent} at {url}" in console
    for secret in (PASSWORD, AWS_SECRET):
        assert secret not in console
        assert not _files_holding(store, secret)
        assert not _files_holding(tmp_path / "runs", secret)
        assert not _files_holding(ray_tmp, secret), f"{secret} in Ray's session logs"
    assert list(ray_tmp.rglob("*.log")), "Ray's session logs were searched"
