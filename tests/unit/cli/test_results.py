"""``qa-ray pareto --format json``: the summary as one JSON object."""

from __future__ import annotations

import json

from qa_ray import metrics as m
from qa_ray.cli.results import summary_json
from qa_ray.pareto import parse_constraint
from qa_ray.report.summary import summarize


def test_the_summary_as_json_names_the_front_and_the_best_under_each_budget():
    trials = [
        {"name": "a", "status": "COMPLETE", m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 900.0},
        {"name": "b", "status": "COMPLETE", m.EVAL_F1: 60.0, m.PEAK_MEMORY_MB: 1900.0},
        {"name": "c", "status": "COMPLETE", m.EVAL_F1: 30.0, m.PEAK_MEMORY_MB: 950.0},
        {"name": "d", "status": "FAILED", m.EVAL_F1: float("nan")},
    ]
    summary = summarize(
        "parent-1",
        trials,
        [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")],
        [parse_constraint("peak_memory_mb <= 2000")],
        budgets=(1000.0,),
    )
    out = json.loads(summary_json(summary))
    assert out["parent_run_id"] == "parent-1"
    assert out["objectives"] == [{"metric": "eval_f1", "mode": "max"},
                                 {"metric": "peak_memory_mb", "mode": "min"}]  # fmt: skip
    assert sorted(out["front"]) == ["a", "b"]
    assert [t["pareto_optimal"] for t in out["trials"]] == [True, True, False, False]
    assert out["trials"][3][m.EVAL_F1] is None  # NaN is not JSON
    assert {b["bound"]: out["trials"][b["trial"]]["name"] for b in out["best_under"]} == {
        1000.0: "a", 2000.0: "b"}  # fmt: skip


def test_pareto_format_json_prints_the_json_alone(monkeypatch, capsys, tmp_path):
    from qa_ray.cli import main
    from qa_ray.report import publish, summary
    from qa_ray.tracking import runs

    trials = [{"name": "a", "status": "COMPLETE", m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 900.0}]
    made = summarize("p1", trials, [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min")])
    monkeypatch.setattr(runs, "find_parent_run", lambda uri, name: "p1")
    monkeypatch.setattr(summary, "sweep_constraints", lambda uri, parent: [])
    monkeypatch.setattr(runs, "trial_records", lambda uri, parent: trials)  # read only
    monkeypatch.setattr(runs, "hypervolume_reference", lambda uri, parent: None)
    monkeypatch.setattr(runs, "sweep_params", lambda uri, parent: {})  # F1 and memory: defaults
    monkeypatch.setattr(publish, "publish_pareto", lambda *a, **kw: made)  # --publish
    monkeypatch.chdir(tmp_path)
    for publishing in ([], ["--publish"]):
        assert main(["pareto", "quickstart", "--format", "json", *publishing]) == 0
        assert json.loads(capsys.readouterr().out)["front"] == ["a"]
        assert main(["pareto", "quickstart", *publishing]) == 0
        assert capsys.readouterr().out.startswith("trial")
