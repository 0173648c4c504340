"""Budgets, infeasible trials and early stops reach a real Optuna study through the searcher."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from qa_ray import metrics as m
from qa_ray.pareto import parse_constraint
from qa_ray.search.searcher import OTHER_REASON, BudgetAwareOptunaSearch

State = optuna.trial.TrialState


def _searcher(sampler="tpe", constraints=("peak_memory_mb <= 1000",)):
    sampler = {
        "tpe": optuna.samplers.TPESampler(seed=0),
        "nsga2": optuna.samplers.NSGAIISampler(seed=0),
    }[sampler]
    return BudgetAwareOptunaSearch(
        space={"x": FloatDistribution(0.0, 1.0)},
        metric=[m.EVAL_F1, m.PEAK_MEMORY_MB],
        mode=["max", "min"],
        sampler=sampler,
        constraints=[parse_constraint(c) for c in constraints],
    )


def _run(searcher, trial_id, results, **complete):
    assert searcher.suggest(trial_id) is not None
    for r in results[:-1]:
        searcher.on_trial_result(trial_id, r)
    searcher.on_trial_complete(trial_id, results[-1], **complete)


def _trial(searcher, trial_id) -> optuna.trial.FrozenTrial:
    number = searcher._ot_trials[trial_id].number
    return searcher._ot_study.trials[number]


def test_feasible_over_budget_and_out_of_memory_trials():
    s = _searcher()
    _run(s, "ok", [{m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0}])
    _run(s, "big", [{m.EVAL_F1: 90.0, m.PEAK_MEMORY_MB: 1500.0}])  # best F1, over budget
    oom = {m.EVAL_F1: None, m.PEAK_MEMORY_MB: None, m.INFEASIBLE: 1.0}
    _run(s, "oom", [{m.EVAL_F1: 20.0, m.PEAK_MEMORY_MB: 700.0}, {**oom, "x": 1}])
    ok, big, oom = (_trial(s, t) for t in ("ok", "big", "oom"))
    assert ok.state == big.state == oom.state == State.COMPLETE
    budget = "peak_memory_mb <= 1000"
    assert ok.constraints == {budget: -0.2, OTHER_REASON: 0.0}  # 20 % under
    assert big.constraints == {budget: 0.5, OTHER_REASON: 0.0}
    # out of memory: no budget shows it, the last value says "infeasible for another reason";
    # its values are what it measured before (its last evaluation)
    assert oom.constraints == {budget: -0.3, OTHER_REASON: 1.0}  # 700 MB when last seen
    assert oom.values == [20.0, 700.0]
    # Optuna's own view: only the feasible trial can be best, however good the others look
    assert [t.number for t in s._ot_study.best_trials] == [ok.number]


def test_an_unscored_infeasible_trial_gets_the_worst_value_seen():
    s = _searcher()
    _run(s, "a", [{m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0}])
    _run(s, "b", [{m.EVAL_F1: 10.0, m.PEAK_MEMORY_MB: 900.0}])
    _run(s, "c", [{m.EVAL_F1: None, m.PEAK_MEMORY_MB: 1200.0, m.INFEASIBLE: 1.0}])
    c = _trial(s, "c")
    assert c.values == [10.0, 1200.0]
    assert list(c.constraints.values()) == pytest.approx([0.2, 0.0])


def test_a_trial_stopped_early_is_pruned_not_complete():
    s = _searcher()
    _run(s, "p", [{m.EVAL_F1: 5.0, m.PEAK_MEMORY_MB: 300.0, m.STOPPED_EARLY_AT: 30}])
    p = _trial(s, "p")
    assert p.state == State.PRUNED and p.values is None
    assert p.user_attrs["qa_ray.stopped_early_at"] == 30
    assert list(p.constraints.values()) == pytest.approx([-0.7, 0.0])


def _excess(t: optuna.trial.FrozenTrial) -> float:
    """What Optuna's samplers rank infeasible trials by: the sum of the positive values."""
    return sum(max(v, 0.0) for v in t.constraints.values())


def test_out_of_memory_weighs_as_twice_the_budget_not_as_one_mb_over():
    """The OOM flag (1.0) was summed with excesses in MB: an OOM read as 1 MB over, 500x
    better than a trial 500 MB over; and MB were summed with parameters."""
    s = _searcher(constraints=("peak_memory_mb <= 1000", "trainable_params <= 1000000"))
    _run(s, "ok", [{m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0, m.TRAINABLE_PARAMS: 1e5}])
    _run(s, "over", [{m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 1500.0, m.TRAINABLE_PARAMS: 2e6}])
    _run(s, "oom", [{m.EVAL_F1: 20.0, m.PEAK_MEMORY_MB: 700.0, m.TRAINABLE_PARAMS: 1e5},
                    {m.INFEASIBLE: 1.0}])  # fmt: skip
    over, oom = _trial(s, "over"), _trial(s, "oom")
    assert list(over.constraints.values()) == pytest.approx([0.5, 1.0, 0.0])  # 50 %, 100 %
    assert _excess(oom) == 1.0 and _excess(over) == pytest.approx(1.5)


