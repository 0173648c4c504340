"""The curve table of a sweep logged to a real MLflow store, as the sweep's callback logs it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from qa_ray import metrics as m
from qa_ray.report.curves import SCHEMA, export_curves, main
from qa_ray.tracking.callback import MLflowSweepCallback
from qa_ray.tracking.runs import start_parent_run

OBJECTIVES = [(m.EVAL_F1, "max"), (m.PEAK_MEMORY_MB, "min"), (m.EVAL_LATENCY_MS, "min")]


def _row(step, f1, mb=900.0):
    return {
        m.STEP: step,
        m.TRAIN_SECONDS: step / 10,
        m.EVAL_F1: f1,
        m.EVAL_EXACT: f1 - 10,
        m.PEAK_MEMORY_MB: mb,
        m.EVAL_LATENCY_MS: 2.0,
        m.TRAIN_LOSS: 1.0,
    }


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    params = {
        "objectives": OBJECTIVES,
        "constraints": json.dumps(["peak_memory_mb <= 1000"]),
        "scheduler": json.dumps({"type": "mo_asha", "grace": 10}),
    }
    parent = start_parent_run(uri, "exp", "sweep-a", params=params, artifacts={})
    cb = MLflowSweepCallback(uri, parent, m.CURVES)
    asked = {"ids": ["q1", "q2"], "exact": [0, 1], "f1": [0.5, 1.0]}
    runs = [
        (
            "t1",
            {"lr": 0.1},
            [{**_row(10, 20.0), m.PER_QUESTION: asked}, _row(30, 40.0, 950.0)],
            {},
        ),  # fmt: skip
        ("t2", {"lr": 0.01}, [_row(10, 5.0)], {m.STOPPED_EARLY_AT: 10}),
        ("t3", {"lr": 0.5}, [_row(10, 30.0, 1200.0)], {m.INFEASIBLE: 1.0}),
    ]
    for i, (name, config, rows, end) in enumerate(runs):
        trial = SimpleNamespace(trial_id=f"x_{i}", trial_name=name, config=config)
        cb.on_trial_start(0, [], trial)
        for row in rows:
            cb.on_trial_result(0, [], trial, row)
        trial.last_result = {**rows[-1], **end}
        cb.on_trial_complete(0, [], trial)
    return uri, parent


def test_a_sweep_exports_configs_outcomes_and_a_row_per_evaluation(store):
    uri, parent = store
    table = export_curves(uri, "sweep-a")
    assert table["schema"] == SCHEMA and table["version"] == 1
    assert table["sweep"] == "sweep-a" and table["parent_run_id"] == parent
    assert table["objectives"] == [list(o) for o in OBJECTIVES]
    assert table["constraints"] == ["peak_memory_mb <= 1000"]
    assert table["scheduler"] == {"type": "mo_asha", "grace": 10}
    t1, t2, t3 = table["trials"]
    assert [t["outcome"] for t in (t1, t2, t3)] == ["complete", "pruned", "infeasible"]
    assert t2["stopped_early_at"] == 10.0 and t1["stopped_early_at"] is None
    assert t1["config"] == {"lr": 0.1}
    assert t1["rows"] == [
        {"step": 10, "train_seconds": 1.0, "eval_f1": 20.0, "eval_exact": 10.0,
         "peak_memory_mb": 900.0, "eval_latency_ms_per_example": 2.0,
         "per_question": {"exact": [0, 1], "f1": [0.5, 1.0]}},
        {"step": 30, "train_seconds": 3.0, "eval_f1": 40.0, "eval_exact": 30.0,
         "peak_memory_mb": 950.0, "eval_latency_ms_per_example": 2.0},
    ]  # fmt: skip
    assert export_curves(uri, parent) == table  # by run id too


def test_per_question_scores_go_with_their_evaluation(store, tmp_path):
    """The run's per_question.json table (appended at each evaluation) comes back as the
    row's scores in the table's question order; a row logged without them has none."""
    from mlflow.tracking import MlflowClient

    from qa_ray.tracking.runs import PER_QUESTION_TABLE, child_runs

    uri, parent = store
    t1 = next(r for r in child_runs(uri, parent) if r.data.params.get("lr") == "0.1")
    local = MlflowClient(uri).download_artifacts(t1.info.run_id, PER_QUESTION_TABLE, str(tmp_path))
    with open(local) as f:
        logged = json.load(f)
    assert logged["columns"] == ["step", "id", "exact", "f1"]
    assert logged["data"] == [[10, "q1", 0, 0.5], [10, "q2", 1, 1.0]]
    table = export_curves(uri, "sweep-a")
    assert table["question_ids"] == ["q1", "q2"]
    rows = table["trials"][0]["rows"]
    assert rows[0][m.PER_QUESTION] == {"exact": [0, 1], "f1": [0.5, 1.0]}
    assert m.PER_QUESTION not in rows[1]


def test_the_entry_point_writes_the_file_and_exits_2_on_an_unknown_sweep(store, tmp_path):
    uri, _ = store
    out = tmp_path / "c.json"
    assert main(["--tracking-uri", uri, "--sweep", "sweep-a", "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["trials"]) == 3
    assert main(["--tracking-uri", uri, "--sweep", "nope", "-o", str(out)]) == 2
