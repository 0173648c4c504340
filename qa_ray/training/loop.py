"""The per-worker training loop: ``setup()`` builds a trial, ``train()`` runs it.

``train_loop_per_worker(config)`` is what every Ray Train worker of a trial runs (``config`` is a
:class:`~qa_ray.config.trial.TrialConfig` as a dict). Called in-process without Ray (``qa-ray
train``) it runs the same code as a single worker and writes its results to ``output_dir``.

Read it as a recipe: :func:`setup` builds the trial's parts (data, model, optimizer, schedule,
precision) into one :class:`~.trial.Trial` and restores a checkpoint if there is one;
:func:`train` is one loop over micro-batches that steps the optimizer, then evaluates,
checkpoints and reports. The Ray touch points are marked ``# [ray N]`` where the loop calls
them:

  1. the session: rank, world size and device from the Ray Train context, and the checkpoint
     to resume from (``ray.train.get_checkpoint``)
  2. ``ray.train.torch.prepare_model`` (DDP when a trial has several workers)
  3. ``ray.train.report`` with metrics, and a checkpoint from rank 0

Longer than 500 lines because it is the recipe: setup, the loop, budget checks, reports and
evaluation read top to bottom in one file, as torchtune's recipes and nanoGPT's loop do; every
part it calls lives in its own module beside it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from qa_ray import metrics as m
from qa_ray.config.trial import TrainConfig, TrialConfig, parse_constraints
from qa_ray.models.build import build_model, build_tokenizer, model_size
from qa_ray.models.pruning import stored_plan
from qa_ray.tasks import TASKS, TaskFamily
from qa_ray.training.checkpoint import CURVE_FILE, load_checkpoint, save_checkpoint
from qa_ray.training.distill import build_teacher, distillation_loss
from qa_ray.training.memory import (
    OOM_MARK,
    NeighbourOutOfMemory,
    PeakMeter,
    TrialOutOfMemory,
    cap_device_memory,
    free_memory,
    is_out_of_memory,
    out_of_memory_is_own,
    out_of_memory_mark,
    tried_to_allocate_mb,
)
from qa_ray.training.precision import Precision, resolve_precision
from qa_ray.training.schedule import TimeBudget, lr_factor, warmup_steps
from qa_ray.training.session import Session, from_rank0, open_session, reduce_values
from qa_ray.training.trial import Meters, ResumableSampler, Trial

if TYPE_CHECKING:
    from datasets import Dataset

    from qa_ray.tasks import Tokenizer

__all__ = ["setup", "train", "train_loop_per_worker"]

logger = logging.getLogger(__name__)


# ---- setup -----------------------------------------------------------------------------------


def setup(
    cfg: TrialConfig, session: Session, memory: PeakMeter | None = None
) -> tuple[Trial, Meters]:
    """Builds data, model, optimizer and schedule; restores the session's checkpoint if any.

    ``memory`` reads the trial's peaks (one is started here without it)."""
    device = session.device
    memory = memory or PeakMeter(device, shared=_may_share_device(cfg))
    precision = resolve_precision(cfg, device)
    task = TASKS[cfg.model.task]
    torch.manual_seed(cfg.train.seed)
    if session.world_rank == 0:
        logger.info(
            "device=%s: %s, peak_memory_mb is %s",
            device,
            f"autocast {precision.dtype}" if precision.dtype else "fp32 compute",
            memory.describe(),
        )
    tokenizer = build_tokenizer(cfg.model)
    cfg, sampler, loader, eval_examples, eval_features = _setup_data(cfg, task, tokenizer, session)
    resume_from = session.latest_checkpoint()  # [ray 1]
    model = build_model(
        cfg.model,
        device,
        precision.compute_dtype,
        prune_losses=_importance_losses(cfg, task, loader, precision, device),
        prune_plan=stored_plan(resume_from) if resume_from else None,  # the heads it trained
    )
    size = model_size(model)
    teacher = build_teacher(cfg, tokenizer, device, precision) if cfg.train.distill else None
    model = session.prepare(model)  # [ray 2]
    model.train()

    accum = cfg.train.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accum)  # a partial accumulation ends each epoch
    max_steps = cfg.train.max_steps or max(1, math.ceil(steps_per_epoch * cfg.train.num_epochs))
    budget = TimeBudget(cfg.train.max_train_seconds, max_steps)
    optimizer = _setup_optimizer(model, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.train, budget.horizon)
    )
    trial = Trial(
        cfg=cfg,
        task=task,
        session=session,
        precision=precision,
        tokenizer=tokenizer,
        model=model,
        size=size,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=precision.scaler(),
        sampler=sampler,
        loader=loader,
        eval_examples=eval_examples,
        eval_features=eval_features,
        steps_per_epoch=steps_per_epoch,
        max_steps=max_steps,
        budget=budget,
        budgets=[c for c in parse_constraints(cfg.constraints, cfg.model.task) if c.is_budget],
        memory=memory,
        teacher=teacher,
    )
    meters = Meters()
    if resume_from:
        meters = load_checkpoint(trial, resume_from)
        trial.resumed_report = json.loads(Path(resume_from, "metrics.json").read_text())
        curve = Path(resume_from, CURVE_FILE)
        if curve.is_file():  # (checkpoints of qa-ray before 2026-12 have none)
            trial.curve = json.loads(curve.read_text())
        trial.curve_to_resend = list(trial.curve)
        logger.info("resumed from %s at step %d", resume_from, meters.step)
    if trial.rank0:
        logger.info(
            "train: %d sequences, %d steps (%d per epoch, warmup %d), %d worker(s); eval: %d "
            "examples; params %d (trainable %d), weights %.1f MB",
            len(cast(Sized, loader.dataset)),  # a datasets.Dataset: sized
            max_steps,
            steps_per_epoch,
            warmup_steps(cfg.train, max_steps),
            session.world_size,
            len(eval_examples),
            size.total_params,
            size.trainable_params,
            size.footprint_mb,
        )
    return trial, meters