def test_a_pruned_trial_is_not_judged_on_a_score_constraint_by_its_partial_f1():
    s = _searcher(constraints=("peak_memory_mb <= 1000", "eval_f1 >= 50"))
    _run(s, "p", [{m.EVAL_F1: 30.0, m.PEAK_MEMORY_MB: 300.0, m.STOPPED_EARLY_AT: 30}])
    p = _trial(s, "p")
    assert p.state == State.PRUNED
    assert p.constraints == {
        "peak_memory_mb <= 1000": pytest.approx(-0.7),  # a budget: measured for good
        "eval_f1 >= 50": 0.0,  # F1 30 at step 30 says nothing of its final F1 (was 20)
        OTHER_REASON: 0.0,
    }
    _run(s, "done", [{m.EVAL_F1: 30.0, m.PEAK_MEMORY_MB: 300.0}])  # at its end it counts
    assert _trial(s, "done").constraints["eval_f1 >= 50"] == pytest.approx(0.4)


def test_an_out_of_memory_before_any_report_and_any_completed_trial_is_told():
    """_worst had no peak memory to take and raised; the trial stayed RUNNING."""
    s = _searcher()
    assert s.suggest("oom") is not None
    s.on_trial_complete("oom", {m.INFEASIBLE: 1.0, m.INFEASIBLE_REASON: "out of memory"})
    oom = _trial(s, "oom")
    assert oom.state == State.COMPLETE and oom.values == [0.0, 1000.0]  # the budget's bound
    assert oom.constraints == {"peak_memory_mb <= 1000": 0.0, OTHER_REASON: 1.0}
    s = _searcher(constraints=())  # no bound to take: FAIL, never RUNNING
    assert s.suggest("oom") is not None
    s.on_trial_complete("oom", {m.INFEASIBLE: 1.0})
    assert _trial(s, "oom").state == State.FAIL


def test_errors_stay_failed():
    s = _searcher()
    assert s.suggest("e") is not None
    s.on_trial_complete("e", None, error=True)
    assert _trial(s, "e").state == State.FAIL


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_samplers_keep_sampling_with_infeasible_and_pruned_trials(sampler):
    s = _searcher(sampler)
    for i in range(12):
        x = s.suggest(f"t{i}")["x"]
        result = {m.EVAL_F1: 100 * x, m.PEAK_MEMORY_MB: 2000 * x}
        if i % 4 == 3:
            result = {m.EVAL_F1: None, m.PEAK_MEMORY_MB: None, m.INFEASIBLE: 1.0}
        elif i % 4 == 2:
            result[m.STOPPED_EARLY_AT] = 10
        s.on_trial_complete(f"t{i}", result)
    states = [t.state for t in s._ot_study.trials]
    assert states.count(State.PRUNED) == 3 and states.count(State.COMPLETE) == 9
    assert all(t.number in {0, 1, 4, 5, 8, 9} for t in s._ot_study.best_trials)


