"""``qa-ray plan``: the predicted peak memory of a sweep's space before anything runs.

The corners of the space's memory-relevant axes (batch, fine-tune method, bits, LoRA rank,
model, layers kept, pruning: each axis at its smallest and largest, every choice of a text
axis) and a seeded sample of configurations as the searcher would draw them, each predicted by
:class:`qa_ray.search.memory.MemoryModel`; for every device size, which fit (beyond the
prediction's uncertainty, within it, or over), how many trials fit on one GPU, and the same
against the sweep's memory budgets. A model the account does not cover (T5, Mamba, Bloom,
Falcon, the LSTM) is named on one line and left out; a sweep of such models alone is an error
saying so. Hub models are read from the Hugging Face cache (``HF_HUB_OFFLINE=1`` works).

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

__all__ = ["MemoryPlan", "format_plan", "plan_memory"]

MEMORY_AXES = (
    "model",
    "finetune",
    "quantization_bits",
    "per_device_batch_size",
    "lora_r",
    "keep_layers",
    "prune_heads",
    "prune_ffn",
)
MAX_CORNERS = 256


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


def _corner_values(p) -> list[Any]:
    if isinstance(p, CategoricalParam):
        numbers = [c for c in p.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        if len(numbers) == len(p.choices):
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


def plan_memory(
    cfg: SweepConfig,
    gpu_memory_mb: tuple[float, ...] = (24000.0, 48000.0, 80000.0),
    samples: int = 32,
    seed: int = 0,
    model: MemoryModel | None = None,
) -> MemoryPlan:
    """Predicts the corners and ``samples`` sampled configurations of ``cfg``'s space.

    Raises:
        ValueError: a model the prediction cannot read (see :func:`~.memory.read_shape`).
        NotAccounted: no configuration's model is one the account covers.
    """
    import optuna

    model = model or MemoryModel("cuda")
    trial_cfg = cfg.trial_config()
    base = trial_cfg.model_dump()
    space = cfg.space
    axes = {k: _corner_values(p) for k, p in space.params.items() if k in MEMORY_AXES}
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
        model.device, tuple(planned), tuple(gpu_memory_mb), budgets, tuple(skipped.items())
    )


def _fit_counts(plan: MemoryPlan, limit: float) -> str:
    verdicts = [c.prediction.fits(limit) for c in plan.configs]
    return (
        f"{verdicts.count(True)} fit, {verdicts.count(None)} uncertain, "
        f"{verdicts.count(False)} over"
    )


def format_plan(plan: MemoryPlan) -> str:
    """The plan as text: one line per configuration, then one per device size and budget."""
    lines = [f"predicted peak memory ({plan.device}; +- is 1 sd):"]
    for c in sorted(plan.configs, key=lambda c: c.prediction.peak_mb):
        p = c.prediction
        axes = " ".join(f"{k}={v}" for k, v in sorted(c.params.items()))
        lines.append(f"  {p.peak_mb:8.0f} +- {p.sd_mb:5.0f} MB  {c.kind:6s} {axes}")
    for size in plan.gpu_memory_mb:
        per_gpu = [int(size // (c.prediction.peak_mb + 2 * c.prediction.sd_mb))
                   for c in plan.configs]  # fmt: skip
        lines.append(
            f"GPU {size:.0f} MB: {_fit_counts(plan, size)}; trials per GPU: min {min(per_gpu)},"
            f" median {statistics.median(per_gpu):g}, max {max(per_gpu)}"
        )
    for bound in plan.budgets:
        lines.append(f"budget {m.PEAK_MEMORY_MB} <= {bound:g}: {_fit_counts(plan, bound)}")
    for reason, n in plan.not_accounted:
        lines.append(f"not predicted ({n} configuration{'s' if n > 1 else ''}): {reason}")
    return "\n".join(lines)
