"""Static structured pruning by measured importance, before fine-tuning: attention heads and
feed-forward units (``model.prune``). Whole layers are dropped by ``model.keep_layers``
(:func:`qa_ray.models.keep_layers`).

Importance is Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"): the gradient
of the loss with respect to a mask on each head's output, summed over a few training batches
in absolute value. The mask is never built: a head's output enters the layer only through its
columns of the attention's output projection ``W``, so ``dL/d(mask_h)`` equals
``sum(W * dL/dW)`` over those columns. A feed-forward unit's importance is the same sum over
its column of the feed-forward output projection. Head scores are normalized per layer (l2)
and the least important heads are removed across all layers, at least one kept per layer
(Michel et al., section 4.2); feed-forward units are removed per layer, the same number in
each. Layers are sliced with transformers' ``prune_linear_layer`` (transformers 5 dropped its
``prune_heads``).

The kept heads and units are a plan stored in the model config (``qa_ray_pruning``), so a
checkpoint's ``config.json`` says how to rebuild the shapes its weights have
(:func:`apply_plan`, used by :func:`qa_ray.models.build_model` and on resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PLAN_FILE",
    "PLAN_KEY",
    "PRUNABLE_MODEL_TYPES",
    "apply_plan",
    "importance",
    "plan",
    "prune",
    "stored_plan",
]

PLAN_KEY = "qa_ray_pruning"  # in the model config (and its config.json)
PLAN_FILE = "pruning.json"  # in a checkpoint, LoRA ones included
# Encoders whose self-attention sizes its heads from the projections (``view(..., -1,
# head_size)``), so a layer may keep fewer heads than the config names.
PRUNABLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


@dataclass(frozen=True)
class _Layer:
    attention: torch.nn.Module  # holds query, key, value
    attention_output: torch.nn.Module  # holds dense: heads x head_size columns
    intermediate: torch.nn.Module  # holds dense: one row per feed-forward unit
    output: torch.nn.Module  # holds dense: one column per feed-forward unit
    head_size: int

    @property
    def heads(self) -> int:
        return self.attention.query.out_features // self.head_size

    @property
    def units(self) -> int:
        return self.intermediate.dense.out_features


def _layers(model: torch.nn.Module) -> list[_Layer]:
    config = model.config
    if config.model_type not in PRUNABLE_MODEL_TYPES:
        raise ValueError(
            f"`model.prune`: pruning heads and feed-forward units supports model types "
            f"{', '.join(PRUNABLE_MODEL_TYPES)}, but got {config.model_type!r} "
            "(`model.keep_layers` drops whole layers of any model)"
        )
    head_size = config.hidden_size // config.num_attention_heads
    return [
        _Layer(m.attention.self, m.attention.output, m.intermediate, m.output, head_size)
        for name, m in model.named_modules()
        if name.split(".")[-2:-1] == ["layer"] and hasattr(m, "intermediate")
    ]


def importance(
    model: torch.nn.Module, losses: Iterable[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Head and feed-forward unit importance, per layer, from the losses of a few batches.

    Args:
        model: an unwrapped model of a type in :data:`PRUNABLE_MODEL_TYPES` whose output
            projections take gradients.
        losses: the training loss of each batch, computed with ``model`` (each is
            back-propagated here).

    Returns:
        For each layer, a tensor of head scores and one of unit scores, summed over the
        batches and, in a distributed run, over the ranks (every rank prunes the same).
    """
    layers = _layers(model)
    heads = [torch.zeros(x.heads, device=x.attention_output.dense.weight.device) for x in layers]
    units = [torch.zeros(x.units, device=x.output.dense.weight.device) for x in layers]
    # Gradients for the two projections only: the pass holds no more gradient memory than
    # they take, so it does not raise the trial's peak (a LoRA trial never holds full grads).
    measured = {
        id(w) for x in layers for w in (x.attention_output.dense.weight, x.output.dense.weight)
    }
    trained = {p: p.requires_grad for p in model.parameters()}
    for p in trained:
        p.requires_grad_(id(p) in measured)
    try:
        for loss in losses:
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for i, x in enumerate(layers):
                    w = x.attention_output.dense.weight
                    per_column = (w * w.grad).float().sum(0)
                    heads[i] += per_column.view(x.heads, x.head_size).sum(1).abs()
                    w = x.output.dense.weight
                    units[i] += (w * w.grad).float().sum(0).abs()
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in trained.items():
            p.requires_grad_(flag)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in (*heads, *units):  # on the model's device: NCCL reduces CUDA tensors only
            torch.distributed.all_reduce(t)
    return heads, units


