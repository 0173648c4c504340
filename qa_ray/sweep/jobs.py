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
import contextlib
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["follow", "job_logs", "job_status", "stop_job", "submit"]

# Never uploaded with the working dir (Ray also honours the repo's .gitignore), except the
# sweep's own local model folders (:func:`travelling`).
EXCLUDES = [".venv/", ".git/", "runs/", "mlruns/", "models/", "outputs/", "*.db", "docs/"]
_FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Passed to the job's environment when set here: a Hugging Face token reaches the head (which
# checks hub ids before starting Ray) and every trial's workers (gated models such as Llama).
FORWARDED_ENV = ("HF_TOKEN",)
# Ray stores the uploaded working dir in its GCS, in one message of at most this size.
_UPLOAD_LIMIT = 512 * 1024 * 1024


def _model_fields(cfg) -> list[tuple[str, str]]:
    """``(field, value)`` of every model a trial may load: the base model, the ``model`` axis'
    choices, a distillation teacher."""
    fields = [("model.name_or_path", cfg.model.name_or_path)]
    axis = cfg.space.params.get("model")
    for i, choice in enumerate(getattr(axis, "choices", None) or ()):
        fields.append((f"search.space.params.model.choices[{i}]", str(choice)))
    distill = cfg.train.distill
    if distill is not None and distill.from_sweep is None:
        fields.append(("train.distill.teacher", distill.teacher))
    return fields


def travelling(cfg, root: Path) -> tuple[list[str], list[str]]:
    """The sweep's local model folders that travel with the job (relative to ``root``), and
    the excludes that let them: ``models/`` stays excluded but for the folders named.

    Raises:
        ConfigError: a local model folder outside ``root`` (it would not reach the cluster),
            or folders too large for Ray's upload; each named by field and value.
    """
    from qa_ray import storage

    errors, rels = [], []
    for field, value in _model_fields(cfg):
        if storage.is_uri(value) or not Path(value).exists():
            continue  # a hub id or a bucket: the nodes read it themselves
        try:
            rel = Path(value).resolve().relative_to(root)
        except ValueError:
            errors.append(
                f"`{field}`: a local folder outside the uploaded working dir {root} does not "
                f"reach the cluster, but got {value!r}: move it under {root} and name it by a "
                "relative path (it then travels with the job), put it in the bucket, or name a "
                "hub id"
            )
            continue
        rels.append(rel.as_posix())
    size = sum(f.stat().st_size for r in set(rels) for f in (root / r).rglob("*") if f.is_file())
    if size >= _UPLOAD_LIMIT:
        errors.append(
            f"the local model folders {sorted(set(rels))} hold {size / 2**20:.0f} MiB, over "
            f"the {_UPLOAD_LIMIT / 2**20:.0f} MiB Ray uploads with a job: put them in the "
            "bucket or name hub ids"
        )
    if errors:
        raise ConfigError("local model folders", errors)
    return rels, _excludes(root, rels)


def _excludes(root: Path, rels: list[str]) -> list[str]:
    """:data:`EXCLUDES` with each used folder's parents opened up: their other entries stay
    excluded, one by one (Ray's walk never enters an excluded folder)."""
    if not rels:
        return list(EXCLUDES)
    keep = {Path(r) for r in rels}
    opened = {p for r in keep for p in r.parents if p != Path(".")}
    out = [e for e in EXCLUDES if Path(e.rstrip("/")) not in opened]
    for folder in sorted(opened):
        for entry in sorted((root / folder).iterdir()):
            rel = entry.relative_to(root)
            if rel not in keep and rel not in opened:
                out.append(f"/{rel.as_posix()}" + ("/" if entry.is_dir() else ""))
    return out


def _check_address(address: str) -> None:
    """Refuses an address that is no dashboard URL (no cluster is reached)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("http", "https", "ray") or not parts.hostname:
        raise ConfigError(
            "--address",
            [f"`--address`: expected the dashboard URL, e.g. http://127.0.0.1:8265, but got "
             f"{address!r}"],
        )  # fmt: skip


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    _check_address(address)
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
    _check_address(address)
    models, excludes = travelling(cfg, root)  # refused here, before the cluster is reached
    secret_env.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    client = _client(address)
    job_id = submission_id or f"qa-ray-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # The repo's .gitignore lists models/: Ray would leave the sweep's model folders behind
    # whatever the excludes say, so it is read here instead (its entries are in EXCLUDES).
    with _gitignore_off(bool(models)):
        return client.submit_job(
            entrypoint=entrypoint(rel.as_posix(), sent, tracking_uri),
            submission_id=job_id,
            runtime_env={
                "working_dir": str(root),
                "excludes": excludes + (_gitignored(root) if models else []),
                "env_vars": {"PYTHONUNBUFFERED": "1", **secret_env},
            },
            metadata={"qa_ray.sweep": cfg.name, "qa_ray.sweep_file": rel.as_posix()},
        )


@contextlib.contextmanager
def _gitignore_off(off: bool):
    """Ray's job client reads ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE`` as it uploads (Ray 2.60)."""
    name, before = (
        "RAY_RUNTIME_ENV_IGNORE_GITIGNORE",
        os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE"),
    )
    if off:
        os.environ[name] = "1"
    try:
        yield
    finally:
        if off and before is None:
            os.environ.pop(name, None)
        elif off:
            os.environ[name] = before


def _gitignored(root: Path) -> list[str]:
    """The working dir's own .gitignore patterns, less those on :data:`EXCLUDES`' folders
    (``/models/``: handled entry by entry)."""
    path = root / ".gitignore"
    if not path.is_file():
        return []
    skip = {e.strip("/") for e in EXCLUDES}
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#") and ln.strip("/") not in skip]


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
