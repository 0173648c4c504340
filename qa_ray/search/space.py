"""Search spaces: validated entries, one conversion to Optuna distributions, coupled axes.

A search-space file (``search_spaces/*.yaml``) names axes from :data:`AXES`::

    effective_batch_size: 32          # optional: accumulation = 32 / (batch * workers)
    params:
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      quantization_bits: {type: categorical, choices: [4, 8, 16]}
      lora_r: {type: int, low: 4, high: 64, log: true}

Coupled axes are sampled define-by-run so Optuna sees them as they are: 4/8 bits imply LoRA
(``finetune`` is then not sampled), and without LoRA the LoRA axes are not sampled at all.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from qa_ray.config.files import did_you_mean
from qa_ray.config.trial import Block, TrialConfig

__all__ = [
    "AXES",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "apply_params",
    "suggest",
    "to_distributions",
    "valid_axes",
]

# axis name -> the trial-config field it sets (lora_alpha_multiple sets alpha = multiple * r)
AXES: dict[str, str] = {
    "learning_rate": "train.learning_rate",
    "warmup_ratio": "train.warmup_ratio",
    "weight_decay": "train.weight_decay",
    "per_device_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "finetune": "model.finetune",
    "dropout": "model.dropout",
    "quantization_bits": "model.quantization_bits",
    "lora_r": "model.lora.r",
    "lora_alpha_multiple": "model.lora.alpha",
    "lora_dropout": "model.lora.dropout",
    "model": "model.name_or_path",
    "keep_layers": "model.keep_layers",
    "prune_heads": "model.prune.heads",
    "prune_ffn": "model.prune.ffn",
    "lstm_hidden_size": "model.lstm.hidden_size",
    "lstm_embedding_dim": "model.lstm.embedding_dim",
    "lstm_num_layers": "model.lstm.num_layers",
    "distill_alpha": "train.distill.alpha",
    "distill_temperature": "train.distill.temperature",
}
LORA_AXES = ("lora_r", "lora_alpha_multiple", "lora_dropout")  # sampled in LoRA trials only
KBIT = (4, 8)  # quantization bits that imply LoRA


class FloatParam(Block):
    """A float axis: ``{type: float, low, high, log, step}``."""

    type: Literal["float"] = Field(description="the kind of axis")
    low: float = Field(description="the smallest value (> 0 with log)")
    high: float = Field(description="the largest value")
    log: bool = Field(False, description="sample on a log scale (not with step)")
    step: float | None = Field(None, gt=0, description="sample on a grid of this spacing")

    @model_validator(mode="after")
    def _optuna_invariants(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step, default_step=None)
        return self


class IntParam(Block):
    """An integer axis: ``{type: int, low, high, log, step}``."""

    type: Literal["int"] = Field(description="the kind of axis")
    low: int = Field(description="the smallest value (> 0 with log)")
    high: int = Field(description="the largest value")
    log: bool = Field(False, description="sample on a log scale (step must stay 1)")
    step: int = Field(1, gt=0, description="sample every step-th integer")

    @model_validator(mode="after")
    def _optuna_invariants(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step, default_step=1)
        return self


class CategoricalParam(Block):
    """A categorical axis: ``{type: categorical, choices: [...]}``."""

    type: Literal["categorical"] = Field(description="the kind of axis")
    choices: list[int | float | str | bool] = Field(
        min_length=1, description="the values, distinct"
    )

    @model_validator(mode="after")
    def _unique(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"`choices` must be unique, but got {self.choices}")
        return self


def _check_range(low, high, log, step, default_step) -> None:
    if low > high:
        raise ValueError(f"`low <= high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ValueError(f"`low > 0` must hold for `log: true`, but got (low={low}, high={high})")
    if log and step is not None and step != default_step:
        raise ValueError(
            f"`step` is not supported with `log: true` (they are exclusive), but got "
            f"(log={log}, step={step})"
        )


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _known_axis(name: str) -> str:
    if name not in AXES:
        raise ValueError(
            f"unknown axis, expected one of {sorted(AXES)}, but got {name!r}"
            + did_you_mean(name, AXES)
        )
    return name


# An axis name, checked apart from its entry: a misspelt axis and a bad entry are both named.
AxisName = Annotated[str, AfterValidator(_known_axis)]


class SearchSpace(Block):
    """The axes to search and an optional effective-batch constraint."""

    params: dict[AxisName, Param] = Field(
        min_length=1, description="axis name (one of AXES) -> its float, int or categorical entry"
    )
    effective_batch_size: int | None = Field(
        None,
        gt=0,
        description="derive gradient_accumulation_steps = this / (batch x workers) from the "
        "sampled per_device_batch_size (a categorical axis)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _coherent_axes(cls, data: Any, handler: Any) -> SearchSpace:
        # Wrapped, so the entries that are valid are checked together even when another is
        # not: every error of a space is reported at once.
        try:
            space = handler(data)
        except ValidationError as exc:
            raw = data if isinstance(data, dict) else {}
            size = raw.get("effective_batch_size")
            found = _incoherent(
                _entries(raw.get("params")), size if isinstance(size, int) else None
            )
            if not found:
                raise
            more = [
                InitErrorDetails(
                    type=PydanticCustomError("value_error", "{message}", {"message": message}),
                    loc=(),
                    input=data,
                )
                for message in found
            ]
            raise ValidationError.from_exception_data(exc.title, [*exc.errors(), *more]) from None
        found = _incoherent(space.params, space.effective_batch_size)
        if found:
            raise ValueError("; ".join(found))
        return space


_CHOICES = {"quantization_bits": {4, 8, 16, 32}, "finetune": {"full", "lora"}}


def _incoherent(params: dict[str, Param], effective_batch_size: int | None) -> list[str]:
    """The rules between a space's axes: fixed choices, the effective batch size."""
    errors = [e for name in _CHOICES if (e := _choice_error(params.get(name), name))]
    if effective_batch_size is not None:
        if "gradient_accumulation_steps" in params:
            errors.append(
                "`effective_batch_size` derives `gradient_accumulation_steps`, so the two "
                "are exclusive, but got both"
            )
        bs = params.get("per_device_batch_size")
        if not isinstance(bs, CategoricalParam):
            errors.append(
                "`effective_batch_size` needs `per_device_batch_size` as a categorical "
                f"axis (so every choice can divide it), but got {type(bs).__name__}"
            )
        elif any(not isinstance(c, int) or effective_batch_size % c for c in bs.choices):
            errors.append(
                f"every `per_device_batch_size` choice must divide `effective_batch_size`"
                f", but got (effective_batch_size={effective_batch_size}, "
                f"choices={bs.choices})"
            )
    return errors


