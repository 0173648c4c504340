"""Config files: YAML in, overrides applied, validated into a model with every error at once."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from qa_ray.config.paths import absolutize_paths, local_path_errors
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    import os

__all__ = [
    "apply_overrides",
    "check_file_kind",
    "config_differences",
    "did_you_mean",
    "load_trial_config",
    "load_yaml",
    "overridden",
    "validate_model",
]


def _is_branch(part: Any) -> bool:
    # pydantic names union branches in the location: `str`, `function-after[...]`, `float`
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold: a union's members, an ``Annotated`` or ``X | None`` opened."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _members(a)]
    return [annotation]


def _tag(model: type[BaseModel]) -> Any:
    """The value of a discriminated union member's ``type: Literal[...]`` field, if any."""
    field = model.model_fields.get("type")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def _models(types_: list[Any]) -> list[type[BaseModel]]:
    members = (m for t in types_ for m in _members(t))
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _locate(cls: type[BaseModel], loc: tuple) -> tuple[str, list[type[BaseModel]]]:
    """An error's location as the user writes it (``objectives[0].mode``: union branches and
    tags left out), and the blocks that may hold its last key."""
    shown, current, parents = "", [cls], [cls]
    for i, part in enumerate(loc):
        is_key = i == len(loc) - 1  # the last part is a key, known or not
        if is_key:
            parents = _models(current)
        following = []
        for t in (m for c in current for m in _members(c)):
            origin, args = typing.get_origin(t), typing.get_args(t)
            if isinstance(t, type) and issubclass(t, BaseModel):
                if part in t.model_fields:
                    following.append(t.model_fields[part].annotation)
                    is_key = True
                elif part == _tag(t):
                    following.append(t)  # a discriminated union's member, named by its tag
            elif (origin in (list, tuple) and isinstance(part, int)) or (
                origin is dict and not _is_branch(part)
            ):
                following.append(args[-1])
                is_key = True
        if is_key and isinstance(part, int):
            shown += f"[{part}]"
        elif is_key and not _is_branch(part):
            shown += f".{part}" if shown else str(part)
        current = following or current
    return shown, parents


def did_you_mean(word: Any, known: Any) -> str:
    """``"; did you mean `x`?"`` for the closest of ``known`` to a misspelt ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def _format_error(err: dict[str, Any], cls: type[BaseModel]) -> str:
    where, parents = _locate(cls, tuple(err["loc"]))
    loc = where or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = err["loc"][-1]
        known = sorted({f for p in parents for f in p.model_fields})
        return f"`{loc}`: unknown key (value {err['input']!r}){did_you_mean(key, known)}"
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
        messages = [_format_error(e, cls) for e in errors]
        raise ConfigError(source, list(dict.fromkeys(messages))) from None


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

    Raises:
        ConfigError: every malformed override (source ``"command line"``).
    """
    out, errors = overridden(data, overrides)
    if errors:
        raise ConfigError("command line", errors)
    return out


def overridden(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """:func:`apply_overrides` that returns its errors beside the mapping (with the good
    overrides applied), for a caller that reports them with others."""
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
    return out, errors


def check_file_kind(data: dict[str, Any], path: str, expected: str) -> None:
    """Refuses a sweep file given where a trial file is expected (``expected="trial"``), or a
    trial file where a sweep file is (``"sweep"``), saying which command runs it.

    A sweep file is a trial file's blocks plus a ``search`` block.
    """
    if expected == "trial" and "search" in data:
        raise ConfigError(
            path,
            [
                f"this is a sweep file (it has a `search` block): run `qa-ray sweep {path}` "
                f"(`qa-ray validate {path}` checks it); `qa-ray train` runs one trial file"
            ],
        )
    if expected == "sweep" and "search" not in data and ("model" in data or "output_dir" in data):
        raise ConfigError(
            path,
            [
                f"this is a trial file (it has no `search` block): run `qa-ray train {path}`; "
                "a sweep file adds `search` (docs/configuration.md#sweep-file)"
            ],
        )


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
    """Loads, overrides and validates a trial file; local paths come back absolute.

    Raises:
        ConfigError: every problem at once: malformed overrides, invalid fields, missing
            local files (a sweep file is refused with the command that runs it).
    """
    source = str(path)
    raw = load_yaml(path)
    check_file_kind(raw, source, "trial")
    data, errors = overridden(raw, list(overrides))
    cfg = None
    try:
        cfg = validate_model(TrialConfig, data, source)
    except ConfigError as exc:
        errors += exc.errors
    errors += local_path_errors(cfg.model_dump() if cfg is not None else data)
    if errors:
        raise ConfigError(source, errors)
    return absolutize_paths(cfg)
