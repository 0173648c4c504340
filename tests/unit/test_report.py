"""The Pareto report's pure parts: reference point, best trial under a budget, budget lines."""

from __future__ import annotations

import pytest

from qa_ray import metrics as m
from qa_ray.report import ParetoSummary, best_under, budget_lines, reference_point

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


def test_budget_lines_name_the_trial_its_score_and_its_file():
    trials = [t("trial-a", 40.0, 900.0, quantization_bits=32, finetune="full")]
    summary = ParetoSummary(
        "p", (F1, MB), trials, (0,), 0, [1.0],
        best_under=(
            {"metric": m.PEAK_MEMORY_MB, "bound": 1000.0, "trial": 0},
            {"metric": m.PEAK_MEMORY_MB, "bound": 500.0, "trial": None},
        ),
    )  # fmt: skip
    assert budget_lines(summary) == [
        "best under peak_memory_mb <= 1000: trial-a (32-bit full), eval_f1 40.00 at 900 "
        "(pareto/best_under_1000_peak_memory_mb.yaml)",
        "best under peak_memory_mb <= 500: no completed trial fits",
    ]