def _may_share_device(cfg: TrialConfig) -> bool:
    """Whether other trials may hold memory on this trial's GPU: a fraction of one, or packed
    (the meter then never reads the device's used memory as this process's own)."""
    r = cfg.resources
    return 0 < r.gpus_per_worker < 1 or r.pack_by_memory or r.gpu_memory_mb is not None


def _importance_losses(
    cfg: TrialConfig,
    task: TaskFamily,
    loader: DataLoader,
    precision: Precision,
    device: torch.device,
) -> Callable[[torch.nn.Module], Iterator[torch.Tensor]] | None:
    """For ``model.prune``: the training loss of its first ``batches`` batches, computed as
    the loop computes it (same batches, device and autocast), in eval mode (no dropout)."""
    if cfg.model.prune is None:
        return None
    n = cfg.model.prune.batches

    def losses(model: torch.nn.Module) -> Iterator[torch.Tensor]:
        model.eval()
        for batch in itertools.islice(loader, n):
            batch = {k: v.to(device) for k, v in batch.items()}
            with precision.autocast():
                yield task.loss(model, batch)

    return losses


def training_loss(trial: Trial, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The task's loss, or with a teacher ``(1 - alpha) * task + alpha * distillation``."""
    distill = trial.cfg.train.distill
    if trial.teacher is None or distill is None:
        return trial.task.loss(trial.model, batch)
    task_loss, student = trial.task.outputs(trial.model, batch)
    with torch.no_grad():
        _, teacher = trial.task.outputs(trial.teacher, batch)
    return (1 - distill.alpha) * task_loss + distill.alpha * distillation_loss(
        student, teacher, distill.temperature
    )


def _setup_data(
    cfg: TrialConfig, task: TaskFamily, tokenizer: Tokenizer, session: Session
) -> tuple[TrialConfig, ResumableSampler, DataLoader, list, Dataset | None]:
    train_examples, eval_examples = task.load_train_eval(cfg.data)
    if cfg.data.squad_v2 is None:  # decided by the dataset, not by what the eval slice holds
        v2 = any(getattr(e, "is_impossible", False) for e in [*train_examples, *eval_examples])
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"squad_v2": v2})})
    train_features = task.train_features(train_examples, tokenizer, cfg.data)
    if len(train_features) == 0:
        raise ValueError(
            f"no training sequences: {len(train_examples)} training examples of "
            f"`data.path` = {cfg.data.path!r} gave none (see the data settings)"
        )
    eval_features = (
        task.eval_features(eval_examples, tokenizer, cfg.data) if session.world_rank == 0 else None
    )
    sampler = ResumableSampler(
        train_features,
        num_replicas=session.world_size,
        rank=session.world_rank,
        shuffle=True,
        seed=cfg.train.seed,
    )
    loader = DataLoader(
        train_features.with_format("torch"),
        batch_size=cfg.train.per_device_batch_size,
        sampler=sampler,
        collate_fn=task.collator(tokenizer),
        # Its own generator: starting an iterator draws a base seed from it, which from the
        # global RNG would shift dropout after a resume (a new iterator mid-epoch).
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return cfg, sampler, loader, list(eval_examples), eval_features


def _setup_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )


