"""Config files: YAML in, overrides applied, validated into a model with every error at once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from qa_ray.config.paths import absolutize_paths, check_local_paths
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    import os

__all__ = [
    "apply_overrides",
    "config_differences",
    "load_trial_config",
    "load_yaml",
    "validate_model",
]


def _is_branch(part: Any) -> bool:
    # pydantic names union branches in the location: `str`, `function-after[...]`, `float`
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _format_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not _is_branch(p)) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"`{loc}`: unknown key (value {err['input']!r})"
    if err["type"] == "missing":
        return f"`{loc}`: required field is missing"
    if "but got" in msg:  # our own validators already name fields and values
        return f"`{loc}`: {msg}" if loc != "(top level)" else msg
    return f"`{loc}`: {msg}, but got {err['input']!r}"


def validate_model(cls: type[BaseModel], data: Any, source: str) -> Any:
    """Validates ``data`` against ``cls``, raising one :class:`ConfigError` with every error."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, but got {data!r}"])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # In a union (`space: str | SearchSpace`), drop "not a string" when another branch
        # has the real complaint about the same field.
        branchy = [e for e in errors if any(_is_branch(p) for p in e["loc"])]
        if len(branchy) > 1:
            errors = [e for e in errors if not (e in branchy and e["type"] == "string_type")]
        raise ConfigError(source, list(dict.fromkeys(_format_error(e) for e in errors))) from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping, turning I/O and syntax problems into :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), ["file not found"])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), [f"expected a mapping at the top level, but got {data!r}"])
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``dotted.key=value`` overrides (values parsed as YAML) to a nested mapping.

    Unknown keys are not caught here but by validation (``extra="forbid"``), which names them.
    """
    out = _deepcopy(data)
    errors = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append(f"override {item!r}: expected dotted.key=value")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                errors.append(
                    f"override {item!r}: `{'.'.join(parts[: i + 1])}` is a value, not a block"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    if errors:
        raise ConfigError("command line", errors)
    return out


def config_differences(
    before: Any, now: Any, *, was: str, may_change: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """One message per setting (dotted key) whose value differs between two config dumps:
    "`train.max_steps`: {was} 2, but got 3"; keys in ``may_change`` are left out."""

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [
                d
                for k in sorted(set(a) | set(b))
                for d in walk(a.get(k), b.get(k), f"{prefix}{k}.")
            ]
        key = prefix.rstrip(".")
        if a != b and key not in may_change:
            return [f"`{key}`: {was} {a!r}, but got {b!r}"]
        return []

    return walk(before, now, "")


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def load_trial_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrialConfig:
    """Loads, overrides and validates a trial file; local paths come back absolute."""
    data = apply_overrides(load_yaml(path), list(overrides))
    cfg = validate_model(TrialConfig, data, str(path))
    check_local_paths(cfg, str(path))
    return absolutize_paths(cfg)
