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
from qa_ray.training.memory import TrialOutOfMemory
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


def test_peak_memory_over_budget_stops_at_that_step(tiny_model_dir, tmp_path, monkeypatch):
    """The peak grows 10 MB a reading; the budget is broken at the 4th reading (step 3 of 6)."""
    readings = iter(range(100, 10_000, 10))
    monkeypatch.setattr(loop, "peak_memory_mb", lambda device: float(next(readings)))
    session = RecordingSession()
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path, ["peak_memory_mb <= 125"]), session)
    # readings: 100 before training, 110 after step 1, 120 after step 2 (then 130 for the
    # evaluation's report), 140 after step 3: over.
    assert out[m.STEP] == 3
    assert out[m.INFEASIBLE] == 1.0
    assert out[m.PEAK_MEMORY_MB] > 125
    assert out[m.INFEASIBLE_REASON] == "peak_memory_mb 140 breaks the budget peak_memory_mb <= 125"
    assert [r[m.STEP] for r in session.reports] == [2, 3]
    assert m.EVAL_F1 in session.reports[0] and m.EVAL_F1 not in session.reports[1]


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