# ---- the loop --------------------------------------------------------------------------------


def train(trial: Trial, meters: Meters) -> dict[str, Any]:
    """Runs the trial to its last step (or the end of its time budget); returns the final
    report."""
    cfg = trial.cfg.train
    accum = cfg.gradient_accumulation_steps
    batches = len(trial.loader)
    if (
        trial.resumed_report is not None
        and trial.resumed_report.get(m.FINAL_REPORT)
        and meters.step >= trial.max_steps  # resumed with a longer budget: it trains on
    ):
        return report_final_again(trial)
    breach = over_budget(trial, meters)  # the model alone may break a budget: no step then
    if breach:
        return report(
            trial, meters, evaluate=False, checkpoint=False, final=True, infeasible=breach
        )
    last: dict[str, Any] = {}
    if cfg.eval_on_start and meters.step == 0:  # the untrained baseline, at step 0
        last = report(trial, meters, evaluate=True, checkpoint=False)
        if last.get(m.INFEASIBLE):  # the evaluation broke the memory budget
            return last
    done = meters.step >= trial.max_steps
    trial.budget.start()
    t0 = time.perf_counter()
    while not done:
        trial.sampler.set_epoch(meters.epoch)
        # A resumed trial starts its epoch where the checkpoint left it.
        trial.sampler.skip = meters.batches_in_epoch * cfg.per_device_batch_size
        for batch in trial.loader:
            i = meters.batches_in_epoch
            # This optimizer step's micro-batches: `accum`, or what is left of the epoch.
            first = i - i % accum
            window = min(accum, batches - first)
            stepping = i + 1 == first + window
            batch = {k: v.to(trial.session.device) for k, v in batch.items()}
            # DDP all-reduces gradients on the micro-batch that steps, not on every one.
            sync = contextlib.nullcontext() if stepping else _no_sync(trial.model)
            with sync:
                with trial.precision.autocast():
                    loss = training_loss(trial, batch) / window
                trial.scaler.scale(loss).backward()
            meters.loss_sum += loss.item() * window
            meters.loss_batches += 1
            meters.samples += len(batch["input_ids"])
            meters.batches_in_epoch += 1
            if not stepping:
                continue

            # -- optimizer step (clip on unscaled gradients), schedule, zero
            trial.scaler.unscale_(trial.optimizer)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in trial.model.parameters() if p.requires_grad], cfg.max_grad_norm
                )
            trial.scaler.step(trial.optimizer)
            trial.scaler.update()
            trial.optimizer.zero_grad(set_to_none=True)
            meters.step += 1

            # -- rank 0 decides what all ranks do next: horizon, out of time, checkpoint
            trial.budget.replan(meters.step)
            horizon, out_of_time, checkpoint_due, progress_due = from_rank0(
                [
                    trial.budget.horizon,
                    trial.budget.expired(),
                    _checkpoint_due(trial, meters),
                    _progress_due(trial, meters),
                ],
                trial.session,
            )
            trial.budget.horizon = int(horizon)
            trial.scheduler.step()  # the learning rate of the next step, on the agreed horizon
            done = meters.step >= trial.max_steps or bool(out_of_time)
            evaluate = (
                done
                or bool(cfg.eval_steps and meters.step % cfg.eval_steps == 0)
                or meters.step in cfg.eval_at_steps
            )
            breach = over_budget(trial, meters, memory_only=True)
            if breach:  # stopped at this measurement: a broken budget stays broken
                meters.train_seconds += time.perf_counter() - t0
                return report(
                    trial, meters, evaluate=False, checkpoint=False, final=True, infeasible=breach
                )

            # -- evaluate, checkpoint, report
            if evaluate or checkpoint_due:
                meters.train_seconds += time.perf_counter() - t0
                last = report(trial, meters, evaluate=evaluate, checkpoint=True, final=done)
                t0 = time.perf_counter()
            elif progress_due:  # step, loss, memory between evaluations: no checkpoint
                meters.train_seconds += time.perf_counter() - t0
                last = report(trial, meters, evaluate=False, checkpoint=False)
                t0 = time.perf_counter()
            if last.get(m.INFEASIBLE):  # its evaluation broke the memory budget: it ended
                return last
            if done:
                break
        else:  # the epoch ran out
            meters.epoch += 1
            meters.batches_in_epoch = 0
    return last