def plan(
    heads: list[torch.Tensor], units: list[torch.Tensor], prune_heads: float, prune_ffn: float
) -> dict[str, list[list[int]]]:
    """What to keep, from importance scores: the ``round(prune_heads * all heads)`` least
    important heads (scores l2-normalized per layer, at least one head kept per layer) and in
    every layer its ``round(prune_ffn * units)`` least important feed-forward units go.

    Returns:
        ``{"heads": [kept head indices per layer], "ffn": [kept unit indices per layer]}``.
    """
    normalized = [h / h.norm().clamp_min(1e-12) for h in heads]
    ranked = sorted(
        (float(s), layer, head) for layer, h in enumerate(normalized) for head, s in enumerate(h)
    )
    target = round(prune_heads * sum(len(h) for h in heads))
    left = [len(h) for h in heads]
    dropped: set[tuple[int, int]] = set()
    for _, layer, head in ranked:
        if len(dropped) == target:
            break
        if left[layer] > 1:
            dropped.add((layer, head))
            left[layer] -= 1
    kept_units = []
    for u in units:
        n = len(u) - round(prune_ffn * len(u))
        kept_units.append(sorted(torch.topk(u, max(n, 1)).indices.tolist()))
    return {
        "heads": [
            [i for i in range(len(h)) if (layer, i) not in dropped] for layer, h in enumerate(heads)
        ],
        "ffn": kept_units,
    }


def stored_plan(name_or_path: str) -> dict[str, list[list[int]]] | None:
    """The plan a pruned model folder records: a qa-ray checkpoint's :data:`PLAN_FILE`, or
    the ``config.json`` of a model saved after pruning; None for any other model (a hub id,
    a folder qa-ray did not prune)."""
    folder = Path(name_or_path).expanduser()
    if (folder / PLAN_FILE).is_file():
        return json.loads((folder / PLAN_FILE).read_text())
    if not (folder / "config.json").is_file():
        return None
    return json.loads((folder / "config.json").read_text()).get(PLAN_KEY)


def apply_plan(model: torch.nn.Module, kept: dict[str, list[list[int]]]) -> None:
    """Slices the model to the heads and units in ``kept`` (a :func:`plan`) and records the
    plan in ``model.config`` so a saved checkpoint can be rebuilt."""
    from transformers.pytorch_utils import prune_linear_layer

    layers = _layers(model)
    if len(kept["heads"]) != len(layers) or len(kept["ffn"]) != len(layers):
        raise ValueError(
            f"pruning plan for {len(kept['heads'])} layers, but the model has {len(layers)}"
        )
    for x, heads, units in zip(layers, kept["heads"], kept["ffn"], strict=True):
        rows = torch.tensor(
            [h * x.head_size + j for h in heads for j in range(x.head_size)], dtype=torch.long
        )
        att = x.attention
        for name in ("query", "key", "value"):
            setattr(att, name, prune_linear_layer(getattr(att, name), rows, dim=0))
        x.attention_output.dense = prune_linear_layer(x.attention_output.dense, rows, dim=1)
        att.num_attention_heads = len(heads)
        att.all_head_size = len(heads) * x.head_size
        index = torch.tensor(units, dtype=torch.long)
        x.intermediate.dense = prune_linear_layer(x.intermediate.dense, index, dim=0)
        x.output.dense = prune_linear_layer(x.output.dense, index, dim=1)
    setattr(model.config, PLAN_KEY, {"heads": kept["heads"], "ffn": kept["ffn"]})


def prune(
    model: torch.nn.Module,
    prune_heads: float,
    prune_ffn: float,
    losses: Callable[[torch.nn.Module], Iterable[torch.Tensor]],
) -> dict[str, Any]:
    """Measures importance on ``losses(model)``, prunes, and returns a summary to log: heads
    and units before and after, parameters before and after."""
    before = sum(p.numel() for p in model.parameters())
    heads, units = importance(model, losses(model))
    kept = plan(heads, units, prune_heads, prune_ffn)
    apply_plan(model, kept)
    after = sum(p.numel() for p in model.parameters())
    return {
        "heads": (sum(len(h) for h in heads), sum(len(h) for h in kept["heads"])),
        "ffn_units": (sum(len(u) for u in units), sum(len(u) for u in kept["ffn"])),
        "params": (before, after),
        "removed_fraction": 1 - after / before,
    }
