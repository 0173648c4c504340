"""A running trial's parts (:class:`Trial`) and meters (:class:`Meters`), and the resumable
sampler that lets a restored trial start an epoch part-way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from torch.utils.data import DataLoader, DistributedSampler

from qa_ray.config.trial import TrialConfig
from qa_ray.models.build import ModelSize
from qa_ray.tasks import TaskFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    from datasets import Dataset

    from qa_ray.config.trial import TrialConfig
    from qa_ray.models.build import ModelSize
    from qa_ray.pareto import Constraint
    from qa_ray.tasks import Model, TaskFamily
    from qa_ray.training.memory import MemoryReading, PeakMeter
    from qa_ray.training.precision import Precision
    from qa_ray.training.schedule import TimeBudget
    from qa_ray.training.session import Session

__all__ = ["Meters", "Trial"]

logger = logging.getLogger(__name__)


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
    memory: PeakMeter
    teacher: torch.nn.Module | None = None  # knowledge distillation: frozen, in eval mode
    resumed_report: dict[str, Any] | None = None  # the report of the checkpoint resumed from
    curve: list[dict[str, Any]] = field(default_factory=list)  # a point per report; checkpointed
    curve_to_resend: list[dict[str, Any]] | None = None  # after a resume: sent with the next report

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
    # Memory peaks in MB, the largest over ranks and over every segment of the trial (they
    # are saved with the checkpoint, so a restarted trial keeps what it needed before).
    peak_memory_mb: float = 0.0
    peak_allocated_mb: float = 0.0
    peak_train_memory_mb: float = 0.0
    peak_eval_memory_mb: float = 0.0  # 0: not evaluated yet

    def note_memory(self, reading: MemoryReading, *, evaluating: bool) -> None:
        """Takes one phase's reading (training, or an evaluation) into the peaks."""
        if evaluating:
            self.peak_eval_memory_mb = max(self.peak_eval_memory_mb, reading.needed_mb)
        else:
            self.peak_train_memory_mb = max(self.peak_train_memory_mb, reading.needed_mb)
        self.peak_memory_mb = max(self.peak_memory_mb, reading.needed_mb)
        self.peak_allocated_mb = max(self.peak_allocated_mb, reading.allocated_mb)

    def memory_peaks(self) -> list[float]:
        return [
            self.peak_memory_mb,
            self.peak_allocated_mb,
            self.peak_train_memory_mb,
            self.peak_eval_memory_mb,
        ]

    def set_memory_peaks(self, peaks: list[float]) -> None:
        (
            self.peak_memory_mb,
            self.peak_allocated_mb,
            self.peak_train_memory_mb,
            self.peak_eval_memory_mb,
        ) = peaks

    def take_loss(self) -> float:
        mean = self.loss_sum / self.loss_batches if self.loss_batches else float("nan")
        self.loss_sum, self.loss_batches = 0.0, 0
        return mean
