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
    assert meter.outside_mb == 600 and meter.context_source == "nvml_process"
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


def test_a_meter_never_counts_its_neighbours_memory_as_its_own(cuda, capped):
    """Without NVML the device's used memory counts every process on it. A meter that may
    share the device (packed), or that finds more than a context's worth there at its start,
    takes the usual CUDA context instead; alone on it, the reading is its own context."""
    assert (PeakMeter(CUDA).outside_mb, PeakMeter(CUDA).context_source) == (600, "measured")
    shared = PeakMeter(CUDA, shared=True)  # packed: what it reads may hold a neighbour's
    assert shared.outside_mb == memory.CUDA_CONTEXT_MB and shared.context_source == "default"
    assert not shared.per_process and "default" in shared.describe()
    cuda["used"] = 10_600 * MB  # a neighbour's 10 GB beside this process's context
    unmarked = PeakMeter(CUDA)
    assert unmarked.outside_mb == memory.CUDA_CONTEXT_MB and unmarked.context_source == "default"
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


def test_nvml_is_asked_by_the_uuid_of_the_card_torch_calls_index(monkeypatch):
    """CUDA's default order (fastest first) is not NVML's (PCI bus): CUDA_VISIBLE_DEVICES=1,0
    and torch's 0 is another card to NVML. The UUID torch reports names the same card."""
    calls = []
    fake = types.SimpleNamespace(
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)),
        nvmlDeviceGetHandleByUUID=lambda u: calls.append(("uuid", u)),
    )
    cards = {0: "58389fea-1c2b-4a6e-9d3f-0b1c2d3e4f50", 1: "0b7c9a1e-aaaa-bbbb-cccc-000000000001"}
    monkeypatch.setattr(
        memory.torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(uuid=cards[i]),
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    memory._nvml_handle(fake, 0)
    memory._nvml_handle(fake, 1)
    assert calls == [("uuid", f"GPU-{cards[0]}"), ("uuid", f"GPU-{cards[1]}")]


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


# ---- two trials on one GPU ---------------------------------------------------------------------


class _SharedGPU:
    """One emulated 24 000 MB GPU and two processes on it (no NVML). CUDA's calls answer for
    the process in ``current``: its allocator's reserve and peak are its own, the device's free
    memory is what every process left."""

    total = 24_000 * MB

    def __init__(self, monkeypatch):
        self.procs: dict[str, dict[str, float]] = {}
        self.current = ""
        own = lambda key: lambda d=None: self.procs[self.current][key]  # noqa: E731
        monkeypatch.setattr(torch.cuda, "memory_reserved", own("reserved"))
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", own("max_reserved"))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", own("max_reserved"))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: None)
        monkeypatch.setattr(torch.cuda, "mem_get_info", self._mem_get_info)
        monkeypatch.setitem(sys.modules, "pynvml", None)

    def _mem_get_info(self, device=None):
        used = sum(p["context"] + p["reserved"] for p in self.procs.values())
        return self.total - used, self.total

    def start(self, name: str, context_mb: float) -> None:
        """A process creates its CUDA context, nothing in its allocator yet."""
        self.procs[name] = {"context": context_mb * MB, "reserved": 0, "max_reserved": 0}
        self.current = name

    def hold(self, name: str, reserved_mb: float) -> None:
        self.procs[name].update(reserved=reserved_mb * MB, max_reserved=reserved_mb * MB)


@pytest.mark.parametrize("gpus_per_worker", [0.5, 1.0])
@pytest.mark.parametrize("order", ["A first", "B first"])
def test_two_trials_on_one_gpu_each_report_their_own_peak(monkeypatch, order, gpus_per_worker):
    """Trial A holds 7 GiB, trial B's own peak is about 3.6 GiB (a 520 MB context each). Read
    as the device's used memory less its reserve at start, B reported A's memory too: 10.6 GiB,
    over its 9500 MB budget at the first step. Each meter is the one the loop builds: packed
    (0.5 GPU) it never reads the device as its own; on a whole GPU it reads its own context
    when it starts alone, and takes the usual context when a neighbour is already there."""
    from qa_ray.training import loop

    gpu = _SharedGPU(monkeypatch)
    own = {"A": 7168.0, "B": 3686.0}  # reserve + context: what each truly holds at its peak
    meters: dict[str, PeakMeter] = {}

    class Built(Exception):
        pass

    def setup(cfg, session, meter):
        meters[gpu.current] = meter
        raise Built  # the meter is all this test needs of the loop

    monkeypatch.setattr(loop, "setup", setup)
    config = _loop_config(None)
    config["resources"]["gpus_per_worker"] = gpus_per_worker
    for name in "AB" if order == "A first" else "BA":
        gpu.start(name, 520.0)
        with pytest.raises(Built):
            loop.train_loop_per_worker(config, _Session())
        gpu.hold(name, own[name] - 520.0)  # then trains to its peak, and stays there

    for name, meter in meters.items():
        gpu.current = name
        reported = meter.read().needed_mb
        assert abs(reported - own[name]) <= 0.05 * own[name], (name, reported)
    gpu.current = "B"
    assert meters["B"].read().needed_mb < 9500  # B's budget holds
    first, second = ("A", "B") if order == "A first" else ("B", "A")
    expected = "measured" if gpus_per_worker == 1.0 else "default"
    assert meters[first].context_source == expected
    assert meters[second].context_source == "default"


def test_a_gpu_reports_say_how_the_context_was_counted(cuda, tiny_model_dir, tmp_path):
    """Every report of a GPU trial carries ``memory_context_source``, for the run's params
    (a tiny CPU trial with an emulated GPU meter, stopped by a size budget before a step)."""
    from qa_ray import metrics as m
    from qa_ray.config.trial import TrialConfig
    from qa_ray.training import loop
    from tests.helpers import RecordingSession, trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path)
    cfg["constraints"] = ["trainable_params <= 1000"]
    session = RecordingSession()
    trial, meters = loop.setup(TrialConfig.model_validate(cfg), session, PeakMeter(CUDA))
    out = loop.train(trial, meters)
    assert out[m.MEMORY_CONTEXT_SOURCE] == "measured"
    assert [r[m.MEMORY_CONTEXT_SOURCE] for r in session.reports] == ["measured"]
