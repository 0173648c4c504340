"""Sweeps as Ray jobs on a cluster: submit, follow, status, logs, stop (Ray Jobs SDK).

    qa-ray submit sweeps/albert_base_squad_v1_full_lora_f1_memory.yaml --address http://127.0.0.1:8265
    qa-ray job status qa-ray-albert-base-squad-v1-20261122-101500

The sweep file is validated here first (exit 2 before anything reaches the cluster). The job
runs ``python -m qa_ray.cli sweep FILE --address auto`` on the head node with the current
directory (the repo) uploaded as its ``working_dir``, so the head runs this checkout's qa-ray
and the sweep file's relative paths resolve the same way there.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["follow", "job_logs", "job_status", "stop_job", "submit"]

# Never uploaded with the working dir (Ray also honours the repo's .gitignore).
EXCLUDES = [".venv/", ".git/", "runs/", "mlruns/", "models/", "outputs/", "*.db", "docs/"]
_FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str):
    from urllib.parse import urlsplit

    from ray.job_submission import JobSubmissionClient

    parts = urlsplit(address)
    if parts.scheme not in ("http", "https", "ray") or not parts.hostname:
        raise ConfigError(
            "--address",
            [f"`--address`: expected the dashboard URL, e.g. http://127.0.0.1:8265, but got "
             f"{address!r}"],
        )  # fmt: skip
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            "--address",
            [
                f"`--address`: no Ray cluster answers at {address!r} ({exc}). Is the "
                "dashboard port forwarded? `ray dashboard cluster.yaml` forwards it to "
                "http://127.0.0.1:8265"
            ],
        ) from None


def entrypoint(sweep_rel: str, overrides: Sequence[str], tracking_uri: str | None) -> str:
    """The job's command line: this checkout's CLI, joining the cluster the job runs on.

    ``tracking_uri`` holds no credentials: :func:`submit` passes them in the environment."""
    cmd = ["python", "-m", "qa_ray.cli", "sweep", sweep_rel, *overrides, "--address", "auto"]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    return shlex.join(cmd)


def submit(
    sweep: str,
    overrides: Sequence[str],
    address: str,
    *,
    tracking_uri: str | None = None,
    working_dir: str = ".",
    submission_id: str | None = None,
) -> str:
    """Validates the sweep locally, then submits it as a Ray job; returns the job id.

    Raises:
        ConfigError: the sweep file is invalid or lies outside ``working_dir``, or an
            override other than ``tracking.tracking_uri`` holds a password.
    """
    from qa_ray.sweep.config import load_sweep_config

    cfg = load_sweep_config(sweep, overrides)  # exit 2 here, before the cluster is touched
    root = Path(working_dir).resolve()
    try:
        rel = Path(sweep).resolve().relative_to(root)
    except ValueError:
        raise ConfigError(
            sweep,
            [f"the sweep file must lie inside the uploaded working dir {root} (run from there)"],
        ) from None
    from qa_ray.sweep.config import overrides_without_credentials
    from qa_ray.tracking.runs import split_credentials

    # Credentials travel in the job's environment, never on its command line (Ray shows it).
    sent, secret_env = overrides_without_credentials(overrides)
    masked = [
        f"override {item!r}: a password in a URL would reach the job's command line, which "
        "Ray shows; give it to the cluster another way (its environment, a credentials file)"
        for item, given in zip(sent, overrides, strict=True)
        if item != given and not item.startswith("tracking.tracking_uri=")
    ]
    if masked:
        raise ConfigError("command line", masked)
    if tracking_uri:  # over the override's, as the sweep prefers --tracking-uri
        tracking_uri, found = split_credentials(tracking_uri)
        secret_env.update(found)
    client = _client(address)
    job_id = submission_id or f"qa-ray-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.submit_job(
        entrypoint=entrypoint(rel.as_posix(), sent, tracking_uri),
        submission_id=job_id,
        runtime_env={
            "working_dir": str(root),
            "excludes": EXCLUDES,
            "env_vars": {"PYTHONUNBUFFERED": "1", **secret_env},
        },
        metadata={"qa_ray.sweep": cfg.name, "qa_ray.sweep_file": rel.as_posix()},
    )


def follow(address: str, job_id: str, out=None) -> str:
    """Streams the job's logs until it ends; returns its final status.

    Ctrl-C (KeyboardInterrupt) propagates to the caller, which detaches: the job goes on.
    """
    import sys

    out = out or sys.stdout
    client = _client(address)

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    status = str(client.get_job_status(job_id).value)
    while status not in _FINAL:  # the log stream can close a moment before the status flips
        time.sleep(0.5)
        status = str(client.get_job_status(job_id).value)
    return status


def job_status(address: str, job_id: str) -> tuple[str, str]:
    """(status, message) of a job."""
    info = _client(address).get_job_info(job_id)
    return str(info.status.value), info.message or ""


def job_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop_job(address: str, job_id: str) -> bool:
    return _client(address).stop_job(job_id)