def report_final_again(trial: Trial) -> dict[str, Any]:
    """Reports again the final result of the checkpoint the trial resumed from, and returns it.

    A run restored from its final checkpoint has no step left to take. That happens when the
    sweep's driver is killed as a trial ends: its Ray Train controller and workers outlive
    the driver by seconds, long enough to finish the run, and the resumed sweep restarts the
    trial from the run's snapshot. Without this report the trial's function would return
    having reported nothing, and Tune fails it for lacking the objectives.
    """
    assert trial.resumed_report is not None
    if trial.rank0:
        logger.info("the checkpoint is the run's last: reporting its final result again")
    trial.session.report(_with_curve_to_resend(trial, trial.resumed_report), None)  # [ray 3]
    return dict(trial.resumed_report)


def _with_curve_to_resend(trial: Trial, result: dict[str, Any]) -> dict[str, Any]:
    """The first report after a resume carries the run's curve up to the checkpoint: the
    points the sweep's driver may never have received (it was killed while the run went on),
    which it logs once (steps it has are skipped)."""
    if trial.curve_to_resend is None:
        return result
    result = {**result, m.CURVE_SO_FAR: trial.curve_to_resend}
    trial.curve_to_resend = None
    return result


def over_budget(trial: Trial, meters: Meters, *, memory_only: bool = False) -> str | None:
    """The first budget the trial breaks, as text (``peak_memory_mb 23456 > 22000``), or None.

    Every rank calls it (the peak memory is the largest over ranks and over the trial's
    segments: :func:`_read_memory`). The size budgets only need checking once, before
    training: ``memory_only`` skips them.
    """
    budgets = trial.budgets
    if memory_only:
        budgets = [c for c in budgets if c.metric == m.PEAK_MEMORY_MB]
    if not budgets:
        return None
    values = {
        m.MODEL_FOOTPRINT_MB: trial.size.footprint_mb,
        m.TRAINABLE_PARAMS: trial.size.trainable_params,
        m.TOTAL_PARAMS: trial.size.total_params,
    }
    if any(c.metric == m.PEAK_MEMORY_MB for c in budgets):
        _read_memory(trial, meters, evaluating=False)
        values[m.PEAK_MEMORY_MB] = meters.peak_memory_mb
    for c in budgets:
        if not c.holds(values):
            return f"{c.metric} {values[c.metric]:.0f} breaks the budget {c}"
    return None


def _read_memory(trial: Trial, meters: Meters, *, evaluating: bool) -> None:
    """Takes this rank's peak of the current phase into ``meters``, then the largest over
    ranks (every rank calls it, evaluating or not: rank 0 alone evaluates)."""
    meters.note_memory(trial.memory.read(), evaluating=evaluating)
    meters.set_memory_peaks(reduce_values(meters.memory_peaks(), dist.ReduceOp.MAX, trial.session))


