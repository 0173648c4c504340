"""The learning-rate schedule and the time budget."""

import pytest

from qa_ray.config.trial import TrainConfig
from qa_ray.training.schedule import TimeBudget, lr_factor


def test_warmup_then_linear_decay_to_zero():
    cfg = TrainConfig(warmup_steps=4)
    assert [round(lr_factor(s, cfg, 14), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_factor(4, cfg, 14) == 1.0
    assert lr_factor(9, cfg, 14) == pytest.approx(0.5)
    assert lr_factor(14, cfg, 14) == 0.0 and lr_factor(20, cfg, 14) == 0.0


def test_cosine_and_constant_and_replanned_horizon():
    cos = TrainConfig(lr_scheduler="cosine", warmup_ratio=0.0)
    assert lr_factor(5, cos, 10) == pytest.approx(0.5)
    const = TrainConfig(lr_scheduler="constant_with_warmup", warmup_steps=2)
    assert lr_factor(50, const, 10) == 1.0
    # a time budget shortens the horizon mid-run: the same step is later in the schedule
    lin = TrainConfig()
    assert lr_factor(40, lin, 50) < lr_factor(40, lin, 100)


def test_time_budget_replans_from_the_running_step_time_and_resumes_its_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("qa_ray.training.schedule.time.perf_counter", lambda: now[0])
    budget = TimeBudget(seconds=60.0, planned_steps=1000)
    budget.start()
    now[0] += 6.0  # 3 steps of 2 s
    budget.replan(3)
    assert budget.horizon == 30 and not budget.expired()
    state = budget.state_dict()
    resumed = TimeBudget(seconds=60.0, planned_steps=1000)
    resumed.load_state_dict(state)
    now[0] += 1000.0  # a restart takes a while: not counted
    resumed.start()
    now[0] += 54.0
    assert resumed.elapsed() == pytest.approx(60.0) and resumed.expired()
    assert resumed.horizon == 30
    unbudgeted = TimeBudget(seconds=None, planned_steps=7)
    unbudgeted.replan(5)
    assert unbudgeted.horizon == 7 and not unbudgeted.expired()
