"""Memory: the peak a trial reached (CUDA peak allocated on GPU, peak RSS on CPU), out-of-memory
recognised as an answer (:class:`TrialOutOfMemory`), and memory freed after one.
"""

from __future__ import annotations

import gc
import logging
import resource
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from qa_ray.training.trial import Trial

    pass

__all__ = ["TrialOutOfMemory", "is_out_of_memory"]

logger = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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


def free_memory(trial: Trial) -> None:
    trial.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if trial.session.device.type == "cuda":
        torch.cuda.empty_cache()
