"""The memory-aware rule on hand-made rungs, and its selection from a sweep config."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import TrialScheduler

from qa_ray import metrics as m
from qa_ray.pareto import parse_constraint
from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE
OBJECTIVES = [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")]


def r(step, f1, mb, **more):
    return {m.STEP: step, m.EVAL_F1: f1, m.PEAK_MEMORY_MB: mb, **more}


def rule(**kw):
    return MemoryAwareStopping(OBJECTIVES, **{"grace": 10, "noise_floor": 1.0, **kw})


def test_stopped_only_behind_a_trial_with_no_more_memory_by_more_than_the_noise_floor():
    s = rule()
    assert s.decide("lora", r(10, 40.0, 3000)) == GO
    assert s.decide("full", r(10, 70.0, 9000)) == GO  # more memory: nothing with less beats it
    assert s.decide("close", r(10, 39.5, 3500)) == GO  # behind lora, within the noise floor
    assert s.decide("poor", r(10, 30.0, 3500)) == STOP  # lora: less memory, 10 points ahead
    assert s.decide("mid", r(10, 60.0, 5000)) == GO  # on the front: kept, as MO-ASHA may not
    assert s.stopped == {"poor": 0}


def test_memory_slack_lets_a_slightly_leaner_trial_stop_behind_a_far_better_one():
    for slack, decision in ((0.0, GO), (0.1, STOP)):
        s = rule(memory_slack=slack)
        assert s.decide("tiny", r(10, 5.0, 1000)) == GO
        assert s.decide("good", r(10, 60.0, 3000)) == GO
        # 5 % leaner than "good", 30 points behind: only a thin strip of hypervolume
        assert s.decide("lean", r(10, 30.0, 2850)) == decision
        assert s.decide("leaner", r(10, 30.0, 2500)) == GO  # 17 % leaner: out of reach
    with pytest.raises(ValueError, match="memory_slack must be >= 0"):
        rule(memory_slack=-0.1)


def test_the_lowest_memory_trial_and_the_warmup_are_never_judged():
    s = rule(warmup=30)
    assert s.decide("a", r(10, 70.0, 2000)) == GO
    assert s.decide("b", r(10, 10.0, 3000)) == GO  # far behind, but inside the warmup
    assert s.decide("a", r(30, 70.0, 2000)) == GO
    assert s.decide("b", r(30, 10.0, 3000)) == STOP  # past it
    s = rule()
    assert s.decide("big", r(10, 70.0, 9000)) == GO
    assert s.decide("tiny", r(10, 1.0, 1000)) == GO  # the lowest memory: never stopped
    assert s.decide("equal", r(10, 1.0, 1000)) == GO  # tied lowest: neither is stopped


def test_budgets_stop_at_once_and_bad_settings_are_refused():
    s = rule(constraints=[parse_constraint("peak_memory_mb <= 5000")])
    assert s.decide("over", r(2, 90.0, 6000)) == STOP
    with pytest.raises(ValueError, match="noise_floor must be >= 0"):
        rule(noise_floor=-1)


def test_a_sweep_selects_it(tmp_path):
    from qa_ray.sweep.config import SchedulerConfig
    from qa_ray.sweep.tuner import early_stopping

    class Cfg:  # the fields early_stopping reads
        objectives = [type("O", (), {"metric": m.EVAL_F1, "mode": "max"})]
        constraints = ["peak_memory_mb <= 22000"]
        model = type("M", (), {"task": "extractive"})
        search = type("S", (), {})
        train = type("T", (), {"warmup_ratio": 0.1, "warmup_steps": None})

    Cfg.search.scheduler = SchedulerConfig(
        type="memory_aware", grace=12, noise_floor=2.0, memory_slack=0.1
    )
    s = early_stopping(Cfg, tmp_path)
    assert isinstance(s, MemoryAwareStopping) and (s.grace, s.noise_floor) == (12, 2.0)
    assert s.memory_slack == 0.1
    assert s.warmup_ratio == 0.1  # the sweep's, for trials that do not sample one
    Cfg.train.warmup_ratio, Cfg.train.warmup_steps = None, 8  # the defaults' None: no error
    Cfg.search.scheduler = SchedulerConfig(type="memory_aware", grace=12)
    s = early_stopping(Cfg, tmp_path)
    assert (s.warmup_ratio, s.warmup_steps) == (0.0, 8.0)
    Cfg.search.scheduler = SchedulerConfig(grace=12)
    assert type(early_stopping(Cfg, tmp_path)).__name__ == "MOASHA"


def test_no_trial_is_judged_inside_its_own_learning_rate_warmup():
    """Steps as the time attribute: a trial's warmup is its warmup_ratio (sampled, in its
    Tune config, else the sweep's) times its planned steps, which every report carries."""
    from types import SimpleNamespace

    s = rule(warmup_ratio=0.05)

    def result(name, ratio, step, f1, mb):
        config = {} if ratio is None else {"warmup_ratio": ratio}
        trial = SimpleNamespace(trial_id=name, config=config)
        return s.on_trial_result(None, trial, r(step, f1, mb, **{m.PLANNED_STEPS: 100}))

    assert result("a", 0.0, 10, 70.0, 2000) == GO
    assert result("slow", "0.2", 10, 10.0, 3000) == GO  # warmup 20 steps: not judged at 10
    assert result("default", None, 10, 10.0, 3000) == STOP  # the sweep's 0.05: 5 steps
    assert s.warmups == {"a": 0.0, "slow": 20.0, "default": 5.0}
    assert result("a", 0.0, 30, 70.0, 2000) == GO
    assert result("slow", "0.2", 30, 10.0, 3000) == STOP  # past its warmup: judged