def _no_sync(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def _progress_due(trial: Trial, meters: Meters) -> bool:
    seconds = trial.cfg.train.progress_seconds
    return bool(seconds and trial.budget.elapsed() - meters.last_report_time >= seconds)


def _checkpoint_due(trial: Trial, meters: Meters) -> bool:
    cfg = trial.cfg.train
    if not cfg.save_checkpoints:
        return False
    if cfg.checkpoint_steps and meters.step % cfg.checkpoint_steps == 0:
        return True
    return bool(
        cfg.checkpoint_seconds
        and trial.budget.elapsed() - meters.last_checkpoint_time >= cfg.checkpoint_seconds
    )


# ---- evaluate and report ---------------------------------------------------------------------


def report(
    trial: Trial,
    meters: Meters,
    *,
    evaluate: bool,
    checkpoint: bool,
    final: bool = False,
    infeasible: str | None = None,
) -> dict[str, Any]:
    """Reports the training meters (every rank), with an evaluation and a checkpoint from rank
    0 when asked; the final report's metrics and predictions are also the session's results.
    ``infeasible`` (the budget broken, or the memory error) marks a trial's last report.

    The memory budget is checked after the evaluation too: one that breaks it makes this
    report the trial's last, infeasible (the caller stops on ``result[INFEASIBLE]``)."""
    session = trial.session
    result: dict[str, Any] = {}
    predictions: dict[str, str] | None = None
    if evaluate and trial.rank0:
        # Training's peak so far, then the evaluation's alone: logged apart.
        meters.note_memory(trial.memory.read(), evaluating=False)
        trial.memory.reset()
        started = time.perf_counter()
        result, predictions = _evaluate(trial)
        result[m.EVAL_SECONDS] = time.perf_counter() - started
        meters.note_memory(trial.memory.read(), evaluating=True)
        trial.memory.reset()
    _read_memory(trial, meters, evaluating=False)
    if not infeasible and evaluate:
        infeasible = over_budget(trial, meters, memory_only=True)
        final = final or bool(infeasible)
        checkpoint = checkpoint and not infeasible  # a broken budget stays broken
    loss = meters.take_loss()
    # Every rank's mean loss, averaged: the loss of the whole step, as one worker would see it.
    loss = reduce_values([loss], dist.ReduceOp.SUM, session)[0] / session.world_size
    seconds = meters.train_seconds
    result.update(
        {
            m.TRAIN_LOSS: loss,
            m.LEARNING_RATE: trial.scheduler.get_last_lr()[0],
            m.STEP: meters.step,
            m.EPOCH: meters.step / trial.steps_per_epoch,
            m.PEAK_MEMORY_MB: meters.peak_memory_mb,
            m.PEAK_ALLOCATED_MB: meters.peak_allocated_mb,
            m.PEAK_TRAIN_MEMORY_MB: meters.peak_train_memory_mb,
            m.MODEL_FOOTPRINT_MB: trial.size.footprint_mb,
            m.TRAINABLE_PARAMS: trial.size.trainable_params,
            m.TOTAL_PARAMS: trial.size.total_params,
            m.TRAIN_SAMPLES_PER_SECOND: meters.samples * session.world_size / seconds
            if seconds
            else 0.0,
            m.TRAIN_SECONDS: seconds,
            m.PLANNED_STEPS: trial.max_steps,
            m.WARMUP_STEPS: warmup_steps(trial.cfg.train, trial.budget.horizon),
        }
    )
    if meters.peak_eval_memory_mb:
        result[m.PEAK_EVAL_MEMORY_MB] = meters.peak_eval_memory_mb
    if trial.memory.context_source:  # GPU: how the CUDA context in peak_memory_mb was read
        result[m.MEMORY_CONTEXT_SOURCE] = trial.memory.context_source
    if trial.budget.seconds is not None:
        result[m.TIME_BUDGET_SECONDS] = trial.budget.seconds
    meters.last_report_time = trial.budget.elapsed()
    if final:
        result[m.FINAL_REPORT] = 1.0
    if infeasible:
        result.update({m.INFEASIBLE: 1.0, m.INFEASIBLE_REASON: infeasible})
        if trial.rank0:
            logger.warning("infeasible at step %d: %s", meters.step, infeasible)
    trial.curve.append(
        {"timestamp": time.time(), **{k: v for k, v in result.items() if k in (m.STEP, *m.CURVES)}}
    )
    ckpt = None
    if checkpoint and trial.cfg.train.save_checkpoints and trial.rank0:
        meters.last_checkpoint_time = trial.budget.elapsed()
        ckpt = save_checkpoint(trial, meters, result, predictions)
    if final and trial.rank0:
        session.save_results(result, predictions)
    try:
        session.report(_with_curve_to_resend(trial, result), ckpt)  # [ray 3]
    finally:
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)
    return result


def _evaluate(trial: Trial) -> tuple[dict[str, Any], dict[str, str]]:
    out = trial.task.evaluate(
        trial.unwrapped,
        trial.eval_examples,
        trial.eval_features,
        trial.tokenizer,
        trial.cfg.data,
        trial.session.device,
        trial.cfg.train.eval_batch_size,
        trial.precision.autocast,
    )
    result: dict[str, Any] = {
        m.eval_key(k): float(v) for k, v in out.scores.items() if not k.endswith("total")
    }
    result[m.EVAL_LATENCY_MS] = out.latency_ms_per_example
    result[m.EVAL_QUESTIONS] = len(trial.eval_examples)
    if out.per_question:  # each question's scores: trials compare paired on them
        scored = out.per_question.values()
        result[m.PER_QUESTION] = {
            "ids": list(out.per_question),
            "exact": [int(e) for e, _ in scored],
            "f1": [round(f, 4) for _, f in scored],
        }
    if "f1" in out.scores:  # a QA family: how its answers are wrong (text, and a few numbers)
        from qa_ray.data.squad import gold_questions
        from qa_ray.scoring import breakdown

        errors = breakdown.error_breakdown(
            gold_questions(trial.eval_examples),
            out.predictions,
            {e.id: e.question for e in trial.eval_examples},
        )
        result[m.ERROR_BREAKDOWN] = breakdown.dumps(errors)
        result.update(breakdown.breakdown_metrics(errors))
    if trial.task.QUALITATIVE_QUESTIONS:  # answers to read, not a metric
        result[m.QUALITATIVE] = [
            {"question": q, "answer": out.predictions[q]} for q in trial.task.QUALITATIVE_QUESTIONS
        ]
    return result, out.predictions


