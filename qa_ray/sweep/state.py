"""A sweep's state: where its results and state file live, its resume stages, the settings a
resume may change, and the Optuna study's storage.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from qa_ray.config.files import config_differences
from qa_ray.errors import ConfigError
from qa_ray.storage import is_uri, join
from qa_ray.tracking.runs import redact_uri

if TYPE_CHECKING:
    from qa_ray.sweep.config import SweepConfig

__all__ = ["check_resume"]

logger = logging.getLogger(__name__)

STATE_FILE = "qa_ray_sweep.json"


def experiment_path(cfg: SweepConfig) -> str:
    """Where Ray Tune keeps this sweep's results: ``storage_path/name`` (a folder or a URI)."""
    return join(cfg.storage_path, cfg.name)


def state_dir(cfg: SweepConfig) -> Path:
    """The driver's own files (the Optuna study, the MLflow parent run id), kept locally.

    Beside the Ray results for a local ``storage_path``. For bucket storage they stay on the
    machine that runs the driver (the head node for submitted sweeps), under
    ``$QA_RAY_STATE_DIR`` (default ``~/.cache/qa_ray/sweeps``), so ``--resume`` there finds them.
    """
    if not is_uri(cfg.storage_path):
        return Path(experiment_path(cfg))
    root = os.environ.get("QA_RAY_STATE_DIR", "~/.cache/qa_ray/sweeps")
    return Path(root).expanduser() / cfg.name


def check_storage_path(cfg: SweepConfig, source: str) -> None:
    """Refuses a local ``storage_path`` the driver cannot write (a file in the way, no write
    permission, a read-only file system) before the sweep starts Ray; creates nothing.

    Raises:
        ConfigError: naming ``source`` (the sweep file), the field and the value.
    """
    if is_uri(cfg.storage_path):
        return  # a bucket: its credentials are checked where Ray writes
    path = Path(cfg.storage_path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:  # tried, not judged by its mode bits (root, read-only mounts, /proc)
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".qa-ray-write-test-", dir=existing))
        except OSError as exc:
            problem = f"{existing} is not writable: {exc.strerror}"
    if problem:
        raise ConfigError(
            source,
            [f"`storage_path`: the sweep cannot write its results there ({problem}), but got "
             f"{cfg.storage_path!r}"],
        )  # fmt: skip


def plan_stages(cfg: SweepConfig, state: dict, exp_path: str, resume: bool) -> list[dict]:
    """The Tune experiments that make up the sweep: the first, then one per extension
    (``--resume search.num_samples=N`` with N above what was planned)."""
    first = {"storage_path": cfg.storage_path, "name": cfg.name}
    if not resume:
        return [{**first, "num_samples": cfg.search.num_samples}]
    stages = state.get("stages") or [{**first, "num_samples": cfg.search.num_samples}]
    planned = sum(s["num_samples"] for s in stages)
    if cfg.search.num_samples > planned:
        stages.append(
            {
                "storage_path": exp_path,
                "name": f"extend-{len(stages)}",
                "num_samples": cfg.search.num_samples - planned,
            }
        )
    return stages


def stage_path(stage: dict) -> str:
    return join(stage["storage_path"], stage["name"])


# Settings a resumed sweep may change: more trials, and where it reads and writes.
_RESUME_MAY_CHANGE = {"search.num_samples", "tracking.tracking_uri"}


def check_resume(cfg: SweepConfig, tracking_uri: str, explicit_uri: bool) -> str:
    """Checks that ``--resume`` continues the sweep as it was started; returns the tracking
    URI to use (the sweep's own).

    Raises:
        ConfigError: no sweep state to resume, another tracking URI, fewer trials than planned,
            or changed trial or search settings (each named, with both values).
    """
    from qa_ray.sweep.bucket import BucketState

    bucket = BucketState.of(cfg, state_dir(cfg))
    if bucket is not None:  # a fresh head: the state comes back from the bucket
        bucket.pull()
    state_path = state_dir(cfg) / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(
            "--resume", [f"no sweep state at {state_path}: run the sweep without --resume"]
        )
    state = json.loads(state_path.read_text())
    stored_uri = state.get("tracking_uri")
    if explicit_uri and stored_uri and tracking_uri != stored_uri:
        raise ConfigError(
            "--resume",
            [
                f"`tracking.tracking_uri`: the sweep is tracked at {redact_uri(stored_uri)!r}, "
                f"but got {redact_uri(tracking_uri)!r} (a resumed sweep keeps its store: drop "
                "the option or pass the same URI)"
            ],
        )
    errors = []
    if "config" in state:
        errors = config_differences(
            state["config"],
            cfg.model_dump(mode="json"),
            was="the sweep ran with",
            may_change=_RESUME_MAY_CHANGE,
        )
    planned = sum(s["num_samples"] for s in state.get("stages", [])) or None
    if planned and cfg.search.num_samples < planned:
        errors.append(
            f"`search.num_samples`: the sweep planned {planned} trials, but got "
            f"{cfg.search.num_samples} (it can be raised to extend the sweep, not lowered)"
        )
    if errors:
        raise ConfigError("--resume", errors)
    return stored_uri or tracking_uri


def study_storage(local: Path):
    """The sweep's Optuna study storage: sqlite in its state folder."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{local / 'optuna.db'}")


def study_exists(local: Path, name: str) -> bool:
    """Whether the sweep's study was created already (by a driver that died before Tune's
    first snapshot: its initial points are enqueued there)."""
    import optuna

    if not (local / "optuna.db").is_file():
        return False
    return name in optuna.study.get_all_study_names(study_storage(local))


def close_study(local: Path, name: str) -> None:
    """Marks FAIL the Optuna trials a sweep leaves RUNNING (a driver killed mid-trial whose
    trial Tune did not rerun): the samplers skip them instead of waiting on them forever."""
    import optuna

    storage = study_storage(local)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        logger.info("optuna trial %d was left RUNNING: marked FAIL", t.number)
