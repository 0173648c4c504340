"""The per-worker training loop: ``setup()`` builds a trial, ``train()`` runs it.

``train_loop_per_worker(config)`` is what every Ray Train worker of a trial runs (``config`` is a
:class:`~qa_ray.config.TrialConfig` as a dict). Called in-process without Ray (``qa-ray train``)
it runs the same code as a single worker and writes its results to ``output_dir``.

Read it as a recipe: :func:`setup` builds the trial's parts (data, model, optimizer, schedule,
precision) into one :class:`Trial` and restores a checkpoint if there is one; :func:`train` is
one loop over micro-batches that steps the optimizer, then evaluates, checkpoints and reports.
The Ray touch points are marked ``# [ray N]`` where the loop calls them:

  1. the session: rank, world size and device from the Ray Train context, and the checkpoint
     to resume from (``ray.train.get_checkpoint``)
  2. ``ray.train.torch.prepare_model`` (DDP when a trial has several workers)
  3. ``ray.train.report`` with metrics, and a checkpoint from rank 0

Both sessions, :class:`RaySession` and :class:`LocalSession`, follow :class:`Session`, so the
loop never asks which one it has.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import math
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from qa_ray import metrics as m
from qa_ray.config import TrainConfig, TrialConfig, parse_constraints
from qa_ray.models import ModelSize, build_model, build_tokenizer, load_weights, model_size
from qa_ray.pruning import PLAN_FILE, PLAN_KEY, stored_plan
from qa_ray.tasks import TASKS, TaskFamily

if TYPE_CHECKING:
    from datasets import Dataset

    from qa_ray.pareto import Constraint
    from qa_ray.tasks import Model, Tokenizer

__all__ = [
    "LocalSession",
    "Meters",
    "Precision",
    "RaySession",
    "Session",
    "TimeBudget",
    "Trial",
    "TrialOutOfMemory",
    "distillation_loss",
    "is_out_of_memory",
    "latest_local_checkpoint",
    "lr_factor",
    "setup",
    "train",
    "train_loop_per_worker",
]

logger = logging.getLogger(__name__)

TRAINING_STATE = "training_state.json"  # step, epoch, position, meters, budget (readable)
TRAINING_TENSORS = "training_state.pt"  # optimizer, scheduler, scaler, RNG states


# ---- sessions --------------------------------------------------------------------------------


class Session(Protocol):
    """Where a worker runs and where its reports go: Ray Train, or in-process."""

    world_rank: int
    world_size: int
    device: torch.device

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model ready for this worker (DDP-wrapped across several workers)."""
        ...

    def latest_checkpoint(self) -> str | None:
        """A local folder holding the checkpoint to resume from, or ``None``."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Reports metrics (every rank) and a checkpoint (rank 0, or ``None``)."""
        ...

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        """Keeps the final metrics and predictions (rank 0) where the user reads them."""
        ...


class LocalSession:
    """Stands in for Ray Train when the loop runs in-process: one worker, files in ``output_dir``.

    Keeps the newest ``keep`` checkpoints under ``output_dir/checkpoints`` and prints one
    progress line per report. With ``resume``, the newest of them is the one to resume from.
    """

    world_rank, world_size = 0, 1

    def __init__(self, output_dir: str, keep: int, device: torch.device, resume: bool = False):
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.device = device
        self.resume = resume

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def latest_checkpoint(self) -> str | None:
        if not self.resume:
            return None
        newest = latest_local_checkpoint(self.output_dir)
        if newest is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {self.output_dir / 'checkpoints'} "
                "(`output_dir`); run without --resume to start from step 0"
            )
        return str(newest)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        print(_progress_line(metrics), flush=True)
        if checkpoint_dir is None:
            return
        root = self.output_dir / "checkpoints"
        target = root / f"step_{metrics[m.STEP]:06d}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir, target)
        for old in _local_checkpoints(self.output_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if predictions is not None:
            (self.output_dir / "predictions.json").write_text(json.dumps(predictions, indent=2))


def _local_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step_*") if (p / TRAINING_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step_")))


