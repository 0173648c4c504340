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


def test_the_table_shows_the_predicted_peak_beside_the_measured_one():
    from qa_ray.report.tables import trials_table

    trials = [
        t("trial-a", 40.0, 900.0, predicted_peak_memory_mb=850.0),
        t("trial-b", 42.0, 1200.0),  # started before predictions were on: "-"
    ]
    table = trials_table(summarize("p", trials, [F1, MB])).splitlines()
    header = table[0].split()
    assert header[header.index("memory") + 2 : header.index("memory") + 4] == ["predicted", "MB"]
    row_a = next(r for r in table if "trial-a" in r).split()
    assert row_a[row_a.index("900") + 1] == "850"
    row_b = next(r for r in table if "trial-b" in r).split()
    assert row_b[row_b.index("1200") + 1] == "-"
    plain = trials_table(summarize("p", [t("trial-c", 1.0, 2.0)], [F1, MB]))
    assert "predicted" not in plain
