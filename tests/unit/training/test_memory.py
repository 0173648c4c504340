"""What a trial's peak memory is: on GPU the caching allocator's peak reserve plus what the
process holds outside it (CUDA's functions emulated: no GPU here), on CPU the peak RSS, reset
between phases."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from qa_ray.training import memory
from qa_ray.training.memory import MB, PeakMeter

CUDA = torch.device("cuda", 0)


@pytest.fixture
def cuda(monkeypatch):
    """An emulated device: 10 GB used by this process before the trial (the context: 600 MB,
    the allocator's reserve 0), then what a test sets in ``state``."""
    state = {"reserved": 0, "max_reserved": 0, "max_allocated": 0, "used": 600 * MB, "resets": 0}
    total = 24_000 * MB

    def reset(device=None):
        state["resets"] += 1
        state["max_reserved"] = state["reserved"]

    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: state["max_reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: state["max_allocated"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (total - state["used"], total))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: `import` raises
    return state


def test_on_gpu_the_peak_is_the_reserve_plus_the_context_not_the_tensors(cuda):
    meter = PeakMeter(CUDA)
    assert meter.outside_mb == 600
    cuda.update(reserved=4000 * MB, max_reserved=5000 * MB, max_allocated=3000 * MB)
    reading = meter.read()
    assert (reading.needed_mb, reading.allocated_mb) == (5600, 3000)
    assert "max reserved" in meter.describe() and "600 MB" in meter.describe()


def test_a_phase_starts_from_a_reset_peak(cuda):
    meter = PeakMeter(CUDA)
    assert cuda["resets"] == 1
    cuda.update(reserved=2000 * MB, max_reserved=5000 * MB)
    meter.reset()
    assert cuda["resets"] == 2 and meter.read().needed_mb == 2600


def test_nvml_per_process_counts_nccl_buffers_allocated_later(cuda, monkeypatch):
    """NCCL's buffers come at the first collective, outside the allocator: NVML's count for
    this process, less the allocator's reserve, is what the peak adds."""
    import os

    used = {"mb": 600}

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            types.SimpleNamespace(pid=1, usedGpuMemory=99_999 * MB),  # a neighbour
            types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=used["mb"] * MB),
        ],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    cuda["used"] = 20_000 * MB  # the device is shared: device-wide numbers would count others
    meter = PeakMeter(CUDA)
    assert meter.outside_mb == 600
    cuda.update(reserved=4000 * MB, max_reserved=4000 * MB, max_allocated=3500 * MB)
    used["mb"] = 4000 + 600 + 400  # NCCL: 400 MB
    assert meter.read().needed_mb == 4000 + 1000


def test_on_cpu_the_peak_is_the_peak_rss_and_resets_between_phases():
    """In a fresh process (a long test process's heap can hand back pages it already holds):
    200 MB touched raise the peak RSS, and a reset starts the next phase low."""
    import subprocess
    import sys

    if not PeakMeter(torch.device("cpu")).resettable:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    program = (
        "import numpy as np, torch\n"
        "from qa_ray.training.memory import PeakMeter\n"
        "MB = 1024 * 1024\n"
        "meter = PeakMeter(torch.device('cpu'))\n"
        "meter.reset()\n"
        "before = meter.read().needed_mb\n"
        "block = np.ones(200 * MB // 8)\n"
        "during = meter.read()\n"
        "assert during.needed_mb >= before + 150, (before, during)\n"
        "assert during.allocated_mb == during.needed_mb\n"
        "del block\n"
        "meter.reset()\n"
        "assert meter.read().needed_mb < during.needed_mb - 150\n"
        "assert 'peak RSS' in meter.describe()\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_a_resettable_peak_each_phase_reads_the_peak_so_far(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    meter = PeakMeter(torch.device("cpu"))
    assert not meter.resettable and "not resettable" in meter.describe()
    meter.reset()  # does nothing, and says nothing
    assert meter.read().needed_mb > 0
