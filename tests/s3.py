"""A real S3 API server on loopback for the tests: moto's server mode, in its own process.

Not a mocked client: pyarrow (Ray's storage layer), boto3 and MLflow reach it over HTTP as they
reach any S3-compatible store, through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MOTO = str(Path(sys.executable).parent / "moto_server")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "qa-ray-test",
    "AWS_SECRET_ACCESS_KEY": "qa-ray-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Starts moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [MOTO, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a user sets for an S3-compatible store at ``endpoint``."""
    return {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}


def make_bucket(endpoint: str) -> str:
    """A new empty bucket on the server; returns its name."""
    import boto3

    name = f"qa-ray-{uuid.uuid4().hex[:12]}"
    env = s3_env(endpoint)
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=name)
    return name


def set_env(monkeypatch, endpoint: str) -> None:
    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    os.environ.pop("AWS_PROFILE", None)
