"""The tables of a Pareto summary: the budget lines."""

from __future__ import annotations

from qa_ray.report.summary import summarize
from qa_ray.report.tables import budget_lines
from tests.unit.report.test_summary import F1, MB, t


def test_budget_lines_name_the_trial_its_score_and_its_file():
    trials = [t("trial-a", 40.0, 900.0, quantization_bits=32, finetune="full")]
    summary = summarize("p", trials, [F1, MB], budgets=(1000.0, 500.0))
    assert budget_lines(summary) == [
        "best under peak_memory_mb <= 500: no completed trial fits",
        "best under peak_memory_mb <= 1000: trial-a (32-bit full), eval_f1 40.00 at 900 "
        "(pareto/best_under_1000_peak_memory_mb.yaml)",
    ]
