"""What a sweep could sample, checked before Ray starts: every axis at its ends and choices,
and every initial point, as a whole trial config.

A rule between two fields (``train.warmup_steps`` set and a ``warmup_ratio`` axis, an LSTM
and a LoRA axis) would otherwise fail every trial it samples, after the cluster started.
"""

from __future__ import annotations

from typing import Any

from qa_ray.config.files import did_you_mean, validate_model
from qa_ray.config.paths import local_path_errors
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError
from qa_ray.search.space import (
    KBIT,
    LORA_AXES,
    CategoricalParam,
    IntParam,
    Param,
    apply_params,
)

__all__ = ["axis_errors", "initial_point_errors"]


def axis_errors(params: dict[str, Param], base: dict[str, Any]) -> list[str]:
    """Why a trial sampled at an axis's ends, or at one of its choices, would be refused: the
    whole trial config is validated, cross-field rules included, with the axis at that value,
    what it implies (4/8 bits imply LoRA; a LoRA axis exists only in a LoRA trial) and every
    other field at the sweep's value. So no trial is sampled only to fail after Ray starts.

    Args:
        params: the space's axes (the valid ones, see :func:`valid_axes`).
        base: the sweep's trial blocks, a config dump, or the raw mapping of blocks that are
            themselves invalid (their own errors are not repeated here).

    Returns:
        One message per axis and reason, naming the values that break it.
    """
    before = set(_trial_errors(base))
    errors = []
    for name, p in params.items():
        if name.startswith("distill_") and _block(base, "train").get("distill") is None:
            errors.append(
                f"`search.space`: `params.{name}` needs `train.distill` (its teacher), but "
                "got (train.distill=None)"
            )
            continue
        values = p.choices if isinstance(p, CategoricalParam) else sorted({p.low, p.high})
        refused: dict[str, list[str]] = {}
        for value in values:
            sampled = _implied({name: value}, base)
            if name in LORA_AXES:
                sampled.setdefault("finetune", "lora")
            config = apply_params(base, sampled)
            reasons = [e for e in _trial_errors(config) if e not in before]
            if name == "model":  # a local model folder that is not there
                reasons += local_path_errors({"model": {"name_or_path": value}})
            for reason in reasons:
                refused.setdefault(reason, []).append(_shown(sampled))
        errors += [
            f"`search.space`: `params.{name}`: a trial sampled at {' or '.join(at)} is "
            f"invalid: {reason}"
            for reason, at in refused.items()
        ]
    return errors


def initial_point_errors(
    points: list[Any], params: dict[str, Param], names: Any, base: dict[str, Any]
) -> list[str]:
    """Why a ``search.initial_points`` entry cannot be tried: a key that is no axis of the
    space (``names``), a value outside its axis's range or choices, or a trial config the
    point makes invalid.

    Args:
        points: the sweep's ``search.initial_points``.
        params: the space's valid axes; an axis missing here is checked by name only.
        names: every axis name of the space, valid or not.
        base: the sweep's trial blocks, as for :func:`axis_errors`.
    """
    before = set(_trial_errors(base))
    errors = []
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            continue  # the sweep's own validation names it
        wrong = []
        for key, value in point.items():
            where = f"`search.initial_points[{i}].{key}`"
            if key not in names:
                wrong.append(
                    f"{where}: not an axis of the search space {sorted(names)}, but got "
                    f"{value!r}{did_you_mean(key, names)}"
                )
            elif key in params and (rule := _off_axis(params[key], value)):
                wrong.append(f"{where}: {rule}, but got {value!r}")
        errors += wrong
        if wrong:
            continue
        sampled = _implied(point, base)
        for reason in _trial_errors(apply_params(base, sampled)):
            if reason not in before:
                errors.append(
                    f"`search.initial_points[{i}]`: a trial at {_shown(sampled)} is invalid: "
                    f"{reason}"
                )
    return errors


def _off_axis(p: Param, value: Any) -> str:
    """The rule ``value`` breaks on axis ``p`` (``""`` when none)."""
    if isinstance(p, CategoricalParam):
        return "" if value in p.choices else f"must be one of the axis's choices {p.choices}"
    kinds = (int,) if isinstance(p, IntParam) else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return f"must be {'an integer' if isinstance(p, IntParam) else 'a number'}"
    if not p.low <= value <= p.high:
        return f"`low <= value <= high` must hold for the axis (low={p.low}, high={p.high})"
    return ""


def _implied(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``params`` with what :func:`suggest` derives from them: 4/8 bits imply LoRA."""
    out = dict(params)
    if out.get("quantization_bits", _block(base, "model").get("quantization_bits", 32)) in KBIT:
        out["finetune"] = "lora"
    return out


def _trial_errors(config: dict[str, Any]) -> list[str]:
    try:
        validate_model(TrialConfig, config, "sampled configuration")
    except ConfigError as exc:
        return exc.errors
    return []


def _shown(sampled: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in sampled.items()) + ")"


def _block(config: dict[str, Any], name: str) -> dict[str, Any]:
    block = config.get(name)
    return block if isinstance(block, dict) else {}
