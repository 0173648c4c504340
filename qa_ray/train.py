"""The per-worker training loop: build -> train -> evaluate -> report.

``train_loop_per_worker(config)`` is what every Ray Train worker of a trial runs (``config`` is a
:class:`~qa_ray.config.TrialConfig` as a dict). Called in-process without Ray (``qa-ray train``)
it runs the same code as a single worker and writes its results to ``output_dir``.

The few Ray touch points are marked ``# [ray N]``:
  1. device and rank from the Ray Train context
  2. ``prepare_model`` (DDP) and ``prepare_data_loader`` (DistributedSampler)
  3. ``ray.train.report`` with metrics, and a checkpoint from rank 0
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from qa_ray import metrics as m
from qa_ray.config import TrialConfig
from qa_ray.data import load_train_eval
from qa_ray.models import build_model, build_tokenizer, model_size

__all__ = ["LocalSession", "task_module", "train_loop_per_worker"]

logger = logging.getLogger(__name__)


def task_module(task: str):
    """The task-family module for ``model.task`` (``qa_ray.tasks.<task>``)."""
    return importlib.import_module(f"qa_ray.tasks.{task}")


class LocalSession:
    """Stands in for Ray Train when the loop runs in-process: one worker, files in ``output_dir``.

    Keeps the newest ``keep`` checkpoints under ``output_dir/checkpoints`` and the history of
    every report, and prints one progress line per report.
    """

    def __init__(self, output_dir: str, keep: int, device: torch.device):
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.device = device
        self.world_rank, self.world_size = 0, 1
        self.history: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        print(_progress_line(metrics), flush=True)
        if checkpoint_dir is None:
            return
        target = self.output_dir / "checkpoints" / f"step_{metrics[m.STEP]:06d}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir, target)
        self.checkpoints.append(target)
        while len(self.checkpoints) > self.keep:
            shutil.rmtree(self.checkpoints.pop(0), ignore_errors=True)


class _RaySession:
    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()  # [ray 1]
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        metrics = dict(
            metrics,
            worker_node_ip=ray.util.get_node_ip_address(),
            worker_node_id=ray.get_runtime_context().get_node_id(),
        )
        ray.train.report(metrics, checkpoint=checkpoint)  # [ray 3]


def _in_ray_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


_PROGRESS_EVAL = (
    ("EM", m.EVAL_EXACT, ".2f"),
    ("F1", m.EVAL_F1, ".2f"),
    ("eval loss", m.EVAL_LOSS, ".4f"),
    ("ppl", m.EVAL_PERPLEXITY, ".2f"),
)


def _progress_line(r: dict[str, Any]) -> str:
    evals = " ".join(f"{label} {r[k]:{fmt}}" for label, k, fmt in _PROGRESS_EVAL if k in r)
    return (
        f"step {r[m.STEP]} epoch {r[m.EPOCH]:.2f} | loss {r[m.TRAIN_LOSS]:.4f} | "
        f"lr {r[m.LEARNING_RATE]:.2e} | {evals} | "
        f"peak {r[m.PEAK_MEMORY_MB]:.0f} MB | {r[m.TRAIN_SAMPLES_PER_SECOND]:.1f} samples/s"
    )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _max_over_workers(value: float, world_size: int) -> float:
    if world_size == 1 or not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _autocast_factory(cfg: TrialConfig, device: torch.device):
    if device.type != "cuda" or cfg.train.precision == "fp32":
        return contextlib.nullcontext, None
    if cfg.train.precision == "fp16":
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    if cfg.train.precision == "bf16" or torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


def _resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("`train.device` is 'cuda' but no CUDA device is visible")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _optimizer(model, cfg: TrialConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.train.learning_rate,
    )


def _save_checkpoint(model, tokenizer, cfg: TrialConfig, extra: dict[str, Any]) -> str:
    path = tempfile.mkdtemp(prefix="qa-ray-ckpt-")
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.save_pretrained(path)  # peft models save the adapter (and QA head) only
    tokenizer.save_pretrained(path)
    Path(path, "trial_config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    for name, payload in extra.items():
        Path(path, name).write_text(json.dumps(payload, indent=2))
    return path


def train_loop_per_worker(config: dict[str, Any], session: LocalSession | None = None) -> dict:
    """Fine-tunes and evaluates one configuration; reports metrics at every evaluation.

    Args:
        config: a :class:`~qa_ray.config.TrialConfig` as a dict (validated here).
        session: the in-process stand-in for Ray Train; ``None`` inside a Ray Train worker, or
            to get a :class:`LocalSession` writing to ``output_dir``.

    Returns:
        The metrics of the final report.
    """
    cfg = TrialConfig.model_validate(config)
    if session is None:
        session = (
            _RaySession()
            if _in_ray_worker()
            else LocalSession(cfg.output_dir, cfg.train.checkpoints_to_keep, _resolve_device(cfg))
        )
    device = session.device
    rank0 = session.world_rank == 0
    task = task_module(cfg.model.task)
    task_loss = hasattr(task, "loss")
    torch.manual_seed(cfg.train.seed)
    autocast, scaler = _autocast_factory(cfg, device)
    if rank0:
        logger.info(
            "device=%s%s",
            device,
            ": no autocast, peak_memory_mb is the worker's peak RSS"
            if device.type == "cpu"
            else f": autocast={cfg.train.precision}, peak_memory_mb is CUDA max allocated",
        )

    # ---- build: data and model -------------------------------------------------------------
    tokenizer = build_tokenizer(cfg.model)
    # SQuAD questions, or the task's own records (instruction: Alpaca).
    train_examples, eval_examples = getattr(task, "load_train_eval", load_train_eval)(cfg.data)
    train_feats = task.train_features(train_examples, tokenizer, cfg.data)
    eval_feats = task.eval_features(eval_examples, tokenizer, cfg.data) if rank0 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model = build_model(
        cfg.model, device, getattr(importlib.import_module("transformers"), task.AUTO_CLASS)
    )
    size = model_size(model)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = torch.utils.data.DataLoader(
        train_feats.with_format("torch"),
        batch_size=cfg.train.per_device_batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=task.collator(tokenizer),
        drop_last=False,
    )
    if isinstance(session, _RaySession):
        import ray.train.torch

        kbit = cfg.model.quantization_bits in (4, 8)
        model = ray.train.torch.prepare_model(model, move_to_device=not kbit)  # [ray 2]
        loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)  # [ray 2]
    model.train()
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.train.gradient_accumulation_steps))
    total_steps = cfg.train.max_steps or max(1, math.ceil(steps_per_epoch * cfg.train.num_epochs))
    # The schedule's horizon is mutable: a time-budgeted run re-plans it once the step time is
    # known, so its learning rate still warms up and decays over the steps it will really do.
    horizon = {"total": total_steps}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg=cfg.train, horizon=horizon)
    )
    warmup = _warmup_steps(cfg.train, total_steps)
    if rank0:
        logger.info(
            "train: %d examples -> %d sequences, %d steps (%d per epoch, warmup %d); eval: %d "
            "examples; params %d (trainable %d), weights %.1f MB",
            len(train_examples),
            len(train_feats),
            total_steps,
            steps_per_epoch,
            warmup,
            len(eval_examples),
            size.total_params,
            size.trainable_params,
            size.footprint_mb,
        )

    if cfg.train.eval_on_start:  # the baseline: step 0, before any update
        _evaluate_and_report(
            session, model, tokenizer, cfg, task, eval_examples, eval_feats, autocast, size,
            0, 0.0, float("nan"), scheduler.get_last_lr()[0], 0.0, 0.0, final=False,
            checkpoint=False,
        )  # fmt: skip

    # ---- loop --------------------------------------------------------------------------------
    step, micro, epoch = 0, 0, 0
    loss_sum, loss_n = 0.0, 0
    samples = 0
    train_seconds = 0.0
    last: dict[str, Any] = {}
    t_start = t_budget = time.perf_counter()
    done = False
    while not done:
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                # A task may compute its loss itself (generative: logits at answer positions only).
                loss = task.loss(model, batch) if task_loss else model(**batch).loss
                loss = loss / cfg.train.gradient_accumulation_steps
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.item() * cfg.train.gradient_accumulation_steps
            loss_n += 1
            samples += batch["input_ids"].shape[0]
            micro += 1
            if micro % cfg.train.gradient_accumulation_steps:
                continue
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm
                )
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if cfg.train.max_train_seconds and not cfg.train.max_steps and step >= _REPLAN_AT:
                # Re-plan from the running step time (the first steps are slower), so the
                # schedule ends where the budget does.
                per_step = (time.perf_counter() - t_budget) / step
                horizon["total"] = max(
                    step + 1, min(total_steps, int(cfg.train.max_train_seconds / per_step))
                )
                if rank0 and step == _REPLAN_AT:
                    logger.info(
                        "time budget %.0f s at %.2f s/step: schedule over about %d steps",
                        cfg.train.max_train_seconds,
                        per_step,
                        horizon["total"],
                    )
            out_of_time = _agree(
                cfg.train.max_train_seconds is not None
                and time.perf_counter() - t_budget >= cfg.train.max_train_seconds,
                session.world_size,
            )
            done = step >= total_steps or out_of_time
            if done or (cfg.train.eval_steps and step % cfg.train.eval_steps == 0):
                train_seconds += time.perf_counter() - t_start
                last = _evaluate_and_report(
                    session,
                    model,
                    tokenizer,
                    cfg,
                    task,
                    eval_examples,
                    eval_feats,
                    autocast,
                    size,
                    step,
                    step / steps_per_epoch,
                    loss_sum / max(1, loss_n),
                    scheduler.get_last_lr()[0],
                    samples * session.world_size / train_seconds,
                    train_seconds,
                    final=done,
                )
                loss_sum, loss_n = 0.0, 0
                t_start = time.perf_counter()
            if done:
                break
        epoch += 1
    return last


_REPLAN_AT = 3


def _warmup_steps(train_cfg, total: int) -> int:
    if train_cfg.warmup_steps is not None:
        return train_cfg.warmup_steps
    return round((train_cfg.warmup_ratio or 0.0) * total)


def lr_factor(step: int, cfg, horizon: dict[str, int]) -> float:
    """Linear warmup, then linear/cosine decay to 0 (or constant) over ``horizon["total"]``."""
    total = horizon["total"]
    warmup = _warmup_steps(cfg, total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.lr_scheduler == "constant_with_warmup":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def _agree(flag: bool, world_size: int) -> bool:
    """Rank 0's decision for every worker (so all stop at the same step)."""
    if world_size == 1 or not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=0)
    return bool(t.item())


