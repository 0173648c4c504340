"""MO-ASHA's decisions on synthetic results: rungs, Pareto ranks, ties, budgets, its state."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
from ray.tune.schedulers import TrialScheduler

from qa_ray import metrics as m
from qa_ray.pareto import crowding_distances, pareto_order, parse_constraint
from qa_ray.search.schedulers.mo_asha import MOASHA, EarlyStopMarks

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE
OBJECTIVES = [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")]


def r(step, f1, mb, **more):
    return {m.STEP: step, m.EVAL_F1: f1, m.PEAK_MEMORY_MB: mb, **more}


def sched(**kw):
    return MOASHA(OBJECTIVES, **{"grace": 10, "reduction_factor": 3, **kw})


def test_rungs_are_grace_times_powers_of_the_reduction_factor():
    s = sched()
    assert [s.rung(k) for k in range(4)] == [10, 30, 90, 270]
    assert [s.rung_index(t) for t in (0, 9.9, 10, 29, 30, 89, 90, 1000)] == [
        -1, -1, 0, 0, 1, 1, 2, 4
    ]  # fmt: skip


def test_nothing_is_stopped_before_the_first_rung():
    s = sched()
    for i in range(5):
        assert s.decide(f"t{i}", r(5, 10.0 * i, 100)) == GO
    assert s.rungs == {}


def test_the_first_trial_at_a_rung_goes_on_then_the_best_third():
    s = sched()
    assert s.decide("a", r(10, 50.0, 100)) == GO  # alone at the rung
    assert s.decide("b", r(10, 40.0, 200)) == STOP  # dominated by a; 1 of 2 kept
    assert s.decide("c", r(10, 60.0, 90)) == GO  # dominates both
    assert s.decide("d", r(10, 45.0, 150)) == STOP  # 4 trials: best 2 kept, d is 3rd or worse
    assert s.stopped == {"b": 0, "d": 0}


def test_rank_is_pareto_rank_not_one_metric():
    """b has the lowest F1 of three, so ASHA on F1 would stop it (one of three goes on... two
    here, rf 1.5); on the front with a, it goes on, and the dominated x ranks below it."""
    s = sched(reduction_factor=1.5)
    assert s.decide("a", r(10, 50.0, 200)) == GO
    assert s.decide("x", r(10, 40.0, 300)) == GO  # 2 of 2 kept
    assert s.decide("b", r(10, 30.0, 100)) == GO  # rank 0 with a: 2 of 3 kept
    assert pareto_order([s.rungs[0][k] for k in ("a", "x", "b")])[-1] == 1  # x last


def test_a_non_dominated_newcomer_is_not_stopped_behind_an_earlier_arrival():
    """Crowding distance gives both ends of a front (every point, with two trials) inf and
    ties went to the earlier arrival: a LoRA trial first, then a better full fine-tune, and
    the full one was stopped. The order starts from the best F1 instead, as Syne Tune's."""
    s = sched()
    assert s.decide("lora", r(10, 30.0, 3000)) == GO
    assert s.decide("full", r(10, 70.0, 9000)) == GO  # 1 of 2 kept: the best F1
    assert s.order(0) == ["full", "lora"]


def test_the_decisions_do_not_depend_on_arrival_order():
    """Four trials, rf 4 (places i <= 1 go on): whichever order they come in, the best-F1
    trial c (it was stopped behind a, F1 10 at 1000 MB, when a came first) goes on when it
    comes last, and so does a; the two dominated ones are stopped when they come last."""
    results = {
        "a": r(10, 10.0, 1000),
        "b": r(10, 5.0, 2000),
        "d": r(10, 8.0, 3000),
        "c": r(10, 60.0, 8000),
    }
    for order in itertools.permutations(results):
        s = sched(reduction_factor=4)
        decisions = [s.decide(i, results[i]) for i in order]
        assert s.order(0) == ["c", "a", "d", "b"]
        assert decisions[-1] == {"a": GO, "c": GO, "b": STOP, "d": STOP}[order[-1]], order


def test_the_places_kept_follow_syne_tunes_rank_over_n():
    """A trial at place i of n goes on when i / n <= 1 / rf: 2 of 3 at rf 3 (ceil(n / rf)
    kept 1), 1 of 2, 4 of 9."""
    s = sched()
    for n in (1, 2, 3, 9):
        s.rungs[5] = {f"t{i}": [-100.0 + i, 100.0 + i] for i in range(n)}  # a chain: t0 best
        kept = [i for i in range(n) if s.keeps(5, f"t{i}")]
        assert len(kept) == {1: 1, 2: 1, 3: 2, 9: 4}[n] and kept == list(range(len(kept)))


