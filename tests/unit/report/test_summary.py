"""The Pareto report's pure parts: reference point, best trial under a budget, budget lines."""

from __future__ import annotations

import pytest

from qa_ray import metrics as m
from qa_ray.pareto import parse_constraint
from qa_ray.report.summary import best_under, reference_point, summarize
from qa_ray.report.tables import summary_markdown

F1, MB = (m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")


def t(name, f1, mb, **more):
    return {"name": name, m.EVAL_F1: f1, m.PEAK_MEMORY_MB: mb, "status": "COMPLETE", **more}


def test_reference_point_takes_the_budget_when_there_is_one():
    trials = [t("a", 40.0, 900.0), t("b", 60.0, 1900.0)]
    assert reference_point(trials, [F1, MB], {m.PEAK_MEMORY_MB: 2000.0}) == [0.0, 2000.0]
    # without: 0 for a score, the worst plus 10 % for a cost
    assert reference_point(trials, [F1, MB]) == pytest.approx([0.0, 2090.0])


def test_reference_point_is_worse_than_every_trial_for_values_at_or_below_zero():
    """1.1 x the worst is no longer worse when the worst is 0 or negative."""
    trials = [{"loss": -2.0, "gain": -5.0}, {"loss": -1.0, "gain": 3.0}]
    ref = reference_point(trials, [("loss", "min"), ("gain", "max")])
    assert ref[0] > -1.0 and ref[1] <= -5.0
    assert reference_point([{"loss": 0.0}], [("loss", "min")]) == [1.0]


def test_best_under_a_budget():
    trials = [t("a", 40.0, 900.0), t("b", 60.0, 1900.0), t("c", 40.0, 800.0)]
    feasible = [0, 1, 2]
    assert best_under(trials, feasible, m.PEAK_MEMORY_MB, 2000, F1) == 1
    assert best_under(trials, feasible, m.PEAK_MEMORY_MB, 1000, F1) == 2  # tie: less memory
    assert best_under(trials, feasible, m.PEAK_MEMORY_MB, 500, F1) is None
    assert best_under(trials, [0], m.PEAK_MEMORY_MB, 2000, F1) == 0  # only feasible ones


def test_summarize_front_ranks_and_what_is_left_out():
    trials = [
        t("a", 40.0, 900.0, ended=3),
        t("b", 60.0, 1900.0, ended=1),
        t("c", 30.0, 950.0, ended=2),  # dominated by a
        t("d", 90.0, 2500.0, ended=4),  # over the budget
        {**t("e", 99.0, 100.0), "status": "PRUNED"},  # stopped early: partial values
        {"name": "f", "status": "FAILED"},
        t("g", 50.0, None),  # an objective missing
    ]
    s = summarize("p", trials, [F1, MB], [parse_constraint("peak_memory_mb <= 2000")])
    names = [x["name"] for x in s.trials]
    assert [names[i] for i in s.optimal] == ["a", "b"]
    assert [names[i] for i in s.feasible] == ["a", "b", "c"]
    assert s.excluded == 4
    assert [(x["name"], x["pareto_optimal"], x["pareto_rank"]) for x in s.trials] == [
        ("a", True, 0), ("b", True, 0), ("c", False, 1), ("d", False, None),
        ("e", False, None), ("f", False, None), ("g", False, None),
    ]  # fmt: skip
    assert s.reference == (0.0, 2000.0) and s.budgets == (2000.0,)
    # hypervolume after each completed trial, in the order they ended: b, c, a
    assert s.hypervolume == pytest.approx([60 * 100, 60 * 100 + 30 * 950, 40 * 1100 + 20 * 100])
    assert trials[0].get("pareto_optimal") is None  # the records themselves are untouched
    md = summary_markdown(s)
    assert "2 trials on the front (*), 4 excluded" in md and "Best under each budget" in md


def test_summarize_three_objectives():
    lat = (m.EVAL_LATENCY_MS, "min")
    trials = [
        {**t("a", 40.0, 900.0), m.EVAL_LATENCY_MS: 5.0},
        {**t("b", 40.0, 900.0), m.EVAL_LATENCY_MS: 3.0},  # dominates a
        {**t("c", 30.0, 800.0), m.EVAL_LATENCY_MS: 9.0},
    ]
    s = summarize("p", trials, [F1, MB, lat])
    assert [s.trials[i]["name"] for i in s.optimal] == ["b", "c"]
    assert s.hypervolume[-1] > 0 and len(s.reference) == 3


def test_errors_by_trial_puts_the_trials_breakdowns_side_by_side(tmp_path):
    """The parent run's error table: a column per trial that logged error_breakdown.json."""
    import json

    from qa_ray.report.publish import errors_by_trial
    from qa_ray.scoring.breakdown import dumps, error_breakdown
    from qa_ray.scoring.squad import GoldQuestion
    from qa_ray.tracking.runs import ERROR_BREAKDOWN_FILE, mlflow_client, open_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = open_experiment(uri, "e")
    qs = [GoldQuestion("a", ("Denver Broncos",))]
    trials = []
    for name, pred in (("trial-1", "Broncos"), ("trial-2", "Panthers"), ("trial-3", None)):
        rid = client.create_run(exp).info.run_id
        if pred is not None:
            client.log_text(rid, dumps(error_breakdown(qs, {"a": pred}, {"a": "Who?"})),
                            ERROR_BREAKDOWN_FILE)  # fmt: skip
        trials.append({"run_id": rid, "name": name, "status": "COMPLETE", "config": {}})
    table = errors_by_trial(uri, trials)
    assert [c.split(" ")[0] for c in table["columns"]] == ["bucket", "trial-1", "trial-2"]
    rows = {r[0]: r[1:] for r in table["data"]}
    assert rows["answerable: partial_inside"] == [1, 0] and rows["answerable: no_overlap"] == [0, 1]
    assert errors_by_trial(uri, trials[2:]) is None
    json.dumps(table)


def test_budgets_name_their_best_trial_but_never_move_the_reference():
    """`--budgets` moved the hypervolume's reference point (a 25x change on two trials)."""
    trials = [t("a", 40.0, 1100.0), t("b", 60.0, 1900.0)]
    cons = [parse_constraint("peak_memory_mb <= 2000")]
    plain = summarize("p", trials, [F1, MB], cons)
    budgeted = summarize("p", trials, [F1, MB], cons, budgets=(1200.0,))
    assert budgeted.reference == plain.reference == (0.0, 2000.0)
    assert budgeted.hypervolume == plain.hypervolume
    stored = summarize("p", trials[:1], [F1, MB], reference=[0.0, 1500.0])
    assert stored.reference == (0.0, 1500.0)  # the sweep's own, kept while trials are inside
    widened = summarize("p", trials, [F1, MB], reference=[0.0, 1500.0])
    assert widened.reference[1] > 1900.0  # a trial outside it: widened