def _evaluate_and_report(
    session,
    model,
    tokenizer,
    cfg,
    task,
    eval_examples,
    eval_feats,
    autocast,
    size,
    step,
    epoch,
    train_loss,
    lr,
    samples_per_second,
    train_seconds,
    final,
    checkpoint: bool = True,
) -> dict[str, Any]:
    unwrapped = model.module if hasattr(model, "module") else model
    result: dict[str, Any] = {}
    ckpt = None
    if session.world_rank == 0:
        out = task.evaluate(
            unwrapped,
            eval_examples,
            eval_feats,
            tokenizer,
            cfg.data,
            session.device,
            cfg.train.eval_batch_size,
            autocast,
        )
        result = {f"eval_{k}": float(v) for k, v in out.scores.items() if not k.endswith("total")}
        result.update(
            {
                m.EVAL_LATENCY_MS: out.latency_ms_per_example,
                "eval_questions": len(eval_examples),
            }
        )
        if hasattr(task, "QUALITATIVE_QUESTIONS"):  # instruction: answers, not a metric
            result[m.QUALITATIVE] = [
                {"question": q, "answer": out.predictions[q]} for q in task.QUALITATIVE_QUESTIONS
            ]
    peak = _max_over_workers(_peak_memory_mb(session.device), session.world_size)
    result.update(
        {
            m.TRAIN_LOSS: train_loss,
            m.LEARNING_RATE: lr,
            m.STEP: step,
            m.EPOCH: epoch,
            m.PEAK_MEMORY_MB: peak,
            m.MODEL_FOOTPRINT_MB: size.footprint_mb,
            m.TRAINABLE_PARAMS: size.trainable_params,
            m.TOTAL_PARAMS: size.total_params,
            m.TRAIN_SAMPLES_PER_SECOND: samples_per_second,
            m.TRAIN_SECONDS: train_seconds,
        }
    )
    if session.world_rank == 0:
        extra = {"metrics.json": result, "predictions.json": out.predictions}
        if cfg.train.save_checkpoints and checkpoint:
            ckpt = _save_checkpoint(model, tokenizer, cfg, extra)
        if final and isinstance(session, LocalSession):
            os.makedirs(cfg.output_dir, exist_ok=True)
            for name, payload in extra.items():
                Path(cfg.output_dir, name).write_text(json.dumps(payload, indent=2))
    try:
        session.report(result, ckpt)
    finally:
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)
    return result
