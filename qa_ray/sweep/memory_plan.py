"""``qa-ray plan``: the predicted peak memory of a sweep's space before anything runs.

Every corner of the space's memory knobs (each choice of a categorical axis: bits, fine-tune
method, batch, model, LSTM sizes; each end of a range: LoRA rank; the smallest and largest
layers kept and pruning) and a seeded sample of configurations as the searcher would draw them,
each predicted by :class:`qa_ray.search.memory.MemoryModel` on the device the sweep's trials
run on (CUDA when they ask for a GPU, else the CPU's peak RSS); for every device size, which
fit (beyond the prediction's uncertainty, within it, or over), how many trials fit on one
device, and the same against the sweep's memory budgets. The knobs the space does not vary
(sequence, checkpointing, eval batch, precision) head the output. A model the account does not
cover is named on one line and left out; a sweep of such models alone is an error saying so.
Hub models are read from the Hugging Face cache (``HF_HUB_OFFLINE=1`` works). ``--markdown``
prints one row per model, method and bits: the table docs/memory-table.md is made of.

    qa-ray plan sweeps/bert_base_squad_v2_full_lora_f1_memory.yaml model.name_or_path=models/bert
    qa-ray plan SWEEP.yaml --gpu-memory 24000,48000,80000 --samples 64
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

from qa_ray import metrics as m
from qa_ray.config.trial import parse_constraints
from qa_ray.search.memory import MemoryModel, NotAccounted, Prediction, memory_key
from qa_ray.search.space import AXES, CategoricalParam, apply_params, suggest
from qa_ray.sweep.config import SweepConfig

__all__ = ["MemoryPlan", "format_markdown", "format_plan", "plan_device", "plan_memory"]

MEMORY_AXES = (
    "model",
    "finetune",
    "quantization_bits",
    "per_device_batch_size",
    "lora_r",
    "keep_layers",
    "prune_heads",
    "prune_ffn",
    "lstm_hidden_size",
    "lstm_embedding_dim",
    "lstm_num_layers",
)
# Structural sizes listed at their two ends only (their memory is monotone in them); every
# other categorical memory axis is listed choice by choice.
_ENDS_ONLY = ("keep_layers", "prune_heads", "prune_ffn")
MAX_CORNERS = 512


@dataclass(frozen=True)
class PlannedConfig:
    kind: str  # "corner" | "sample"
    params: dict[str, Any]  # the memory-relevant axis values
    prediction: Prediction


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    configs: tuple[PlannedConfig, ...]
    gpu_memory_mb: tuple[float, ...]
    budgets: tuple[float, ...]  # the sweep's `peak_memory_mb <= X` bounds
    # Why some configurations were not predicted (a model the account does not cover), once
    # each, with how many configurations it left out.
    not_accounted: tuple[tuple[str, int], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()  # memory knobs the space does not vary


def _corner_values(name: str, p: Any) -> list[Any]:
    if isinstance(p, CategoricalParam):
        numbers = [c for c in p.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        if name in _ENDS_ONLY and len(numbers) == len(p.choices):
            return sorted({min(numbers), max(numbers)})
        return list(p.choices)
    return [p.low, p.high]


def _at(config: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def _resolved(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    if params.get("quantization_bits") in (4, 8):
        params["finetune"] = "lora"  # 4/8 bits imply LoRA, as the searcher samples them
    return apply_params(base, params)


def plan_device(cfg: SweepConfig) -> str:
    """Where the sweep's trials run, as the sweep's memory model counts them: ``"cuda"`` when
    a trial asks for a GPU (and the loop is not pinned to the CPU), else ``"cpu"``."""
    gpu = cfg.resources.gpus_per_worker > 0 and cfg.train.device != "cpu"
    return "cuda" if gpu else "cpu"


_FIXED = (
    ("model", "model.name_or_path"),
    ("sequence", "data.max_seq_length"),
    ("answer", "data.max_answer_length"),
    ("batch", "train.per_device_batch_size"),
    ("eval batch", "train.eval_batch_size"),
    ("precision", "train.precision"),
    ("checkpointing", "model.gradient_checkpointing"),
    ("bits", "model.quantization_bits"),
    ("method", "model.finetune"),
)


def plan_memory(
    cfg: SweepConfig,
    gpu_memory_mb: tuple[float, ...] = (24000.0, 48000.0, 80000.0),
    samples: int = 32,
    seed: int = 0,
    model: MemoryModel | None = None,
) -> MemoryPlan:
    """Predicts the corners and ``samples`` sampled configurations of ``cfg``'s space.

    Raises:
        ValueError: a model the prediction cannot read (see :func:`~.shapes.read_shape`).
        NotAccounted: no configuration's model is one the account covers.
    """
    import optuna

    model = model or MemoryModel(plan_device(cfg))
    trial_cfg = cfg.trial_config()
    base = trial_cfg.model_dump()
    space = cfg.space
    axes = {k: _corner_values(k, p) for k, p in space.params.items() if k in MEMORY_AXES}
    varied = {AXES[k] for k in space.params}
    fixed = tuple((label, _at(base, path)) for label, path in _FIXED if path not in varied)
    if base["model"]["architecture"] != "auto":  # qa-ray's own model, the path its tokenizer
        name = f"{base['model']['architecture']} ({base['model']['name_or_path']}'s tokenizer)"
        fixed = (("model", name), *fixed[1:]) if fixed[0][0] == "model" else fixed
    seen: set[tuple] = set()
    planned: list[PlannedConfig] = []
    skipped: dict[str, int] = {}  # why a configuration was not predicted -> how many

    def add(kind: str, params: dict[str, Any]) -> None:
        config = _resolved(base, params)
        key = memory_key(config)
        if key in seen:
            return
        seen.add(key)
        lora = config["model"]["finetune"] == "lora"
        shown = {
            k: _at(config, AXES[k]) for k in params if k in MEMORY_AXES and (lora or k != "lora_r")
        }
        try:
            prediction = model.predict(config)
        except NotAccounted as exc:
            skipped[str(exc)] = skipped.get(str(exc), 0) + 1
            return
        planned.append(PlannedConfig(kind, shown, prediction))

    for values in itertools.islice(itertools.product(*axes.values()), MAX_CORNERS):
        add("corner", dict(zip(axes, values, strict=True)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(samples):
        t = study.ask()
        constants = suggest(t, space, trial_cfg)
        add("sample", {**t.params, **constants})
    budgets = tuple(
        c.bound
        for c in parse_constraints(cfg.constraints, cfg.model.task)
        if c.metric == m.PEAK_MEMORY_MB and c.is_upper
    )
    if not planned:
        raise NotAccounted("; ".join(skipped))
    return MemoryPlan(
        model.device,
        tuple(planned),
        tuple(gpu_memory_mb),
        budgets,
        tuple(skipped.items()),
        fixed,
    )


def _fit_counts(plan: MemoryPlan, limit: float) -> str:
    verdicts = [c.prediction.fits(limit) for c in plan.configs]
    return (
        f"{verdicts.count(True)} fit, {verdicts.count(None)} uncertain, "
        f"{verdicts.count(False)} over"
    )


def _per_device(p: Prediction, size: float) -> int:
    """Trials of this prediction one device holds, each taking its peak + 2 sd (what a packed
    trial asks for, less the margin)."""
    return int(size // (p.peak_mb + 2 * p.sd_mb))


def _what(device: str) -> str:
    return "CUDA memory" if device == "cuda" else "peak RSS of a worker process, on CPU"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as text: one line per configuration, then one per device size and budget."""
    lines = [f"predicted peak memory ({plan.device}: {_what(plan.device)}; +- is 1 sd):"]
    if plan.fixed:
        lines.append("  fixed: " + ", ".join(f"{k} {v}" for k, v in plan.fixed))
    for c in sorted(plan.configs, key=lambda c: c.prediction.peak_mb):
        p = c.prediction
        axes = " ".join(f"{k}={v}" for k, v in sorted(c.params.items()))
        lines.append(f"  {p.peak_mb:8.0f} +- {p.sd_mb:5.0f} MB  {c.kind:6s} {axes}")
    device = "GPU" if plan.device == "cuda" else "RAM"
    unit = "GPU" if plan.device == "cuda" else "machine"
    for size in plan.gpu_memory_mb:
        per = [_per_device(c.prediction, size) for c in plan.configs]
        lines.append(
            f"{device} {size:.0f} MB: {_fit_counts(plan, size)}; trials per {unit}: "
            f"min {min(per)}, median {statistics.median(per):g}, max {max(per)}"
        )
    for bound in plan.budgets:
        lines.append(f"budget {m.PEAK_MEMORY_MB} <= {bound:g}: {_fit_counts(plan, bound)}")
    for reason, n in plan.not_accounted:
        lines.append(f"not predicted ({n} configuration{'s' if n > 1 else ''}): {reason}")
    return "\n".join(lines)


