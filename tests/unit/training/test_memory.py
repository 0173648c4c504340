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


# ---- a packed trial's cap ---------------------------------------------------------------------


@pytest.fixture
def capped(cuda, monkeypatch):
    """The emulated 24 000 MB device, recording the fractions the process capped itself at."""
    fractions = []
    props = types.SimpleNamespace(total_memory=24_000 * MB)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: fractions.append(f)
    )
    return fractions


def test_a_packed_worker_caps_its_allocator_at_its_request_less_the_context(capped):
    # asked for 6000 MB; the context holds 600 outside the allocator: 5400 of 24 000
    assert memory.cap_device_memory(CUDA, 6000.0, 600.0) == pytest.approx(0.225)
    assert capped == [pytest.approx(0.225)]
    assert memory.cap_device_memory(CUDA, 90_000.0, 600.0) == 1.0  # never over the device
    assert memory.cap_device_memory(torch.device("cpu"), 6000.0, 0.0) is None
    assert len(capped) == 2


def test_a_packed_meter_does_not_count_its_neighbours_memory_as_its_own(cuda, capped):
    """Without NVML the context is read as the device's used memory less the allocator's
    reserve, which on a shared GPU holds the neighbours' trials: a packed meter (and its cap)
    takes the usual CUDA context instead; a cap at or under it is refused."""
    cuda["used"] = 10_600 * MB  # a neighbour's 10 GB beside this process's context
    assert PeakMeter(CUDA).outside_mb == 10_600  # alone it would call it all its own
    shared = PeakMeter(CUDA, shared=True)
    assert shared.outside_mb == memory.CUDA_CONTEXT_MB and not shared.per_process
    with pytest.raises(ValueError, match="leaves nothing beside"):
        memory.cap_device_memory(CUDA, 400.0, shared.outside_mb)


def test_nvml_is_asked_for_the_gpu_torch_sees(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)),
        nvmlDeviceGetHandleByUUID=lambda u: calls.append(("uuid", u)),
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    memory._nvml_handle(fake, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e")
    memory._nvml_handle(fake, 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    memory._nvml_handle(fake, 2)
    assert calls == [("index", 5), ("uuid", "GPU-8f2e"), ("index", 2)]


def test_the_failed_allocation_is_read_from_cudas_message():
    msg = (
        "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 23.68 GiB "
        "of which 1.12 GiB is free. Including non-PyTorch memory, this process has 5.20 GiB "
        "memory in use."
    )
    assert memory.tried_to_allocate_mb(msg) == 1536.0
    assert memory.tried_to_allocate_mb("Tried to allocate 20.00 MiB") == 20.0
    assert memory.tried_to_allocate_mb("DefaultCPUAllocator: can't allocate memory") is None


def test_an_out_of_memory_below_the_trials_own_cap_is_a_neighbours():
    own = memory.out_of_memory_is_own
    assert own(5900.0, 200.0, 6000.0)  # it needed more than it asked for: its answer
    assert not own(3000.0, 20.0, 6000.0)  # far below its cap: the device was full
    assert own(3000.0, 20.0, None) and own(3000.0, None, 6000.0)  # no cap / size: its own


def _loop_config(gpu_memory_mb):
    from tests.unit.sweep.test_resources import _cfg

    cfg = _cfg().trial_config().model_dump()
    cfg["resources"]["gpu_memory_mb"] = gpu_memory_mb
    return cfg


class _Session:
    device, world_rank, world_size = CUDA, 0, 1

    def __init__(self):
        self.notes = {}

    def read_note(self, name):
        return self.notes.get(name)

    def leave_note(self, name, payload):
        self.notes[name] = payload


def test_the_loop_caps_a_packed_worker_and_tells_a_neighbours_out_of_memory_apart(
    capped, cuda, monkeypatch
):
    """The loop sets the cap before building anything; an out-of-memory at 2000 MB held under
    a 6000 MB cap is raised as a neighbour's (no mark, no infeasible report: Ray Train retries
    it, the trial FAILs); at 5950 MB held it is the trial's own (infeasible)."""
    from qa_ray.training import loop

    held = {"reserved_mb": 1400}  # + the 600 MB context: 2000 MB held

    def setup(cfg, session, meter):
        assert capped or cfg.resources.gpu_memory_mb is None, "capped before the model is built"
        cuda["max_reserved"] = held["reserved_mb"] * MB
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.")

    monkeypatch.setattr(loop, "setup", setup)
    session = _Session()
    with pytest.raises(memory.NeighbourOutOfMemory, match="within its own cap of 6000 MB"):
        loop.train_loop_per_worker(_loop_config(6000.0), session)
    # packed: the context taken as the usual 500 MB (no NVML here to read its own)
    assert capped == [pytest.approx(5500 / 24_000)] and session.notes == {}
    held["reserved_mb"] = 5400  # 5900 MB held: + 20 is over 98 % of the cap
    with pytest.raises(memory.TrialOutOfMemory):
        loop.train_loop_per_worker(_loop_config(6000.0), session)
    capped.clear()
    with pytest.raises(memory.TrialOutOfMemory):  # not packed: no cap, every OOM its own
        loop.train_loop_per_worker(_loop_config(None), session)
    assert capped == []
