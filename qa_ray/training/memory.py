"""Memory: the peak a trial needs (:class:`PeakMeter`), out-of-memory recognised as an answer
(:class:`TrialOutOfMemory`), memory freed after one, and the mark a failed attempt leaves so
the next one does not run out of memory again (:func:`out_of_memory_mark`); a packed trial's
cap on its device memory (:func:`cap_device_memory`) and an out-of-memory below that cap told
apart as a neighbour's doing (:func:`out_of_memory_is_own`).

What a trial needs is what it held, not what its tensors used:

- on GPU, what PyTorch's caching allocator *reserved* at its peak plus what the process holds
  on the device outside it: the CUDA context, and with several workers NCCL's buffers. That sum
  is ``peak_memory_mb``, the number budgets and the objective use; the tensors' own peak
  (``torch.cuda.max_memory_allocated``) is logged beside it as ``peak_allocated_mb``. The
  allocator's numbers are this process's alone. Outside it, only NVML's per-process count is
  (``pynvml``, and a process NVML lists by its own pid: inside a container it lists host
  pids); the device's used memory counts every process on it. So the context is, in order
  (:data:`CONTEXT_SOURCES`, logged as the run's ``memory_context_source``):
  ``nvml_process``, NVML's count for this process less the reserve; ``measured``, the device's
  used memory less the reserve when the meter starts, where the trial has the device to itself
  (not packed, a whole GPU, and nothing beyond a context's size there); ``default``, the usual
  CUDA context (:data:`CUDA_CONTEXT_MB`) on a device the trial may share. A trial never counts
  another process's memory as its own;
- on CPU, the worker's peak RSS (``VmHWM``); ``peak_allocated_mb`` is the same number.

A :class:`PeakMeter` reads one phase at a time (training, then an evaluation, then training
again): it resets the device's peak between phases (``torch.cuda.reset_peak_memory_stats``, or
on Linux ``/proc/self/clear_refs``), so the training and evaluation peaks are logged apart.
Where the CPU peak cannot be reset, each phase reads the process's peak so far.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from qa_ray.training.trial import Trial

__all__ = [
    "MemoryReading",
    "NeighbourOutOfMemory",
    "PeakMeter",
    "TrialOutOfMemory",
    "cap_device_memory",
    "is_out_of_memory",
    "out_of_memory_is_own",
]

logger = logging.getLogger(__name__)

MB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class MemoryReading:
    """One phase's peak: what it needed (``needed_mb``: reserved + outside the allocator on GPU,
    peak RSS on CPU) and what its tensors used (``allocated_mb``: CUDA max allocated; on CPU the
    same as ``needed_mb``)."""

    needed_mb: float
    allocated_mb: float


class PeakMeter:
    """Reads the peak of the current phase on one device; :meth:`reset` starts the next phase.

    Create it before the trial allocates: on GPU it measures what the process already holds
    outside the caching allocator (the CUDA context) at that point.

    Args:
        device: the trial's device.
        shared: the trial may share the device with other processes (a fractional
            ``resources.gpus_per_worker``, packing): the device's used memory is never read
            as this process's own.
    """

    def __init__(self, device: torch.device, shared: bool = False):
        self.device = device
        self.outside_mb = 0.0  # GPU: context + NCCL + workspaces, the largest seen
        # How outside_mb was read (CONTEXT_SOURCES); None on CPU, where there is no context.
        self.context_source: str | None = None
        if device.type == "cuda":
            self.outside_mb, self.context_source = _outside_allocator_mb(device, shared)
            self.resettable = True
        else:
            self.resettable = _reset_rss_peak()
        self.reset()

    @property
    def per_process(self) -> bool:
        """Whether what the process holds outside the allocator is read for it alone (NVML)."""
        return self.context_source == "nvml_process"

    def describe(self) -> str:
        """For the one log line that says what ``peak_memory_mb`` is on this device."""
        if self.device.type == "cuda":
            return (
                "CUDA max reserved + memory outside the allocator "
                f"({self.outside_mb:.0f} MB now: context, NCCL; {self.context_source}); "
                "peak_allocated_mb is CUDA max allocated"
            )
        return "the worker's peak RSS" + (
            "" if self.resettable else " (not resettable here: evaluation reads the peak so far)"
        )

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _reset_rss_peak()

    def read(self) -> MemoryReading:
        if self.device.type != "cuda":
            rss = _peak_rss_mb()
            return MemoryReading(rss, rss)
        reserved = torch.cuda.max_memory_reserved(self.device) / MB
        allocated = torch.cuda.max_memory_allocated(self.device) / MB
        # NCCL allocates its buffers at the first collective, after the meter started.
        per_process = _process_used_mb(self.device)
        if per_process is not None:
            current = torch.cuda.memory_reserved(self.device) / MB
            self.outside_mb = max(self.outside_mb, per_process - current)
        return MemoryReading(reserved + self.outside_mb, allocated)


# What a CUDA context takes on a recent GPU (CUDA 12, lazy module loading: 300-550 MB), for a
# trial that may share its device and has no NVML to read its own.
CUDA_CONTEXT_MB = 500.0
# More than this outside the allocator when the meter starts is more than one context: another
# process holds memory on the device, and its used memory is not this process's.
CONTEXT_AT_MOST_MB = 2 * CUDA_CONTEXT_MB
CONTEXT_SOURCES = ("nvml_process", "measured", "default")


def _outside_allocator_mb(device: torch.device, shared: bool) -> tuple[float, str]:
    """What the process holds on ``device`` outside the allocator, and how that was read (one
    of :data:`CONTEXT_SOURCES`; see the module docstring)."""
    reserved = torch.cuda.memory_reserved(device) / MB
    free, total = torch.cuda.mem_get_info(device)  # creates the context if there is none yet
    per_process = _process_used_mb(device)
    if per_process is not None:
        return max(0.0, per_process - reserved), "nvml_process"
    device_outside = (total - free) / MB - reserved  # every process's, this one's context too
    if shared or device_outside > CONTEXT_AT_MOST_MB:
        if not shared:
            logger.info(
                "%.0f MB on %s outside this process's allocator is more than a CUDA context: "
                "another process uses the device; its memory is not counted",
                device_outside,
                device,
            )
        return CUDA_CONTEXT_MB, "default"
    return max(0.0, device_outside), "measured"


def _process_used_mb(device: torch.device) -> float | None:
    """This process's memory on ``device`` as the driver counts it (NVML), or None without
    ``pynvml``."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = _nvml_handle(pynvml, index)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return p.usedGpuMemory / MB
    except pynvml.NVMLError:  # containers often hide other PIDs, or NVML itself
        return None
    return None


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of torch's device ``index``, found by the card's UUID. CUDA numbers
    cards fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, NVML by PCI bus, so an index
    can name another card in each. Without a UUID from torch: by ``CUDA_VISIBLE_DEVICES``
    (Ray sets it per worker), which names cards by index or UUID."""
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AssertionError, AttributeError, RuntimeError):  # no CUDA, or a torch without it
        uuid = ""
    if uuid:
        return pynvml.nvmlDeviceGetHandleByUUID(
            uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        )
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if index < len(visible):
        name = visible[index]
        if name.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(name))
        return pynvml.nvmlDeviceGetHandleByUUID(name)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _peak_rss_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_rss_peak() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs sets the peak RSS to the current RSS."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


# ---- out of memory ---------------------------------------------------------------------------


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


# The mark a worker that ran out of memory leaves for the next attempt of its trial (several
# workers: the group fails, and Ray Train restarts it up to `resources.max_failures` times).
OOM_MARK = "out_of_memory.json"


def out_of_memory_mark(peak_mb: float, reason: str) -> dict[str, float | str]:
    return {"peak_memory_mb": peak_mb, "reason": reason}


# ---- a packed trial's cap ---------------------------------------------------------------------


def cap_device_memory(device: torch.device, cap_mb: float, outside_mb: float) -> float | None:
    """Caps this process's caching allocator so that it and what the process holds outside it
    (``outside_mb``: the CUDA context) stay within ``cap_mb``; returns the fraction of the
    device set, or None on a device without one (CPU: Ray's memory monitor and the node's
    RAM are the limit there).

    Several trials share a GPU when packed by predicted memory: with the cap, a trial that
    needs more than it asked for runs out of memory itself, and its neighbours never do.
    """
    if device.type != "cuda":
        return None
    if cap_mb <= outside_mb:
        raise ValueError(
            f"resources.gpu_memory_mb {cap_mb:.0f} leaves nothing beside the {outside_mb:.0f} MB "
            "the process holds outside the allocator (the CUDA context)"
        )
    total_mb = torch.cuda.get_device_properties(device).total_memory / MB
    fraction = min(1.0, (cap_mb - outside_mb) / total_mb)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


_TRIED = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B)")
_UNITS = {"K": 2**-10, "M": 1.0, "G": 2**10, "T": 2**20}


def tried_to_allocate_mb(message: str) -> float | None:
    """The failed allocation's size from CUDA's out-of-memory message, or None."""
    found = _TRIED.search(message)
    return float(found.group(1)) * _UNITS[found.group(2)[0]] if found else None


def out_of_memory_is_own(held_mb: float, tried_mb: float | None, cap_mb: float | None) -> bool:
    """Whether an out-of-memory is the trial's own: without a cap, always; with one, when what
    it held plus the allocation that failed is over the cap (2 % slack for the allocator's
    rounding). Below its cap the device itself was full: a neighbour took the memory."""
    if cap_mb is None or tried_mb is None:
        return True
    return held_mb + tried_mb > 0.98 * cap_mb


class NeighbourOutOfMemory(RuntimeError):
    """The device ran out of memory while the trial was within its own cap: another process
    took it. Not the configuration's answer: the trial fails and Ray Train restarts it
    (``resources.max_failures``); Optuna is told FAIL, never infeasible."""
