"""Budgets in the training loop: a trial that breaks one stops at that measurement and says
so; a trial that runs out of memory is reported infeasible with the memory it held (tiny
random-init models, CPU; the memory readings and CUDA's out-of-memory error are emulated)."""

from __future__ import annotations

import pytest
import torch

from qa_ray import metrics as m
from qa_ray.cli import main
from qa_ray.training import loop
from qa_ray.training.loop import train_loop_per_worker
from qa_ray.training.memory import OOM_MARK, MemoryReading, TrialOutOfMemory
from tests.helpers import RecordingSession, trial_dict

pytestmark = pytest.mark.integration


def _cfg(tiny_model_dir, tmp_path, constraints, **over):
    cfg = trial_dict(
        tiny_model_dir("bert"),
        tmp_path,
        **{"train__max_steps": 6, "train__eval_steps": 2, "data__max_eval_examples": 4, **over},
    )
    cfg["constraints"] = constraints
    return cfg


def test_a_model_over_a_size_budget_takes_no_step(tiny_model_dir, tmp_path):
    session = RecordingSession()
    out = train_loop_per_worker(
        _cfg(tiny_model_dir, tmp_path, ["trainable_params <= 1000"]), session
    )
    assert [r[m.STEP] for r in session.reports] == [0]
    assert out[m.INFEASIBLE] == 1.0
    assert out[m.INFEASIBLE_REASON].startswith("trainable_params ")
    assert "breaks the budget trainable_params <= 1000" in out[m.INFEASIBLE_REASON]
    assert m.EVAL_F1 not in out  # stopped unscored
    assert session.results[0][m.INFEASIBLE] == 1.0  # the trial's saved results say it too


class _Meter:
    """Stands in for :class:`~qa_ray.training.memory.PeakMeter`: the memory in use is
    ``level`` (allocated: 80 % of it); a reading is the largest since the last reset."""

    level = 100.0
    live: list[_Meter] = []
    context_source = None  # as on CPU: no CUDA context

    def __init__(self, device, shared=False):
        self.peak = self.level
        _Meter.live.append(self)

    @classmethod
    def set(cls, level):
        cls.level = level
        for meter in cls.live:
            meter.peak = max(meter.peak, level)

    def describe(self):
        return "emulated"

    def reset(self):
        self.peak = _Meter.level

    def read(self):
        self.peak = max(self.peak, _Meter.level)
        return MemoryReading(self.peak, 0.8 * self.peak)


def _emulate_memory(monkeypatch, train=None, evaluation=None):
    """The memory in use: ``train(step)`` while training, ``evaluation`` MB while evaluating
    (it falls back to training's level after)."""
    from qa_ray.tasks import extractive

    monkeypatch.setattr(loop, "PeakMeter", _Meter)
    _Meter.level, _Meter.live = 100.0, []
    real_loss, real_evaluate = extractive.loss, extractive.evaluate
    calls = []

    def loss(model, batch):
        calls.append(1)
        if train is not None:
            _Meter.set(train(len(calls)))
        return real_loss(model, batch)

    def evaluate(*args, **kwargs):
        before = _Meter.level
        if evaluation is not None:
            _Meter.set(evaluation)
        out = real_evaluate(*args, **kwargs)
        _Meter.level = before
        return out

    monkeypatch.setattr(extractive, "loss", loss)
    monkeypatch.setattr(extractive, "evaluate", evaluate)


def test_peak_memory_over_budget_stops_at_that_step(tiny_model_dir, tmp_path, monkeypatch):
    """The peak grows 10 MB a step; the budget is broken after step 3 of 6."""
    _emulate_memory(monkeypatch, train=lambda step: 100.0 + 10 * step)
    session = RecordingSession()
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, ["peak_memory_mb <= 125"]), session)
    assert out[m.STEP] == 3
    assert out[m.INFEASIBLE] == 1.0
    assert out[m.PEAK_MEMORY_MB] == 130
    assert out[m.INFEASIBLE_REASON] == "peak_memory_mb 130 breaks the budget peak_memory_mb <= 125"
    assert [r[m.STEP] for r in session.reports] == [2, 3]
    assert m.EVAL_F1 in session.reports[0] and m.EVAL_F1 not in session.reports[1]


def test_an_evaluation_over_the_memory_budget_ends_the_trial_infeasible(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Training holds 100 MB, its first evaluation (step 2) 200 MB: that report is the
    trial's last, scored and infeasible, with the two peaks apart."""
    _emulate_memory(monkeypatch, evaluation=200.0)
    session = RecordingSession()
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, ["peak_memory_mb <= 150"]), session)
    assert [r[m.STEP] for r in session.reports] == [2]
    assert out[m.FINAL_REPORT] == 1.0 and out[m.INFEASIBLE] == 1.0
    assert out[m.INFEASIBLE_REASON] == "peak_memory_mb 200 breaks the budget peak_memory_mb <= 150"
    assert m.EVAL_F1 in out  # it was scored: the evaluation is what broke the budget
    assert (out[m.PEAK_TRAIN_MEMORY_MB], out[m.PEAK_EVAL_MEMORY_MB]) == (100.0, 200.0)
    assert (out[m.PEAK_MEMORY_MB], out[m.PEAK_ALLOCATED_MB]) == (200.0, 160.0)
    assert session.results[0][m.INFEASIBLE] == 1.0