def _span(values: list[int] | list[float], fmt: str = "{:.0f}") -> str:
    lo, hi = min(values), max(values)
    return (
        fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"
    )


def format_markdown(plan: MemoryPlan, fixed: dict[str, Any] | None = None) -> str:
    """The plan's corners as a markdown table: a row per model, method and bits, the range of
    predicted peaks over the other knobs (batch, rank, ...), the largest + 2 sd, and how many
    such trials one device of each size holds (fewest-most), every figure a prediction."""
    fixed = {**dict(plan.fixed), **(fixed or {})}
    sizes = " | ".join(f"per {s / 1000:g} GB" for s in plan.gpu_memory_mb)
    lines = [
        f"| model | method | bits | corners | predicted peak MB | largest + 2 sd | {sizes} |",
        "| --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(plan.gpu_memory_mb),
    ]
    groups: dict[tuple, list[Prediction]] = {}
    for c in plan.configs:
        if c.kind != "corner":
            continue
        key = (
            str(c.params.get("model", fixed.get("model", ""))),
            c.params.get("finetune", fixed.get("method", "full")),
            c.params.get("quantization_bits", fixed.get("bits", 32)),
        )
        groups.setdefault(key, []).append(c.prediction)
    for (model, method, bits), preds in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][1], int(g[0][2]))
    ):
        top = max(preds, key=lambda p: p.peak_mb + 2 * p.sd_mb)
        per = " | ".join(_span([_per_device(p, s) for p in preds]) for s in plan.gpu_memory_mb)
        lines.append(
            f"| {model} | {method} | {bits} | {len(preds)} | "
            f"{_span([p.peak_mb for p in preds])} | {top.peak_mb + 2 * top.sd_mb:.0f} | {per} |"
        )
    for reason, n in plan.not_accounted:
        lines.append(f"\nNot predicted ({n} configurations): {reason}")
    return "\n".join(lines)