def test_the_lowest_memory_trial_is_no_shelter_for_a_poor_one():
    """Memory is set by the configuration: it decides dominance, but within the front the
    trials go by F1. With crowding distance the cheapest trial is an end of the front and
    was never stopped; here a poor cheap one is, and the stops do not fall on the F1 end."""
    s = sched()
    assert s.decide("full", r(10, 70.0, 9000)) == GO
    assert s.decide("lora16", r(10, 65.0, 8000)) == STOP  # place 1 of 2: 1 / 2 > 1 / 3
    assert s.decide("lora8", r(10, 60.0, 7000)) == STOP  # place 2 of 3
    assert s.decide("tiny", r(10, 10.0, 1000)) == STOP  # on the front too, place 3 of 4
    assert s.order(0) == ["full", "lora16", "lora8", "tiny"]


def test_within_a_rank_the_learning_objective_goes_first_whatever_the_listed_order():
    s = MOASHA([(m.PEAK_MEMORY_MB, "min"), (m.EVAL_F1, "max")], grace=10)
    s.decide("tiny", {m.STEP: 10, m.EVAL_F1: 10.0, m.PEAK_MEMORY_MB: 1000.0})
    s.decide("full", {m.STEP: 10, m.EVAL_F1: 70.0, m.PEAK_MEMORY_MB: 9000.0})
    assert s.order(0) == ["full", "tiny"]


def test_crowding_distance_keeps_the_spread_out_points_first():
    """pareto_order (the Pareto report's) still spreads a front: the ends go first."""
    points = [(10, 100), (20, 200), (21, 210), (22, 220), (40, 400)]
    order = pareto_order([(-f1, mb) for f1, mb in points])
    assert set(order[:2]) == {0, 4}


def test_a_trial_is_judged_once_per_rung_and_again_at_the_next():
    s = sched()
    assert s.decide("a", r(10, 50.0, 100)) == GO
    assert s.decide("b", r(10, 60.0, 90)) == GO
    assert s.decide("a", r(20, 1.0, 999)) == GO  # between rungs: not judged again
    assert s.decide("b", r(30, 60.0, 90)) == GO  # rung 1: alone there
    assert s.decide("a", r(30, 40.0, 100)) == STOP  # rung 1: dominated by b
    assert s.stopped == {"a": 1}


def test_a_final_result_is_recorded_but_never_stopped():
    s = sched()
    assert s.decide("a", r(10, 50.0, 100)) == GO
    assert s.decide("b", r(10, 40.0, 200, **{m.FINAL_REPORT: 1.0})) == GO  # would be stopped
    assert "b" in s.rungs[0] and s.stopped == {}
    assert s.decide("c", r(10, 35.0, 250)) == STOP  # b still counts: c is third, 2 of 3 kept


def test_a_trial_past_several_rungs_is_recorded_at_the_highest_only():
    """As Ray's ASHA and Syne Tune's: a first evaluation at step 95 recorded at rungs 10 and
    30 too would set its better-trained F1 against trials judged there at 10 and 30."""
    s = sched()
    assert s.decide("a", r(95, 50.0, 100)) == GO
    assert s.rungs == {2: {"a": [-50.0, 100.0]}} and s.judged == {"a": 2}
    assert s.decide("b", r(10, 40.0, 100)) == GO  # alone at rung 0, not behind a's 50
    assert s.decide("a", r(100, 1.0, 999)) == GO  # rung 2 again: not judged twice


def test_results_without_every_objective_are_not_ranked():
    s = sched()
    assert s.decide("a", {m.STEP: 10, m.PEAK_MEMORY_MB: 100.0}) == GO
    assert s.decide("a", {m.STEP: 10, m.EVAL_F1: math.nan, m.PEAK_MEMORY_MB: 100.0}) == GO
    assert s.rungs == {}


def test_over_budget_stops_at_once_and_is_never_ranked():
    s = sched(constraints=[parse_constraint("peak_memory_mb <= 500")])
    assert s.decide("a", r(2, 50.0, 600)) == STOP  # before the first rung
    assert s.decide("b", r(10, 90.0, 100, **{m.INFEASIBLE: 1.0})) == STOP  # the loop said so
    assert s.decide("c", r(10, 10.0, 400)) == GO
    assert s.rungs == {0: {"c": [-10.0, 400.0]}}
    assert s.stopped == {}  # stopped for a budget, not by rank


