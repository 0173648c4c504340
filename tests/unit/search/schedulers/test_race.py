"""The paired race's contract: it stops a trial only when a trial with no more memory beats it
on the same questions by a paired test at its stated error rate (corrected for the rivals and
rungs a trial meets), never the lowest-memory trial, never inside warmup, and needs no noise
floor."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from scipy import stats

from qa_ray import metrics as m
from qa_ray.pareto import parse_constraint
from qa_ray.search.schedulers.race import PairedRace, paired_p_value

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE
OBJECTIVES = [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")]


def scored(f1s, ids=None):
    ids = ids or [f"q{i}" for i in range(len(f1s))]
    return {"ids": ids, "f1": list(f1s), "exact": [int(v == 1.0) for v in f1s]}


def r(step, f1s, mb, **more):
    mean = 100.0 * sum(f1s) / len(f1s)
    return {m.STEP: step, m.EVAL_F1: mean, m.PEAK_MEMORY_MB: mb, m.PER_QUESTION: scored(f1s),
            **more}  # fmt: skip


def race(**kw):
    return PairedRace(OBJECTIVES, **{"grace": 10, "reduction_factor": 2, **kw})


def answers(n, p, rng):
    """n questions, each answered right (1.0) with probability p."""
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def test_paired_p_values_are_scipys_one_sided_tests():
    ahead, behind = [1, 1, 1, 0, 1, 0.5, 1], [0, 1, 0, 0, 0, 0.5, 1]
    # sign: 3 wins, 0 losses, ties left out
    assert paired_p_value(ahead, behind, "sign") == pytest.approx(0.125)
    d = [a - b for a, b in zip(ahead, behind, strict=True)]
    want = stats.ttest_1samp(d, 0.0, alternative="greater").pvalue
    assert paired_p_value(ahead, behind, "t") == pytest.approx(want)
    assert paired_p_value([1, 0], [1, 0], "sign") == 1.0  # nothing tells them apart
    assert paired_p_value([1, 0], [1, 0], "t") == 1.0
    assert paired_p_value(behind, ahead, "sign") == 1.0
    with pytest.raises(ValueError, match="test must be one of"):
        paired_p_value(ahead, behind, "wilcoxon")


def test_a_trial_behind_on_many_questions_stops_the_same_gap_on_few_does_not():
    """No noise floor: the number of questions decides how sure a gap is. 20 points on 300
    questions is sure; the same 20 points on 10 questions is not."""
    many = race()
    assert many.decide("lean", r(10, [1.0] * 150 + [0.0] * 150, 2000)) == GO
    assert many.decide("poor", r(10, [1.0] * 90 + [0.0] * 210, 3000)) == STOP
    assert many.beaten["poor"][:2] == ["lean", 0]
    few = race()
    assert few.decide("lean", r(10, [1.0] * 5 + [0.0] * 5, 2000)) == GO
    assert few.decide("poor", r(10, [1.0] * 3 + [0.0] * 7, 3000)) == GO


def test_the_lowest_memory_trial_and_a_leaner_one_behind_are_never_stopped():
    s = race()
    assert s.decide("big", r(10, [1.0] * 250 + [0.0] * 50, 9000)) == GO
    # far behind, but nothing at the rung needs no more memory than it
    assert s.decide("lowest", r(10, [0.0] * 300, 1000)) == GO
    # behind the big one by 80 points but leaner than it: only "lowest" may stop it, which
    # is not ahead
    assert s.decide("middle", r(10, [1.0] * 10 + [0.0] * 290, 5000)) == GO


def test_no_trial_is_raced_inside_its_learning_rate_warmup():
    s = race()

    def result(name, step, f1s, mb, warmup):
        trial = SimpleNamespace(trial_id=name, config={})
        return s.on_trial_result(None, trial, r(step, f1s, mb, **{m.WARMUP_STEPS: warmup}))

    good, poor = [1.0] * 200 + [0.0] * 100, [1.0] * 50 + [0.0] * 250
    assert result("lean", 10, good, 2000, 0) == GO
    assert result("warming", 10, poor, 3000, 15) == GO  # rung 10 is inside its 15 steps
    assert "warming" not in s.raced  # no share of its error rate spent there
    assert result("warm", 10, poor, 3000, 5) == STOP
    assert result("lean", 20, good, 2000, 0) == GO
    assert result("warming", 20, poor, 3000, 15) == STOP  # past its warmup: raced


def test_the_level_is_divided_by_the_rivals_and_halved_at_each_rung_raced():
    """Four questions won of four (sign p = 1/16 = 0.0625), seven of seven (0.0078): at alpha
    0.2 one rival stops at the first rung (0.1 > 0.0625), three do not (0.033); at a later
    rung, raced before, the level is halved again."""
    win4 = ([1.0] * 4, [0.0] * 4)
    s = race(alpha=0.2)
    s.decide("lean", r(10, win4[0], 1000))
    assert s.decide("x", r(10, win4[1], 2000)) == STOP
    s = race(alpha=0.2)
    for i, mb in enumerate((1000, 1100, 1200)):
        s.decide(f"lean{i}", r(10, win4[0], mb))
    assert s.decide("x", r(10, win4[1], 2000)) == GO  # 0.2 / 2 / 3 < 0.0625
    s = race(alpha=0.2)
    s.decide("lean", r(10, [1.0, 1.0, 1.0, 0.5], 1000))
    assert s.decide("x", r(10, [1.0, 1.0, 1.0, 0.5], 2000)) == GO  # tied: raced, kept
    assert s.raced["x"] == 1
    s.decide("lean", r(20, win4[0], 1000))
    assert s.decide("x", r(20, win4[1], 2000)) == GO  # 0.2 / 4 = 0.05 < 0.0625
    s.decide("lean", r(40, [1.0] * 7, 1000))
    assert s.decide("x", r(40, [0.0] * 7, 2000)) == STOP  # 0.2 / 8 = 0.025 > 0.0078


def test_a_rival_with_more_memory_or_other_questions_never_stops_it():
    s = race()
    assert s.decide("big", r(10, [1.0] * 300, 9000)) == GO
    assert s.decide("x", r(10, [0.0] * 300, 3000)) == GO  # big needs more memory
    other = r(10, [1.0] * 300, 1000)
    other[m.PER_QUESTION] = scored([1.0] * 300, ids=[f"other{i}" for i in range(300)])
    assert s.decide("elsewhere", other) == GO
    assert s.decide("y", r(10, [0.0] * 300, 4000)) == GO  # its rival was asked other things
    assert s.decide("z", {**r(10, [0.0] * 300, 5000), m.PER_QUESTION: None}) == GO


def test_trials_equally_good_are_stopped_at_most_at_the_stated_rate():
    """The error rate, measured: 200 sweeps of 6 trials with the same true skill (each question
    right with the same chance for all, drawn independently), raced at 3 rungs on 300
    questions, memory all different. The share of trials ever stopped must stay at or under
    alpha (the bound holds per trial, over every rival and rung it meets)."""
    rng = random.Random(0)
    for test in ("sign", "t"):
        stopped = total = 0
        for _ in range(200):
            s = race(alpha=0.1, test=test)
            alive = {f"t{i}": 1000.0 + 100 * i for i in range(6)}
            for step in (10, 20, 40):
                for name, mb in list(alive.items()):
                    if s.decide(name, r(step, answers(300, 0.6, rng), mb)) == STOP:
                        stopped += 1
                        del alive[name]
            total += 6
        assert stopped / total <= 0.1, (test, stopped, total)


def test_a_trial_truly_behind_is_found():
    """Power: 8 F1 points behind on 300 questions (each question's outcome shared in part,
    as two fine-tunes of one model share easy and hard questions), stopped at its first rung
    in most sweeps."""
    rng = random.Random(1)
    found = 0
    for _ in range(50):
        base = [rng.random() for _ in range(300)]  # how hard each question is
        lean = [1.0 if b < 0.60 + 0.1 * (rng.random() - 0.5) else 0.0 for b in base]
        poor = [1.0 if b < 0.52 + 0.1 * (rng.random() - 0.5) else 0.0 for b in base]
        s = race(alpha=0.05)
        s.decide("lean", r(10, lean, 1000))
        found += s.decide("poor", r(10, poor, 2000)) == STOP
    assert found >= 40


def test_budgets_stop_at_once_and_bad_settings_are_refused():
    s = race(constraints=[parse_constraint("peak_memory_mb <= 5000")])
    assert s.decide("over", r(2, [1.0] * 10, 6000)) == STOP
    with pytest.raises(ValueError, match="alpha must be in"):
        race(alpha=0)
    with pytest.raises(ValueError, match="test must be one of"):
        race(test="z")
    with pytest.raises(ValueError, match="first learning objective"):
        PairedRace([(m.EVAL_LOSS, "min"), (m.PEAK_MEMORY_MB, "min")], grace=10)


def test_its_state_survives_the_driver(tmp_path):
    path = str(tmp_path / "mo_asha.json")
    s = race(state_file=path)
    s.decide("lean", r(10, [1.0] * 150 + [0.0] * 150, 2000))
    assert s.decide("poor", r(10, [1.0] * 90 + [0.0] * 210, 3000)) == STOP
    again = race(state_file=path)
    assert again.scores[0]["lean"]["v"][:2] == [1.0, 1.0]
    assert again.raced == {"poor": 1} and again.stopped == {"poor": 0}
    assert again.decide("poor", r(20, [1.0] * 300, 3000)) == STOP  # stopped stays stopped
    # a newcomer is raced against the rung as saved
    assert again.decide("poorer", r(10, [1.0] * 80 + [0.0] * 220, 2500)) == STOP


def test_a_sweep_selects_it_and_checks_its_objectives(tmp_path):
    from qa_ray.sweep.config import SchedulerConfig
    from qa_ray.sweep.tuner import build_scheduler

    sc = SchedulerConfig(type="race", grace=16, reduction_factor=2, alpha=0.1, test="t")
    s = build_scheduler(sc, OBJECTIVES, [], warmup_ratio=0.1)
    assert isinstance(s, PairedRace) and (s.alpha, s.test, s.grace) == (0.1, "t", 16)
    with pytest.raises(ValueError, match="race's fields"):
        SchedulerConfig(type="mo_asha", grace=16, alpha=0.1)
    with pytest.raises(ValueError, match="memory_aware's fields"):
        SchedulerConfig(type="race", grace=16, noise_floor=2.0)
