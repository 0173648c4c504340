"""MLflow: one parent run per sweep, one nested child run per trial (tag ``mlflow.parentRunId``).

The parent carries the sweep config and the Pareto artifacts, each child the sampled params,
metric curves (one point per evaluation) and final metrics, or status FAILED with the error.
On ``--resume`` the same parent and children are reused, so no run is duplicated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from importlib import metadata
from typing import Any

# The tag names live with the metric names; re-exported here for readers of this module.
from qa_ray.metrics import (
    TAG_CHECKPOINT,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL_NAME,
)

__all__ = [
    "find_parent_run",
    "log_hypervolume",
    "mlflow_client",
    "read_artifact",
    "run_params",
    "set_pareto_tags",
    "start_comparison_run",
    "sweep_params",
    "trial_records",
    "kill_running_children",
    "credentials_to_environment",
    "split_credentials",
    "redact_uri",
    "PER_QUESTION_TABLE",
    "QUALITATIVE_TABLE",
    "child_runs",
    "resolve_tracking_uri",
    "start_parent_run",
]

logger = logging.getLogger(__name__)


# Instruction tuning: each child's answers to the qualitative questions, one row per question
# and evaluation step, as an MLflow table (the UI's artifact compare view lines trials up).
QUALITATIVE_TABLE = "qualitative_answers.json"
# Every evaluation's per-question scores: columns step, id, exact, f1 (a row per question).
PER_QUESTION_TABLE = "per_question.json"


# A QA trial's error breakdown of its final predictions (qa_ray.scoring.breakdown).
ERROR_BREAKDOWN_FILE = "error_breakdown.json"
_PACKAGES = ("qa-ray", "ray", "torch", "transformers", "peft", "bitsandbytes", "optuna", "mlflow")


def resolve_tracking_uri(from_file: str | None, from_cli: str | None) -> str:
    """``--tracking-uri``, else the sweep file, else ``MLFLOW_TRACKING_URI``, else local sqlite."""
    uri = from_cli or from_file or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri`` (imported lazily: the CLI starts without MLflow)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# The MLflow 3 UI picks its layout by this experiment tag; without it an experiment holding no
# models yet may open in the GenAI (traces/evaluations) layout instead of the runs table.
_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def open_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if missing (and with it a
    fresh store, whose schema migrations take seconds: callers overlap this with other work)."""
    return _experiment_id(mlflow_client(uri), name)


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, tags=dict([_EXPERIMENT_KIND]))
    except MlflowException:  # another sweep created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(
    uri: str,
    experiment: str,
    sweep_name: str,
    params: dict[str, Any],
    artifacts: dict[str, str],
    run_id: str | None = None,
) -> str:
    """Creates the sweep's parent run (or reopens ``run_id`` on resume); returns its id.

    Args:
        params: key settings logged as params.
        artifacts: ``{file name: text}`` logged at the run's root (resolved config, space).
    """
    client = mlflow_client(uri)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {TAG_SWEEP: sweep_name, TAG_ROLE: "sweep", "git_commit": _git_commit()}
    for pkg in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{pkg}"] = metadata.version(pkg)
    run = client.create_run(_experiment_id(client, experiment), run_name=sweep_name, tags=tags)
    rid = run.info.run_id
    client.log_batch(rid, params=mlflow_params(params))
    for name, text in artifacts.items():
        client.log_text(rid, text, name)
    return rid


def finish_parent_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Ends the sweep's parent run: FINISHED, FAILED (every trial failed, or the sweep raised)
    or KILLED (interrupted)."""
    mlflow_client(uri).set_terminated(run_id, status=status)


def kill_running_children(uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """Ends ``status`` (KILLED for an interrupted sweep, FAILED for one that raised) the trial
    runs of a sweep that are still RUNNING; returns how many. ``--resume`` reopens them
    (RUNNING again) when it reruns their trials."""
    client = mlflow_client(uri)
    n = 0
    for run in child_runs(uri, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
            n += 1
    return n


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``http://user:secret@host`` -> (``http://host``, the MLflow environment variables that
    carry the credentials: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, {}
    env = {"MLFLOW_TRACKING_USERNAME": parts.username or ""}
    if parts.password is not None:
        env["MLFLOW_TRACKING_PASSWORD"] = parts.password
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), env


def credentials_to_environment(uri: str) -> str:
    """Moves credentials out of a tracking URI into MLflow's environment variables (read by
    its HTTP client) and returns the URI without them, so no file, run, log line or pickled
    callback holds them."""
    clean, env = split_credentials(uri)
    os.environ.update(env)
    return clean


def check_tracking_uri(uri: str, source: str, field: str) -> None:
    """Refuses a tracking URI whose scheme no MLflow store serves (``sqlite``, ``file``,
    ``http(s)``, the databases, ``databricks``, plugins), before the sweep starts Ray.

    Raises:
        ConfigError: naming ``source`` (the sweep file, or where the URI came from), ``field``,
            the URI (without credentials) and the schemes MLflow knows.
    """
    from mlflow.exceptions import MlflowException

    # MLflow 3 has no public way to ask which schemes it serves; its tracking-store registry
    # answers without opening the store (no file, database or connection is made).
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from qa_ray.errors import ConfigError

    try:
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        known = sorted(s for s in _tracking_store_registry._registry if s)
        raise ConfigError(
            source,
            [
                f"`{field}`: MLflow serves no store for this scheme (it knows {known}, or a "
                f"local path), but got {redact_uri(uri)!r}"
            ],
        ) from None


def redact_uri(uri: str) -> str:
    """``http://user:secret@host/x`` -> ``http://user:***@host/x``: never print a password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def child_runs(uri: str, parent_run_id: str) -> list:
    """Every child run of a parent, oldest first."""
    client = mlflow_client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
        max_results=10000,
        order_by=["attributes.start_time ASC"],
    )