def test_constraints_on_scores_do_not_stop_early():
    """``eval_f1 >= 50`` can still be met later: it is not a budget."""
    s = sched(constraints=[parse_constraint("eval_f1 >= 50")])
    assert s.decide("a", r(2, 10.0, 100)) == GO


def test_time_attr_train_seconds():
    s = sched(time_attr=m.TRAIN_SECONDS, grace=60)
    assert s.decide("a", {m.TRAIN_SECONDS: 59.0, m.EVAL_F1: 1.0, m.PEAK_MEMORY_MB: 1.0}) == GO
    assert s.rungs == {}
    s.decide("a", {m.TRAIN_SECONDS: 61.0, m.EVAL_F1: 1.0, m.PEAK_MEMORY_MB: 1.0})
    assert s.rungs == {0: {"a": [-1.0, 1.0]}}


def test_rungs_survive_the_driver(tmp_path):
    """Tune keeps no scheduler state: a resumed sweep (or an extension) reads the file."""
    path = str(tmp_path / "mo_asha.json")
    s = sched(state_file=path)
    s.decide("a", r(10, 50.0, 100))
    s.decide("b", r(10, 40.0, 200))
    again = sched(state_file=path)  # an extension builds a new one
    assert again.rungs == s.rungs and again.stopped == {"b": 0}
    unpickled = pickle.loads(pickle.dumps(sched(state_file=path)))  # Tuner.restore
    s.decide("c", r(10, 70.0, 50))
    restored = pickle.loads(pickle.dumps(unpickled))
    assert "c" in restored.rungs[0]


def test_a_trial_stopped_before_a_driver_crash_stays_stopped(tmp_path):
    """mo_asha.json recorded b's STOP; Tune's saved state did not, so --resume runs b on.
    Its next result, at the next rung and good enough to go on there, is a STOP."""
    path = str(tmp_path / "mo_asha.json")
    s = sched(state_file=path)
    s.decide("a", r(10, 50.0, 100))
    assert s.decide("b", r(10, 40.0, 200)) == STOP
    resumed = sched(state_file=path)
    assert resumed.decide("b", r(30, 90.0, 50)) == STOP  # alone at rung 1: would go on
    assert resumed.decide("b", r(12, 40.0, 200)) == STOP  # a result replayed from before
    assert resumed.rungs == s.rungs and resumed.stopped == {"b": 0}


def test_a_new_head_reads_the_rungs_in_its_own_state_folder(tmp_path):
    """The state file was pickled as the first head's absolute path: a new head with another
    state folder read nothing there (the sweep's stops forgotten), or, where that path
    existed, another sweep's stale rungs, and revived trials this sweep had stopped."""
    from qa_ray import live

    first, new = tmp_path / "first", tmp_path / "new"
    first.mkdir(), new.mkdir()
    s = sched(state_file=str(first / "mo_asha.json"))
    s.decide("a", r(10, 50.0, 100))
    assert s.decide("b", r(10, 40.0, 200)) == STOP
    (new / "mo_asha.json").write_bytes((first / "mo_asha.json").read_bytes())  # the bucket's
    (first / "mo_asha.json").write_text('{"rungs": {}, "judged": {}, "stopped": {}}')  # stale
    pickled = pickle.dumps(s)
    with live.driving(live.Driver(state_dir=new)):
        restored = pickle.loads(pickled)
    assert restored.state_file == str(new / "mo_asha.json")
    assert restored.stopped == {"b": 0}
    assert restored.decide("b", r(30, 90.0, 50)) == STOP


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reduction_factor > 1"):
        sched(reduction_factor=1)


def test_crowding_distance_and_order():
    pts = [(0, 4), (1, 3), (2, 2.5), (4, 0), (5, 5)]  # minimization; (5, 5) is dominated
    d = crowding_distances(pts[:4])
    # (1, 3): gaps 2/4 + 1.5/4; (2, 2.5): gaps 3/4 + 3/4
    assert d[0] == d[3] == math.inf and d[1:3] == [0.875, 1.5]
    assert pareto_order(pts) == [0, 3, 2, 1, 4]


def test_early_stop_marks_only_stopped_results():
    marks = EarlyStopMarks(m.STEP)
    stopped, finished, over = (
        r(30, 1.0, 1.0, done=True),
        r(40, 1.0, 1.0),
        r(5, 1.0, 1.0, done=True, **{m.INFEASIBLE: 1.0}),
    )
    for result in (stopped, finished, over):
        marks.on_trial_result(0, [], None, result)
    assert stopped[m.STOPPED_EARLY_AT] == 30
    assert m.STOPPED_EARLY_AT not in finished and m.STOPPED_EARLY_AT not in over