def test_an_evaluation_at_step_0_over_the_budget_takes_no_step(
    tiny_model_dir, tmp_path, monkeypatch
):
    _emulate_memory(monkeypatch, evaluation=200.0)
    session = RecordingSession()
    cfg = _cfg(tiny_model_dir, tmp_path, ["peak_memory_mb <= 150"], train__eval_on_start=True)
    out = train_loop_per_worker(cfg, session)
    assert [r[m.STEP] for r in session.reports] == [0]
    assert out[m.INFEASIBLE] == 1.0 and out[m.FINAL_REPORT] == 1.0


def test_training_and_evaluation_peaks_are_logged_apart(tiny_model_dir, tmp_path):
    """The real meter (peak RSS on CPU): every report has both peaks once evaluated, and
    peak_memory_mb is the larger."""
    session = RecordingSession()
    train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), session)
    for r in session.reports:
        assert r[m.PEAK_TRAIN_MEMORY_MB] > 0 and r[m.PEAK_EVAL_MEMORY_MB] > 0
        assert r[m.PEAK_MEMORY_MB] == max(r[m.PEAK_TRAIN_MEMORY_MB], r[m.PEAK_EVAL_MEMORY_MB])
        assert r[m.PEAK_ALLOCATED_MB] == r[m.PEAK_MEMORY_MB]  # CPU: one number
    peaks = [r[m.PEAK_MEMORY_MB] for r in session.reports]
    assert peaks == sorted(peaks)  # the largest so far


def test_the_peak_survives_a_restart(tiny_model_dir, tmp_path, monkeypatch):
    """A checkpoint keeps the peaks: the resumed segment reports the largest over both, and a
    budget the first segment broke stays broken after the restart (no step is taken)."""
    import json

    _emulate_memory(monkeypatch)
    first = RecordingSession(keep_checkpoints=str(tmp_path / "ckpt"))
    cfg = _cfg(tiny_model_dir, tmp_path, [], train__checkpoint_steps=2)
    train_loop_per_worker({**cfg, "train": {**cfg["train"], "max_steps": 4}}, first)
    ckpt = tmp_path / "ckpt" / "step_000002"
    state = json.loads((ckpt / "training_state.json").read_text())
    assert state["meters"]["peak_memory_mb"] == 100.0
    state["meters"]["peak_memory_mb"] = 5000.0  # the first segment's node held more
    state["meters"]["peak_train_memory_mb"] = 5000.0
    (ckpt / "training_state.json").write_text(json.dumps(state))

    rest = RecordingSession(resume_from=str(ckpt))
    out = train_loop_per_worker(cfg, rest)
    assert out[m.STEP] == 6 and out[m.PEAK_MEMORY_MB] == 5000.0
    assert out[m.PEAK_TRAIN_MEMORY_MB] == 5000.0 and out[m.PEAK_EVAL_MEMORY_MB] == 100.0
    over = RecordingSession(resume_from=str(ckpt))
    out = train_loop_per_worker({**cfg, "constraints": ["peak_memory_mb <= 1000"]}, over)
    assert out[m.INFEASIBLE] == 1.0 and out[m.STEP] == 2
    assert [r[m.STEP] for r in over.reports] == [2]


def test_within_budget_runs_to_the_end(tiny_model_dir, tmp_path):
    out = train_loop_per_worker(
        _cfg(tiny_model_dir, tmp_path, ["peak_memory_mb <= 1e9", "trainable_params <= 1e12"]),
        RecordingSession(),
    )
    assert out[m.STEP] == 6 and m.INFEASIBLE not in out and m.EVAL_F1 in out


def _oom_at(step: int, monkeypatch, error=None):
    """The task's loss raises CUDA's out-of-memory error at the given optimizer step."""
    from qa_ray.tasks import extractive

    real = extractive.loss
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == step:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch)

    monkeypatch.setattr(extractive, "loss", loss)


def test_out_of_memory_is_reported_infeasible_with_the_memory_held(
    tiny_model_dir, tmp_path, monkeypatch
):
    _oom_at(4, monkeypatch)
    session = RecordingSession()
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), session)
    assert out[m.INFEASIBLE] == 1.0
    assert out[m.STEP] == 3
    assert out[m.PEAK_MEMORY_MB] > 0
    assert out[m.INFEASIBLE_REASON].startswith("out of memory at ")
    assert (
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        in (out[m.INFEASIBLE_REASON])
    )


def test_the_cpu_allocator_failing_is_out_of_memory_too(tiny_model_dir, tmp_path, monkeypatch):
    _oom_at(2, monkeypatch, RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), RecordingSession())
    assert out[m.INFEASIBLE] == 1.0 and out[m.STEP] == 1


def test_other_errors_still_fail(tiny_model_dir, tmp_path, monkeypatch):
    _oom_at(2, monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), RecordingSession())


