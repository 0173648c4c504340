"""The learning-rate schedule (linear warmup then decay) and the wall-clock time budget
(``train.max_train_seconds``), which re-plans the step count from the running step time.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qa_ray.config.trial import TrainConfig

    pass

__all__ = ["TimeBudget", "lr_factor"]

logger = logging.getLogger(__name__)


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