def latest_local_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint that ``qa-ray train`` wrote under ``output_dir``."""
    found = _local_checkpoints(Path(output_dir))
    return found[-1] if found else None


class RaySession:
    """A Ray Train worker: rank and device from its context; reports go to Ray Train."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        # k-bit weights are placed by bitsandbytes at load time; moving them again is an error.
        kbit = any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())
        return ray.train.torch.prepare_model(model, move_to_device=not kbit)

    def latest_checkpoint(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # after a worker failure, or a resumed sweep
        return checkpoint.to_directory() if checkpoint is not None else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        metrics = dict(
            metrics,
            **{
                m.WORKER_NODE_IP: ray.util.get_node_ip_address(),
                m.WORKER_NODE_ID: ray.get_runtime_context().get_node_id(),
                m.WORKER_PID: os.getpid(),  # its output: the trial's worker log (MLflow)
            },
        )
        ray.train.report(metrics, checkpoint=checkpoint)

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        pass  # the final report's checkpoint holds them (metrics.json, predictions.json)


def _in_ray_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


def open_session(cfg: TrialConfig, resume: bool = False) -> Session:
    """Ray Train's session inside a Ray worker, else a :class:`LocalSession` on ``output_dir``."""
    if _in_ray_worker():
        return RaySession()
    return LocalSession(
        cfg.output_dir, cfg.train.checkpoints_to_keep, _resolve_device(cfg), resume=resume
    )


def _resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("`train.device` is 'cuda' but no CUDA device is visible")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# ---- collectives: every tensor on a device the process group's backend serves ----------------


def collective_device(device: torch.device) -> torch.device:
    """The device a collective's tensor must live on in this worker's process group.

    Ray Train's process group is NCCL on GPU workers (``"cuda:nccl"``), which serves CUDA
    tensors only, and gloo on CPU workers (``"cpu:gloo,cuda:gloo"``). A CPU tensor goes where a
    backend serves the CPU; otherwise the worker's own device.
    """
    served = {part.split(":")[0] for part in dist.get_backend_config().split(",") if ":" in part}
    if "cpu" in served:
        return torch.device("cpu")
    if device.type not in served:
        raise RuntimeError(
            f"the process group serves {sorted(served)} tensors, but this worker's device is "
            f"{device}"
        )
    return device


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_initialized()


def _from_rank0(values: list[float], session: Session) -> list[float]:
    """Rank 0's values on every rank (decisions all ranks must share)."""
    if not _distributed(session.world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(session.device))
    dist.broadcast(t, src=0)
    return t.tolist()


def _reduce(values: list[float], op: dist.ReduceOp.RedOpType, session: Session) -> list[float]:
    if not _distributed(session.world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(session.device))
    dist.all_reduce(t, op=op)
    return t.tolist()


# ---- precision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Autocast dtype and loss scaling of a trial; trained parameters always stay fp32.

    On GPU, ``train.precision`` picks the autocast dtype (``auto``: bf16 where supported). On
    CPU only 16-bit trials autocast (bf16: their frozen weights are bf16); the rest compute fp32.
    fp16 scales the loss (``GradScaler``); the scaler is a no-op otherwise.
    """

    device_type: str
    dtype: torch.dtype | None  # None: no autocast, fp32 compute

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """What k-bit layers compute in, and the dtype of frozen non-quantized weights."""
        return self.dtype or torch.float32

    @property
    def scales_loss(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.dtype == torch.float16

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_loss)


def resolve_precision(cfg: TrialConfig, device: torch.device) -> Precision:
    """The trial's :class:`Precision` on ``device`` (see its docstring for the rules)."""
    bits, asked = cfg.model.quantization_bits, cfg.train.precision
    if device.type != "cuda":
        return Precision(device.type, torch.bfloat16 if bits == 16 else None)
    if asked == "fp32":
        return Precision("cuda", None)
    if asked == "fp16" or (asked == "auto" and not torch.cuda.is_bf16_supported()):
        return Precision("cuda", torch.float16)
    return Precision("cuda", torch.bfloat16)


# ---- the time budget and the schedule --------------------------------------------------------

_REPLAN_AT = 3  # steps before the first re-plan (the first steps are slower)


class TimeBudget:
    """``train.max_train_seconds`` of wall time from the start of training (evaluations
    included), and the horizon of the learning-rate schedule.

    A budgeted run re-plans the horizon from its running step time after every step, so its
    learning rate still warms up and decays over the steps it will really do. Rank 0 decides;
    the loop broadcasts its decision, so no two ranks ever step with different learning rates.
    """

    def __init__(self, seconds: float | None, planned_steps: int):
        self.seconds = seconds
        self.planned_steps = planned_steps
        self.horizon = planned_steps
        self._spent = 0.0  # before this process (a resumed trial)
        self._since = time.perf_counter()

    def start(self) -> None:
        """Starts (or, resumed, continues) the clock."""
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        return self._spent + time.perf_counter() - self._since

    def replan(self, step: int) -> None:
        if self.seconds is None or step < _REPLAN_AT:
            return
        per_step = self.elapsed() / step
        self.horizon = max(step + 1, min(self.planned_steps, int(self.seconds / per_step)))

    def expired(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed(), "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._spent, self._since = float(state["elapsed"]), time.perf_counter()
        self.horizon = int(state["horizon"])


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return round((cfg.warmup_ratio or 0.0) * total)


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup, then linear/cosine decay to 0 (or constant) over ``total`` steps."""
    warmup = warmup_steps(cfg, total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.lr_scheduler == "constant_with_warmup":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


# ---- the trial's parts and its running meters ------------------------------------------------


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` seeded with ``train.seed`` (same order on every rank, a new one
    every epoch) that can start an epoch part-way, where a resumed trial left it."""

    skip = 0  # samples of this rank to skip at the next iteration only

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


@dataclass
class Trial:
    """Everything :func:`setup` builds for one trial."""

    cfg: TrialConfig
    task: TaskFamily
    session: Session
    precision: Precision
    tokenizer: Any
    model: torch.nn.Module  # DDP-wrapped across several workers
    size: ModelSize
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: ResumableSampler
    loader: DataLoader
    eval_examples: list
    eval_features: Dataset | None  # rank 0 only
    steps_per_epoch: int
    max_steps: int
    budget: TimeBudget
    budgets: list[Constraint]  # the constraints on BUDGET_METRICS the loop enforces
    teacher: torch.nn.Module | None = None  # knowledge distillation: frozen, in eval mode

    @property
    def unwrapped(self) -> Model:
        """The model without DDP's wrapper: a transformers model, or a peft one wrapping it."""
        return cast("Model", getattr(self.model, "module", self.model))

    @property
    def rank0(self) -> bool:
        return self.session.world_rank == 0


@dataclass
class Meters:
    """The loop's position and running sums; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0  # epochs started
    batches_in_epoch: int = 0  # micro-batches of this rank taken in the current epoch
    loss_sum: float = 0.0  # since the last report
    loss_batches: int = 0
    samples: int = 0  # this rank's, since the start
    train_seconds: float = 0.0  # training only (no evaluation), since the start
    last_checkpoint_time: float = field(default=0.0, repr=False)
    last_report_time: float = field(default=0.0, repr=False)

    def take_loss(self) -> float:
        mean = self.loss_sum / self.loss_batches if self.loss_batches else float("nan")
        self.loss_sum, self.loss_batches = 0.0, 0
        return mean


# ---- setup -----------------------------------------------------------------------------------


def setup(cfg: TrialConfig, session: Session) -> tuple[Trial, Meters]:
    """Builds data, model, optimizer and schedule; restores the session's checkpoint if any."""
    device = session.device
    precision = resolve_precision(cfg, device)
    task = TASKS[cfg.model.task]
    torch.manual_seed(cfg.train.seed)
    if session.world_rank == 0:
        logger.info(
            "device=%s: %s, peak_memory_mb is %s",
            device,
            f"autocast {precision.dtype}" if precision.dtype else "fp32 compute",
            "CUDA max allocated" if device.type == "cuda" else "the worker's peak RSS",
        )
    tokenizer = build_tokenizer(cfg.model)
    cfg, sampler, loader, eval_examples, eval_features = _setup_data(cfg, task, tokenizer, session)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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
        teacher=teacher,
    )
    meters = Meters()
    if resume_from:
        meters = load_checkpoint(trial, resume_from)
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


def build_teacher(
    cfg: TrialConfig, tokenizer: Tokenizer, device: torch.device, precision: Precision
) -> torch.nn.Module:
    """The distillation teacher: the model at ``train.distill.teacher`` for the same task, in
    the student's precision (16-bit weights when the student autocasts), frozen, in eval mode.
    It lives in the trial's process, so its memory counts in the trial's peak.

    Raises:
        ValueError: the teacher's tokenizer is not the student's (their logits would not
            line up), or the folder is a LoRA adapter (merge it into its base model first).
    """
    from transformers import AutoTokenizer

    assert cfg.train.distill is not None
    path = cfg.train.distill.teacher
    if (Path(path) / "adapter_config.json").is_file():
        raise ValueError(
            f"`train.distill.teacher` = {path!r} is a LoRA adapter: distill from a full model "
            "folder (merge the adapter into its base model, peft's merge_and_unload)"
        )
    if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"`train.distill.teacher` = {path!r} has another vocabulary than "
            f"`model.name_or_path` = {cfg.model.name_or_path!r}: their logits do not line up"
        )
    bits = 16 if precision.dtype is not None else 32
    # The teacher as its folder holds it: none of the student's own shaping (fewer layers,
    # pruned heads) or training settings.
    teacher_cfg = cfg.model.model_copy(
        update={
            "name_or_path": path,
            "finetune": "full",
            "quantization_bits": bits,
            "keep_layers": None,
            "prune": None,
            "gradient_checkpointing": False,
        }
    )
    teacher = build_model(teacher_cfg, device, precision.compute_dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row of each pair of
    logits (the distribution is over the last dimension), averaged over rows, then over pairs
    (``T^2`` keeps the gradient's scale independent of ``T``, Hinton et al. 2015)."""
    f = torch.nn.functional
    terms = [
        f.kl_div(
            f.log_softmax(s.float() / temperature, dim=-1),
            f.log_softmax(t.float() / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(terms).mean() * temperature**2


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
    breach = over_budget(trial)  # the model alone may break a budget: no step is taken then
    if breach:
        return report(
            trial, meters, evaluate=False, checkpoint=False, final=True, infeasible=breach
        )
    if cfg.eval_on_start and meters.step == 0:  # the untrained baseline, at step 0
        report(trial, meters, evaluate=True, checkpoint=False)
    last: dict[str, Any] = {}
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
            horizon, out_of_time, checkpoint_due, progress_due = _from_rank0(
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
            breach = over_budget(trial, memory_only=True)
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
                report(trial, meters, evaluate=False, checkpoint=False)
                t0 = time.perf_counter()
            if done:
                break
        else:  # the epoch ran out
            meters.epoch += 1
            meters.batches_in_epoch = 0
    return last


def over_budget(trial: Trial, *, memory_only: bool = False) -> str | None:
    """The first budget the trial breaks, as text (``peak_memory_mb 23456 > 22000``), or None.

    Every rank calls it (the peak memory is the largest over ranks). The size budgets only
    need checking once, before training: ``memory_only`` skips them.
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
        values[m.PEAK_MEMORY_MB] = _reduce(
            [_peak_memory_mb(trial.session.device)], dist.ReduceOp.MAX, trial.session
        )[0]
    for c in budgets:
        if not c.holds(values):
            return f"{c.metric} {values[c.metric]:.0f} breaks the budget {c}"
    return None


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
    ``infeasible`` (the budget broken, or the memory error) marks a trial's last report."""
    session = trial.session
    result: dict[str, Any] = {}
    predictions: dict[str, str] | None = None
    if evaluate and trial.rank0:
        started = time.perf_counter()
        result, predictions = _evaluate(trial)
        result[m.EVAL_SECONDS] = time.perf_counter() - started
    peak = _reduce([_peak_memory_mb(session.device)], dist.ReduceOp.MAX, session)[0]
    loss = meters.take_loss()
    # Every rank's mean loss, averaged: the loss of the whole step, as one worker would see it.
    loss = _reduce([loss], dist.ReduceOp.SUM, session)[0] / session.world_size
    seconds = meters.train_seconds
    result.update(
        {
            m.TRAIN_LOSS: loss,
            m.LEARNING_RATE: trial.scheduler.get_last_lr()[0],
            m.STEP: meters.step,
            m.EPOCH: meters.step / trial.steps_per_epoch,
            m.PEAK_MEMORY_MB: peak,
            m.MODEL_FOOTPRINT_MB: trial.size.footprint_mb,
            m.TRAINABLE_PARAMS: trial.size.trainable_params,
            m.TOTAL_PARAMS: trial.size.total_params,
            m.TRAIN_SAMPLES_PER_SECOND: meters.samples * session.world_size / seconds
            if seconds
            else 0.0,
            m.TRAIN_SECONDS: seconds,
            m.PLANNED_STEPS: trial.max_steps,
        }
    )
    if trial.budget.seconds is not None:
        result[m.TIME_BUDGET_SECONDS] = trial.budget.seconds
    meters.last_report_time = trial.budget.elapsed()
    if final:
        result[m.FINAL_REPORT] = 1.0
    if infeasible:
        result.update({m.INFEASIBLE: 1.0, m.INFEASIBLE_REASON: infeasible})
        if trial.rank0:
            logger.warning("infeasible at step %d: %s", meters.step, infeasible)
    ckpt = None
    if checkpoint and trial.cfg.train.save_checkpoints and trial.rank0:
        meters.last_checkpoint_time = trial.budget.elapsed()
        ckpt = save_checkpoint(trial, meters, result, predictions)
    if final and trial.rank0:
        session.save_results(result, predictions)
    try:
        session.report(result, ckpt)  # [ray 3]
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
    if trial.task.QUALITATIVE_QUESTIONS:  # answers to read, not a metric
        result[m.QUALITATIVE] = [
            {"question": q, "answer": out.predictions[q]} for q in trial.task.QUALITATIVE_QUESTIONS
        ]
    return result, out.predictions


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


_PROGRESS_EVAL = ((m.EVAL_EXACT, ".2f"), (m.EVAL_F1, ".2f"), (m.EVAL_LOSS, ".4f"),
                  (m.EVAL_PERPLEXITY, ".2f"))  # fmt: skip


def _progress_line(r: dict[str, Any]) -> str:
    evals = " ".join(f"{m.LABELS[k]} {r[k]:{fmt}}" for k, fmt in _PROGRESS_EVAL if k in r)
    return (
        f"step {r[m.STEP]} epoch {r[m.EPOCH]:.2f} | loss {r[m.TRAIN_LOSS]:.4f} | "
        f"lr {r[m.LEARNING_RATE]:.2e} | {evals or 'no eval'} | "
        f"peak {r[m.PEAK_MEMORY_MB]:.0f} MB | {r[m.TRAIN_SAMPLES_PER_SECOND]:.1f} samples/s"
    )


# ---- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(
    trial: Trial,
    meters: Meters,
    metrics: dict[str, Any],
    predictions: dict[str, str] | None,
) -> str:
    """Writes a checkpoint to a new temporary folder (the caller reports, then removes it).

    It holds the model (adapter and trained heads only, for LoRA) and tokenizer as
    ``save_pretrained`` writes them, so it loads with ``from_pretrained`` /
    ``PeftModel.from_pretrained``; the trial config; the metrics and predictions of the report;
    and what resuming needs: optimizer, scheduler and scaler state, RNG states, the loop's
    meters and position, and the time budget.
    """
    path = tempfile.mkdtemp(prefix="qa-ray-ckpt-")
    trial.unwrapped.save_pretrained(path)
    trial.tokenizer.save_pretrained(path)
    files = {
        "trial_config.json": trial.cfg.model_dump(),
        # The pruned heads and units (a LoRA checkpoint has no base config.json to hold them).
        **({PLAN_FILE: plan} if (plan := getattr(trial.unwrapped.config, PLAN_KEY, None)) else {}),
        "metrics.json": metrics,
        TRAINING_STATE: {"meters": asdict(meters), "budget": trial.budget.state_dict()},
    }
    if predictions is not None:
        files["predictions.json"] = predictions
    for name, payload in files.items():
        Path(path, name).write_text(json.dumps(payload, indent=2))
    torch.save(
        {
            "optimizer": trial.optimizer.state_dict(),
            "scheduler": trial.scheduler.state_dict(),
            "scaler": trial.scaler.state_dict(),
            "rng": _rng_state(),
        },
        Path(path, TRAINING_TENSORS),
    )
    return path


def load_checkpoint(trial: Trial, path: str) -> Meters:
    """Restores weights, optimizer, scheduler, scaler, RNG, budget from a checkpoint folder
    written by :func:`save_checkpoint`; returns the meters to continue with."""
    _load_weights(trial.unwrapped, Path(path))
    tensors = torch.load(Path(path, TRAINING_TENSORS), map_location="cpu", weights_only=False)
    trial.optimizer.load_state_dict(tensors["optimizer"])
    trial.scheduler.load_state_dict(tensors["scheduler"])
    trial.scaler.load_state_dict(tensors["scaler"])
    state = json.loads(Path(path, TRAINING_STATE).read_text())
    trial.budget.load_state_dict(state["budget"])
    _set_rng_state(tensors["rng"])
    return Meters(**state["meters"])


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    adapter = path / "adapter_model.safetensors"
    if adapter.is_file():  # LoRA: the adapters and the heads peft saves with them
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(model, load_file(adapter))
        if result.unexpected_keys:
            raise ValueError(f"{adapter}: unexpected keys {result.unexpected_keys[:5]}")
        return
    load_weights(model, path)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- entry point -----------------------------------------------------------------------------


def train_loop_per_worker(
    config: dict[str, Any], session: Session | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Fine-tunes and evaluates one configuration; reports metrics at every evaluation.

    Args:
        config: a :class:`~qa_ray.config.TrialConfig` as a dict (validated here).
        session: where reports go; ``None`` opens Ray Train's inside a Ray worker, else a
            :class:`LocalSession` writing to ``output_dir``.
        resume: in-process only: continue from ``output_dir``'s newest checkpoint (Ray
            workers always resume from Ray Train's latest checkpoint when there is one).

    Returns:
        The metrics of the final report.
    """
    cfg = TrialConfig.model_validate(config)
    session = session or open_session(cfg, resume=resume)  # [ray 1]
    trial = None
    try:
        trial, meters = setup(cfg, session)
        return train(trial, meters)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        peak = _peak_memory_mb(session.device)
        reason = f"out of memory at {peak:.0f} MB peak ({type(exc).__name__}: {exc})".splitlines()
        if trial is None or session.world_size > 1:
            # Other ranks may wait in a collective this rank will never join: fail the worker
            # group (Ray Train stops it); the sweep records the trial infeasible.
            raise TrialOutOfMemory(peak, reason[0]) from exc
        _free_memory(trial)
        return report(
            trial, meters, evaluate=False, checkpoint=False, final=True, infeasible=reason[0]
        )


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of memory; ``peak_memory_mb`` is the most it held before."""

    def __init__(self, peak_memory_mb: float, reason: str):
        super().__init__(reason)
        self.peak_memory_mb = peak_memory_mb

    def __reduce__(self):  # crosses Ray process boundaries
        return (type(self), (self.peak_memory_mb, str(self)))


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's ``OutOfMemoryError``, the CPU allocator's ``can't allocate
    memory``, Python's ``MemoryError``, or :class:`TrialOutOfMemory`."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError | TrialOutOfMemory):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _free_memory(trial: Trial) -> None:
    trial.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if trial.session.device.type == "cuda":
        torch.cuda.empty_cache()