def _choice_error(p: Param | None, name: str) -> str:
    allowed = _CHOICES[name]
    if p is None:
        return ""
    if not isinstance(p, CategoricalParam):
        return f"`params.{name}` must be categorical, but got type {p.type!r}"
    if not set(p.choices) <= allowed:
        return (
            f"`params.{name}.choices` must be a subset of {sorted(allowed, key=str)}, "
            f"but got {p.choices}"
        )
    return ""


def _entries(params: Any) -> dict[str, Param]:
    """The entries of a space's raw ``params`` that are valid on their own."""
    adapter: TypeAdapter = TypeAdapter(Param)
    out = {}
    known = {k: v for k, v in params.items() if k in AXES} if isinstance(params, dict) else {}
    for name, entry in known.items():
        # an entry that is not valid is named by the space's own validation
        with contextlib.suppress(ValidationError):
            out[name] = adapter.validate_python(entry)
    return out


def valid_axes(params: Any) -> dict[str, Param]:
    """The axes of a space's raw ``params`` that are valid on their own (in a space that is
    not): the trials they sample are still checked (:func:`axis_errors`)."""
    entries = _entries(params)
    return {k: p for k, p in entries.items() if k not in _CHOICES or not _choice_error(p, k)}


def to_distributions(space: SearchSpace) -> dict[str, Any]:
    """The Optuna distribution of every axis (the one place entries become distributions)."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for name, p in space.params.items():
        if isinstance(p, FloatParam):
            out[name] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = od.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[name] = od.CategoricalDistribution(p.choices)
    return out


def _suggest_one(trial, name: str, dist) -> Any:
    import optuna.distributions as od

    if isinstance(dist, od.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, od.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, list(dist.choices))


def suggest(trial, space: SearchSpace, base: TrialConfig) -> dict[str, Any]:
    """Samples one configuration define-by-run; returns the derived constants.

    Args:
        trial: an ``optuna.Trial`` (or Ray's wrapper of one).
        space: the validated search space.
        base: the sweep's trial blocks, for values of axes that are not searched.

    Returns:
        Derived values that were not sampled (``finetune`` forced to LoRA by 4/8 bits, and
        ``gradient_accumulation_steps`` from ``effective_batch_size``).
    """
    dists = to_distributions(space)
    sampled: dict[str, Any] = {}
    constants: dict[str, Any] = {}

    def take(name: str) -> Any:
        sampled[name] = _suggest_one(trial, name, dists[name])
        return sampled[name]

    bits = (
        take("quantization_bits") if "quantization_bits" in dists else base.model.quantization_bits
    )
    if bits in KBIT:
        finetune = constants["finetune"] = "lora"
    elif "finetune" in dists:
        finetune = take("finetune")
    else:
        finetune = base.model.finetune
    for name in dists:
        if name in sampled or name == "finetune":
            continue
        if name in LORA_AXES and finetune != "lora":
            continue  # without LoRA these axes do not exist for this trial
        take(name)
    if space.effective_batch_size is not None:
        bs = sampled.get("per_device_batch_size", base.train.per_device_batch_size)
        per_step = bs * base.resources.num_workers
        constants["gradient_accumulation_steps"] = max(1, space.effective_batch_size // per_step)
    return constants


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Sets sampled axis values into a trial config dict (a copy); unknown keys are ignored."""
    out = copy.deepcopy(base)
    r = params.get("lora_r", _get(out, "model.lora.r", 8))
    for name, value in params.items():
        if name not in AXES:
            continue
        if name == "lora_alpha_multiple":
            value = float(value) * r
        _set(out, AXES[name], value)
    return out


# Axes every trial record carries, sampled or not, so plots and tables can colour and label
# each trial by them (e.g. quantization bits when the space holds bits fixed).
RECORDED_AXES = (
    "model",
    "finetune",
    "quantization_bits",
    "learning_rate",
    "warmup_ratio",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "lora_r",
    "lora_alpha_multiple",
)


def axis_values(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The resolved value of every recorded axis of a trial: ``config`` with ``params`` applied.

    LoRA axes are left out of a trial that is not LoRA; unset values (e.g. a warmup given in
    steps) are left out.
    """
    resolved = apply_params(config, params)
    lora = _get(resolved, "model.finetune", "full") == "lora"
    out: dict[str, Any] = {}
    for name in RECORDED_AXES:
        if name in LORA_AXES and not lora:
            continue
        if name == "lora_alpha_multiple":
            alpha, r = _get(resolved, "model.lora.alpha", None), _get(resolved, "model.lora.r", 8)
            value = alpha / r if alpha is not None else 2
        else:
            value = _get(resolved, AXES[name], None)
        if value is not None:
            out[name] = value
    return out | {k: v for k, v in params.items() if k in AXES}


def _get(d: dict, path: str, default: Any) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _set(d: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        if d.get(part) is None:  # an optional block left out (e.g. model.prune): its defaults
            d[part] = {}
        d = d[part]
    d[leaf] = value


def grid_size(space: SearchSpace) -> float:
    """Number of distinct configurations (``inf`` with any continuous axis); for dry runs."""
    n = 1.0
    for p in space.params.values():
        if isinstance(p, CategoricalParam):
            n *= len(p.choices)
        elif isinstance(p, IntParam) and not p.log:
            n *= (p.high - p.low) // p.step + 1
        else:
            return math.inf
    return n