def test_a_trial_missing_from_a_restored_study_is_skipped_not_an_error(tmp_path):
    """A study restored from a copy saved before a trial was sampled (a driver killed in
    between) lacks that trial: completing it logs a warning and tells nothing, and the next
    trials are told as usual."""
    import shutil

    db = tmp_path / "optuna.db"
    s = BudgetAwareOptunaSearch(
        space={"x": FloatDistribution(0.0, 1.0)},
        metric=[m.EVAL_F1, m.PEAK_MEMORY_MB],
        mode=["max", "min"],
        sampler=optuna.samplers.TPESampler(seed=0),
        constraints=[parse_constraint("peak_memory_mb <= 1000")],
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{db}"),
    )
    _run(s, "told", [{m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0}])
    shutil.copy(db, tmp_path / "saved.db")  # the copy the bucket holds
    assert s.suggest("lost") is not None
    shutil.copy(tmp_path / "saved.db", db)  # the restored head: "lost" was never saved
    s.on_trial_complete("lost", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    _run(s, "after", [{m.EVAL_F1: 60.0, m.PEAK_MEMORY_MB: 700.0}])
    states = [t.state for t in optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials]
    assert states.count(State.COMPLETE) == 2


class _Model:
    """Stands in for the memory model: the peak is 100 MB per unit of batch, sd 5 %."""

    def __init__(self):
        self.asked = []

    def predict(self, config):
        from qa_ray.search.memory import Prediction

        batch = config["train"]["per_device_batch_size"]
        self.asked.append(batch)
        return Prediction(100.0 * batch, 5.0 * batch)


def _admitting(batches, max_in_a_row=100):
    from qa_ray.search.searcher import MemoryAdmission

    rejected = []
    admission = MemoryAdmission(
        model=_Model(),  # type: ignore[arg-type]
        base={"train": {"per_device_batch_size": 1}},
        on_rejected=lambda config, p, reason: rejected.append((config, p, reason)),
        max_in_a_row=max_in_a_row,
    )

    def space(trial):
        trial.suggest_categorical("per_device_batch_size", batches)

    s = BudgetAwareOptunaSearch(
        space=space,
        metric=[m.EVAL_F1, m.PEAK_MEMORY_MB],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        constraints=[parse_constraint("peak_memory_mb <= 1000")],
        admission=admission,
    )
    return s, admission, rejected


def test_a_config_predicted_over_budget_is_not_launched_but_told_infeasible():
    """batch 16 (1600 +- 80 MB) is over 1000 beyond its uncertainty; 8 (800 +- 40) is not:
    every config Tune gets is batch 8, and Optuna learns each batch-16 draw as infeasible by
    its predicted excess (60 %), without any trial run for it."""
    s, admission, rejected = _admitting([8, 16])
    launched = [s.suggest(f"t{i}") for i in range(6)]
    assert all(c == {"per_device_batch_size": 8} for c in launched)
    assert admission.rejected == len(rejected) > 0
    told = [t for t in s._ot_study.trials if "qa_ray.predicted_infeasible" in t.user_attrs]
    assert len(told) == len(rejected)
    for t in told:
        assert t.state == State.COMPLETE and t.params == {"per_device_batch_size": 16}
        assert t.constraints == {"peak_memory_mb <= 1000": pytest.approx(0.6), OTHER_REASON: 0.0}
        assert t.values[1] == 1600.0  # its memory objective: the predicted peak
        assert t.user_attrs["qa_ray.predicted_infeasible"] == (
            "predicted peak_memory_mb 1600 +- 80 breaks the budget peak_memory_mb <= 1000"
        )
    config, p, reason = rejected[0]
    assert config == {"per_device_batch_size": 16} and p.peak_mb == 1600.0
    # the launched ones are still Optuna's RUNNING trials, told when they complete
    _run(s, "t0", [{m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 790.0}])
    assert _trial(s, "t0").state == State.COMPLETE


def test_uncertain_configs_run():
    s, admission, _ = _admitting([10, 11])  # 1000 +- 50, 1100 +- 55: within 2 sd of 1000
    assert s.suggest("t0") in ({"per_device_batch_size": 10}, {"per_device_batch_size": 11})
    assert admission.rejected == 0


def test_too_many_rejections_in_a_row_end_the_search_naming_the_budget():
    from ray.tune.search import Searcher

    s, admission, rejected = _admitting([32, 64], max_in_a_row=5)
    assert s.suggest("t0") == Searcher.FINISHED
    assert len(rejected) == 5
    assert admission.stopped is not None
    assert admission.stopped.startswith(
        "5 sampled configurations in a row predicted over `peak_memory_mb <= 1000`"
    )
    assert "raise the budget or shrink the space's memory axes" in admission.stopped


def test_the_admission_pickles_without_its_recorder():
    import pickle

    s, admission, _ = _admitting([8, 16])
    again = pickle.loads(pickle.dumps(admission))
    assert again.on_rejected is None and again.max_in_a_row == admission.max_in_a_row


def test_a_packed_sweep_writes_each_launched_configs_memory_request():
    """Packing (resources.pack_by_memory): every config Tune gets carries what its workers ask
    Ray for, the prediction's upper end (peak + 2 sd) plus the margin, a whole MB; also
    without a budget. batch 8: (800 + 2 * 40) * 1.1 = 968."""
    s, admission, _ = _admitting([8])
    s.constraints = ()  # no budget: the request is still written
    admission.pack_margin = 0.1
    config = s.suggest("t0")
    assert config == {"per_device_batch_size": 8, m.MEMORY_REQUEST_MB: 968.0}
    admission.pack_margin = None
    assert s.suggest("t1") == {"per_device_batch_size": 8}


def test_an_admission_pickled_before_packing_restores_without_it():
    import pickle

    _, admission, _ = _admitting([8])
    state = pickle.loads(pickle.dumps(admission)).__dict__
    state.pop("pack_margin")
    old = object.__new__(type(admission))
    old.__setstate__(state)
    assert old.pack_margin is None and old.request_mb({"per_device_batch_size": 8}) is None


def test_with_admission_off_every_sampled_config_is_launched():
    s, admission, rejected = _admitting([8, 16])
    admission.enforce = False  # search.memory_admission: false
    launched = [s.suggest(f"t{i}") for i in range(8)]
    assert {c["per_device_batch_size"] for c in launched} == {8, 16}
    assert rejected == [] and admission.rejected == 0