def test_the_warmup_the_loop_reports_wins_over_its_planned_steps():
    """Under max_train_seconds the loop warms up over the horizon it re-plans to: a trial
    planning 1000 steps with a ratio of 0.1 warms up over 3 steps when it will do 30, and is
    judged at rung 10; the planned steps alone would keep it out of judgement to step 100."""
    from types import SimpleNamespace

    s = rule()

    def result(name, step, f1, mb, **extra):
        trial = SimpleNamespace(trial_id=name, config={"warmup_ratio": 0.1})
        return s.on_trial_result(None, trial, r(step, f1, mb, **{m.PLANNED_STEPS: 1000}, **extra))

    assert result("lean", 10, 70.0, 2000, **{m.WARMUP_STEPS: 3}) == GO
    assert result("timed", 10, 10.0, 3000, **{m.WARMUP_STEPS: 3}) == STOP
    assert result("planned", 10, 10.0, 3000) == GO  # 0.1 x 1000 = 100 steps of warmup
    assert s.warmups == {"lean": 3.0, "timed": 3.0, "planned": 100.0}


def test_a_rung_judges_only_once_finished_trials_show_it_predicts_the_end(tmp_path):
    """min_signal: the rank correlation between rung values and final values of the trials
    that ran to their end gates the rung; the finals survive the state file."""
    fin = {m.FINAL_REPORT: 1.0}
    s = rule(min_signal=0.5, signal_trials=3, state_file=str(tmp_path / "s.json"))
    # three trials run to their end; at rung 10 they rank the other way round from the end
    for tid, early, final in (("a", 10.0, 60.0), ("b", 20.0, 40.0), ("c", 30.0, 20.0)):
        assert s.decide(tid, r(10, early, 5000)) == GO
        assert s.decide(tid, r(20, final, 5000, **fin)) == GO
    assert s.signal(0) == (pytest.approx(-1.0), 3)
    assert s.decide("lean", r(10, 50.0, 1000)) == GO
    assert s.decide("poor", r(10, 5.0, 3000)) == GO  # 45 behind "lean": but rung 10 says little
    for tid, early, final in (("d", 10.0, 10.0), ("e", 40.0, 80.0), ("f", 50.0, 90.0)):
        s.decide(tid, r(10, early, 6000))
        s.decide(tid, r(20, final, 6000, **fin))
    rho, n = s.signal(0)
    assert n == 6 and rho > 0.5  # now it does
    assert s.decide("poor2", r(10, 5.0, 3000)) == STOP
    again = rule(min_signal=0.5, signal_trials=3, state_file=str(tmp_path / "s.json"))
    assert again.finals == s.finals and again.signal(0) == s.signal(0)
    with pytest.raises(ValueError, match="min_signal must be in"):
        rule(min_signal=2)
    with pytest.raises(ValueError, match="signal_trials must be >= 3"):
        rule(min_signal=0.5, signal_trials=2)


def test_a_final_result_recorded_at_a_rung_does_not_vouch_for_that_rung():
    s = rule(min_signal=0.5, signal_trials=3)
    for tid, final in (("a", 60.0), ("b", 40.0), ("c", 20.0)):  # first result is the final
        s.decide(tid, r(10, final, 5000, **{m.FINAL_REPORT: 1.0}))
    assert s.signal(0)[1] == 0


def test_a_final_result_without_a_number_is_not_kept_as_a_final():
    s = rule(min_signal=0.5, signal_trials=3)
    s.decide("a", r(10, 50.0, 1000))
    s.decide("a", r(20, float("nan"), 1000, **{m.FINAL_REPORT: 1.0}))
    assert s.finals == {}