# ---- reading a sweep back (the Pareto report, `qa-ray pareto`) -------------------------------


def trial_checkpoint(uri: str, sweep: str, trial: str) -> str:
    """The newest checkpoint folder of trial ``trial`` of the sweep ``sweep`` (its name or
    parent run id), as its MLflow run recorded it.

    Raises:
        ConfigError: no such sweep or trial, no checkpoint recorded, or the folder is not on
            this machine (a sweep stored on cloud storage: download the folder, pass its path).
    """
    from qa_ray.errors import ConfigError

    named = f"`train.distill.teacher` = 'sweep:{sweep}/{trial}'"

    def fail(message: str) -> ConfigError:
        return ConfigError("train.distill.teacher", [f"{named}: {message}"])

    try:
        parent = find_parent_run(uri, sweep)
    except ConfigError as exc:
        raise fail("; ".join(exc.errors)) from None
    runs = child_runs(uri, parent)
    names = [r.data.tags.get(TAG_TRIAL_NAME, "") for r in runs]
    if trial not in names:
        raise fail(f"the sweep has no such trial (its trials: {', '.join(names) or 'none'})")
    path = runs[names.index(trial)].data.tags.get(TAG_CHECKPOINT)
    if not path:
        raise fail(
            "the trial recorded no checkpoint (it ran with `train.save_checkpoints: false`, "
            "or never reported one)"
        )
    from qa_ray import storage

    if storage.is_uri(path):  # in the sweep's bucket: the trials fetch it where they run
        if not storage.exists(path):
            raise fail(f"its checkpoint {path!r} is not in the bucket (it was removed)")
    elif not os.path.isdir(path):
        raise fail(
            f"its checkpoint {path!r} is not a folder on this machine: copy it here and name "
            "the folder"
        )
    return path


def resolve_teacher(cfg, uri: str):
    """``cfg`` (a sweep's or a trial's config) with a ``sweep:SWEEP/TRIAL`` distillation
    teacher replaced by that trial's checkpoint folder (:func:`trial_checkpoint`), looked up
    at ``uri``; other configs are returned as they are."""
    distill = cfg.train.distill
    if distill is None or distill.from_sweep is None:
        return cfg
    path = trial_checkpoint(uri, *distill.from_sweep)
    train = cfg.train.model_copy(update={"distill": distill.model_copy(update={"teacher": path})})
    return cfg.model_copy(update={"train": train})


def find_parent_run(uri: str, sweep_or_run: str) -> str:
    """The parent run id for a run id or a sweep name (the newest sweep of that name).

    Raises:
        ConfigError: neither names a sweep at ``uri`` (or no sqlite store is there: it is
            not created by looking).
    """
    from qa_ray.errors import ConfigError

    store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if store is not None and not os.path.isfile(store):  # looking it up would create it
        raise ConfigError(
            sweep_or_run, [f"no MLflow store at {redact_uri(uri)} to find {sweep_or_run!r} in"]
        )
    client = mlflow_client(uri)
    try:
        return client.get_run(sweep_or_run).info.run_id
    except Exception:
        pass
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            exps,
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_or_run}' and tags.`{TAG_ROLE}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if exps
        else []
    )
    if not runs:
        raise ConfigError(
            sweep_or_run, [f"no sweep parent run or run id {sweep_or_run!r} at {redact_uri(uri)}"]
        )
    return runs[0].info.run_id


def sweep_params(uri: str, parent_id: str) -> dict[str, str]:
    """The parent run's params (task, constraints, objectives, ...)."""
    return dict(mlflow_client(uri).get_run(parent_id).data.params)