def test_out_of_memory_on_one_of_several_workers_fails_the_worker_group(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Its peers may wait in a collective it never joins: it raises (Ray Train stops the group)
    with the memory it held, which the sweep records."""
    _oom_at(2, monkeypatch)
    session = RecordingSession()
    session.world_size = 2  # no process group: the error comes before any collective
    monkeypatch.setattr(loop, "reduce_values", lambda values, op, session: values)
    monkeypatch.setattr(loop, "from_rank0", lambda values, session: values)
    monkeypatch.setattr(session, "prepare", lambda model: model)
    with pytest.raises(TrialOutOfMemory, match="out of memory at") as info:
        train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), session)
    assert info.value.peak_memory_mb > 0
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    import pickle

    again = pickle.loads(pickle.dumps(info.value))  # crosses Ray's process boundary intact
    assert (again.peak_memory_mb, str(again)) == (info.value.peak_memory_mb, str(info.value))


def test_the_attempt_after_an_out_of_memory_ends_infeasible_at_once(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Ray Train restarts a failed worker group (up to `resources.max_failures`, -1: forever):
    the attempt that ran out of memory leaves a mark, and the next one reads it and reports
    the trial infeasible without building anything, so it is not retried again."""
    _oom_at(2, monkeypatch)
    session = RecordingSession()
    session.world_size = 2
    monkeypatch.setattr(loop, "reduce_values", lambda values, op, session: values)
    monkeypatch.setattr(loop, "from_rank0", lambda values, session: values)
    monkeypatch.setattr(session, "prepare", lambda model: model)
    cfg = _cfg(tiny_model_dir, tmp_path, [])
    with pytest.raises(TrialOutOfMemory) as info:
        train_loop_per_worker(cfg, session)
    mark = session.notes[OOM_MARK]
    assert mark["peak_memory_mb"] == info.value.peak_memory_mb > 0
    assert mark["reason"] == str(info.value)

    def no_setup(*args, **kwargs):
        raise AssertionError("the attempt after an out-of-memory built the trial again")

    monkeypatch.setattr(loop, "setup", no_setup)
    out = train_loop_per_worker(cfg, session)  # the restarted group: same storage
    assert out[m.INFEASIBLE] == 1.0 and out[m.FINAL_REPORT] == 1.0
    assert out[m.PEAK_MEMORY_MB] == info.value.peak_memory_mb
    assert out[m.INFEASIBLE_REASON] == f"{info.value} (the attempt before; not retried)"
    assert session.reports[-1] == out


def test_one_worker_leaves_no_mark(tiny_model_dir, tmp_path, monkeypatch):
    _oom_at(2, monkeypatch)
    session = RecordingSession()
    assert train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, []), session)[m.INFEASIBLE]
    assert session.notes == {}


def test_qa_ray_train_exits_1_when_over_budget(tiny_model_dir, tmp_path, capsys):
    import yaml

    cfg = _cfg(tiny_model_dir, tmp_path, ["model_footprint_mb <= 0.01"])
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 1
    assert "stopped, infeasible: model_footprint_mb" in capsys.readouterr().out


def test_progress_reports_between_evaluations(tiny_model_dir, tmp_path):
    """Every `train.progress_seconds` (here: every step) a report with step, loss and peak
    memory, no scores and no checkpoint; evaluations as before."""
    session = RecordingSession()
    cfg = _cfg(tiny_model_dir, tmp_path, [], train__max_steps=4, train__progress_seconds=1e-9)
    train_loop_per_worker(cfg, session)
    assert [r[m.STEP] for r in session.reports] == [1, 2, 3, 4]
    assert [m.EVAL_F1 in r for r in session.reports] == [False, True, False, True]
    assert [r.get(m.EVAL_SECONDS, 0) > 0 for r in session.reports] == [False, True, False, True]
    assert all(r[m.PEAK_MEMORY_MB] > 0 and r[m.TRAIN_LOSS] > 0 for r in session.reports)
    quiet = RecordingSession()
    train_loop_per_worker({**cfg, "train": {**cfg["train"], "progress_seconds": 0}}, quiet)
    assert [r[m.STEP] for r in quiet.reports] == [2, 4]


def test_the_warmup_reported_is_over_the_horizon_the_time_budget_allows(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Under max_train_seconds the loop re-plans its schedule's horizon; the warmup it reports
    (what memory_aware judges by) is over that horizon, not over max_steps."""
    from qa_ray.training.schedule import TimeBudget

    def replan(self, step):  # as if the budget allowed 4 of the 6 planned steps
        self.horizon = 4

    monkeypatch.setattr(TimeBudget, "replan", replan)
    cfg = _cfg(tiny_model_dir, tmp_path, [], train__warmup_ratio=0.5,
               train__max_train_seconds=3600.0)  # fmt: skip
    out = train_loop_per_worker(cfg, RecordingSession())
    assert out[m.PLANNED_STEPS] == 6 and out[m.WARMUP_STEPS] == 2  # 0.5 x 4, not 0.5 x 6