def _ended_by_mark(mark: dict[str, Any], session: Session) -> dict[str, Any]:
    """The final report of an attempt that follows one that ran out of memory: infeasible with
    the memory that one held, without building anything (every rank reports it)."""
    result = {
        m.STEP: 0,
        m.PEAK_MEMORY_MB: float(mark["peak_memory_mb"]),
        m.FINAL_REPORT: 1.0,
        m.INFEASIBLE: 1.0,
        m.INFEASIBLE_REASON: f"{mark['reason']} (the attempt before; not retried)",
    }
    if session.world_rank == 0:
        logger.warning("infeasible, not retried: %s", result[m.INFEASIBLE_REASON])
    session.report(result, None)  # [ray 3]
    return result


# ---- entry point -----------------------------------------------------------------------------


def train_loop_per_worker(
    config: dict[str, Any], session: Session | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Fine-tunes and evaluates one configuration; reports metrics at every evaluation.

    Args:
        config: a :class:`~qa_ray.config.trial.TrialConfig` as a dict (validated here).
        session: where reports go; ``None`` opens Ray Train's inside a Ray worker, else a
            :class:`LocalSession` writing to ``output_dir``.
        resume: in-process only: continue from ``output_dir``'s newest checkpoint (Ray
            workers always resume from Ray Train's latest checkpoint when there is one).

    Returns:
        The metrics of the final report.
    """
    cfg = TrialConfig.model_validate(config)
    session = session or open_session(cfg, resume=resume)  # [ray 1]
    if session.world_size > 1 and (mark := session.read_note(OOM_MARK)):
        return _ended_by_mark(mark, session)
    cap = cfg.resources.gpu_memory_mb if session.device.type == "cuda" else None
    memory = PeakMeter(session.device, shared=_may_share_device(cfg))
    if cap is not None:
        fraction = cap_device_memory(session.device, cap, memory.outside_mb)
        if session.world_rank == 0:
            logger.info("GPU memory capped at %.0f MB (%.3f of the device)", cap, fraction)
    trial = None
    try:
        trial, meters = setup(cfg, session, memory)
        return train(trial, meters)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        peak = memory.read().needed_mb
        tried = tried_to_allocate_mb(str(exc))
        if not out_of_memory_is_own(peak, tried, cap):
            # Not this configuration's answer: no mark, no infeasible report. Ray Train
            # restarts the worker group (resources.max_failures), then the trial FAILs.
            raise NeighbourOutOfMemory(
                f"the GPU ran out of memory while this trial held {peak:.0f} MB and asked for "
                f"{tried:.0f} MB more, within its own cap of {cap:.0f} MB: another process on "
                "the device took the memory"
            ) from exc
        if trial is not None:
            peak = max(peak, meters.peak_memory_mb)  # a restarted trial's earlier segments
        reason = f"out of memory at {peak:.0f} MB peak ({type(exc).__name__}: {exc})".splitlines()
        if trial is None or session.world_size > 1:
            # Other ranks may wait in a collective this rank will never join: fail the worker
            # group (Ray Train stops it); the sweep records the trial infeasible. Ray Train
            # restarts a failed group up to `resources.max_failures` times: the mark tells the
            # next attempt this configuration runs out of memory, so it ends at once.
            if session.world_size > 1:
                session.leave_note(OOM_MARK, out_of_memory_mark(peak, reason[0]))
            raise TrialOutOfMemory(peak, reason[0]) from exc
        free_memory(trial)
        return report(
            trial, meters, evaluate=False, checkpoint=False, final=True, infeasible=reason[0]
        )