def trial_records(uri: str, parent_id: str) -> list[dict[str, Any]]:
    """Every trial of a sweep as a plain record: name, run id, status (COMPLETE, PRUNED,
    INFEASIBLE, REJECTED (predicted over a budget, not launched), FAILED, KILLED, RUNNING), ``ended`` (its end time, ms), params (numbers where
    they parse) and last metric values; in start order."""
    out = []
    sweep = mlflow_client(uri).get_run(parent_id).data.tags.get(TAG_SWEEP, parent_id)
    for r in child_runs(uri, parent_id):
        status = {"FINISHED": "COMPLETE"}.get(r.info.status, r.info.status)
        outcome = r.data.tags.get(TAG_OUTCOME)
        if status == "COMPLETE" and outcome in ("pruned", "infeasible"):
            status = outcome.upper()  # PRUNED, INFEASIBLE: off the front
        elif outcome == "predicted_infeasible":
            status = "REJECTED"  # never launched: predicted over a memory budget
        rec: dict[str, Any] = {
            "name": r.data.tags.get(TAG_TRIAL_NAME) or r.info.run_name,
            "run_id": r.info.run_id,
            "status": status,
            "ended": r.info.end_time,
            "parent_run_id": parent_id,
            "sweep": sweep,
        }
        for k, v in r.data.params.items():
            rec[k] = number(v)
        rec.update(r.data.metrics)
        out.append(rec)
    return out


def number(v: str) -> Any:
    """A param's value as int or float when it parses as one, else the string."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def run_params(uri: str, run_id: str) -> dict[str, Any]:
    return {k: number(v) for k, v in mlflow_client(uri).get_run(run_id).data.params.items()}


def read_artifact(uri: str, run_id: str, path: str) -> str | None:
    """A text artifact of a run, or None when the run has none at ``path``."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow_client(uri).download_artifacts(run_id, path, d)
        except Exception:
            return None
        with open(local) as f:
            return f.read()


def start_comparison_run(uri: str, parent_ids: list[str], params: dict[str, Any]) -> str:
    """A run holding one front over several sweeps (``qa-ray pareto A B ...``), in the first
    sweep's experiment, tagged with the parent runs it compares."""
    client = mlflow_client(uri)
    parents = [client.get_run(p) for p in parent_ids]
    names = [p.data.tags.get(TAG_SWEEP, p.info.run_id) for p in parents]
    run = client.create_run(
        parents[0].info.experiment_id,
        run_name="compare " + " vs ".join(names),
        tags={TAG_ROLE: "comparison", "qa_ray.compared": ",".join(parent_ids)},
    )
    client.log_batch(run.info.run_id, params=mlflow_params({**params, "sweeps": names}))
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def set_pareto_tags(uri: str, trials: list[dict[str, Any]]) -> None:
    """``pareto_optimal`` on every trial and ``pareto_rank`` where it has one; a rank left
    from an earlier report on a trial no longer ranked (failed since, or now infeasible) is
    deleted, not left stale."""
    from qa_ray.metrics import TAG_PARETO_OPTIMAL, TAG_PARETO_RANK

    client = mlflow_client(uri)
    for t in trials:
        client.set_tag(t["run_id"], TAG_PARETO_OPTIMAL, "true" if t["pareto_optimal"] else "false")
        if t["pareto_rank"] is not None:
            client.set_tag(t["run_id"], TAG_PARETO_RANK, str(t["pareto_rank"]))
        elif TAG_PARETO_RANK in client.get_run(t["run_id"]).data.tags:
            client.delete_tag(t["run_id"], TAG_PARETO_RANK)


def hypervolume_reference(uri: str, parent_id: str) -> list[float] | None:
    """The reference point the sweep's hypervolume curve was logged against, or None."""
    from qa_ray.metrics import TAG_HYPERVOLUME_REFERENCE

    text = mlflow_client(uri).get_run(parent_id).data.tags.get(TAG_HYPERVOLUME_REFERENCE)
    return [float(v) for v in json.loads(text)] if text else None


def log_hypervolume(
    uri: str,
    parent_id: str,
    history: list[float],
    front_size: int,
    reference: list[float] | tuple[float, ...] = (),
) -> None:
    """The hypervolume after each completed trial as the parent's ``hypervolume`` curve,
    against one reference point stored with the parent run (a tag). A report after a resume
    or an extension adds the new trials' points only; a report whose reference differs from
    the stored one (a trial outside it) stores the new one and logs the whole curve again,
    so no curve mixes points of two references."""
    from mlflow.entities import Metric

    from qa_ray.metrics import HYPERVOLUME, PARETO_FRONT_SIZE, TAG_HYPERVOLUME_REFERENCE

    client = mlflow_client(uri)
    stored = hypervolume_reference(uri, parent_id)
    same = stored is not None and [float(r) for r in reference] == stored
    logged = {h.step for h in client.get_metric_history(parent_id, HYPERVOLUME)} if same else set()
    if not same:
        client.set_tag(parent_id, TAG_HYPERVOLUME_REFERENCE, json.dumps(list(reference)))
    now = int(time.time() * 1000)
    points = [
        Metric(HYPERVOLUME, v, now, step)
        for step, v in enumerate(history, start=1)
        if step not in logged
    ]
    client.log_batch(parent_id, metrics=[*points, Metric(PARETO_FRONT_SIZE, front_size, now, 0)])


def mlflow_params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]
