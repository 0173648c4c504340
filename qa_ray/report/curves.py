"""Learning-curve tables: a finished sweep exported from MLflow to one JSON file, for replays
of early-stopping rules (``qa-ray replay``, ``benchmarks/replay.py``) without training again.

    python -m qa_ray.report.curves --tracking-uri sqlite:///mlflow.db --sweep minilm-squad -o c.json

Schema (``"schema": "qa-ray/curves"``, ``"version": 1``)::

    {
      "schema": "qa-ray/curves", "version": 1,
      "sweep": "minilm-squad",            # the sweep's name (its parent run's tag)
      "parent_run_id": "...",
      "objectives": [["eval_f1", "max"], ["peak_memory_mb", "min"]],
      "constraints": ["peak_memory_mb <= 22000"],
      "scheduler": {"type": "mo_asha", ...} | null,   # what the sweep ran with
      "trials": [
        {
          "name": "trial-3", "run_id": "...",
          "outcome": "complete" | "pruned" | "infeasible" | "failed" | "killed" | "running",
          "stopped_early_at": 90.0 | null,   # the scheduler's time attribute, when pruned
          "config": {"learning_rate": 3e-05, "finetune": "lora", ...},  # the run's params
          "rows": [                          # one per evaluation, by step
            {"step": 30, "train_seconds": 41.2, "eval_f1": 31.5, "eval_exact": 22.0,
             "peak_memory_mb": 2900.0, ...}  # plus every other objective of the sweep
          ]
        }
      ]
    }

A row is a step at which the sweep's first objective was logged (the loop reports at its
evaluations); a metric not logged at that step is ``null``. A pruned trial's rows end where it
was stopped: a replay can only run it that far.

Where the trials logged per-question scores (QA families: the ``per_question.json`` table of
each run), the table also holds ``"question_ids": [...]`` (the first trial's evaluation
questions, in order) and each row ``"per_question": {"exact": [0 | 1, ...], "f1": [0..1, ...]}``
in that order (with its own ``"ids"`` where a trial was evaluated on other questions): what
a paired rule (``qa_ray.search.schedulers.race``) reads. A row without it (an evaluation a
killed driver never received) has none.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from qa_ray import metrics as m

__all__ = ["ROW_METRICS", "SCHEMA", "curve_table", "export_curves", "main", "per_question_scores"]

SCHEMA, VERSION = "qa-ray/curves", 1
# Every row has these, then the sweep's other objectives.
ROW_METRICS = (m.STEP, m.TRAIN_SECONDS, m.EVAL_F1, m.EVAL_EXACT, m.PEAK_MEMORY_MB)


def curve_table(
    sweep: str,
    parent_run_id: str,
    objectives: Sequence[tuple[str, str]],
    constraints: Sequence[str],
    scheduler: Mapping[str, Any] | None,
    trials: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The table as a JSON-ready dict (pure: no MLflow).

    Args:
        trials: per trial ``name``, ``run_id``, ``outcome``, ``stopped_early_at``, ``config``
            and ``history``: ``{metric: [(step, value), ...]}`` as MLflow logged it; and,
            optionally, ``per_question``: ``{step: {"ids", "exact", "f1"}}``.
    """
    objectives = [(k, mode) for k, mode in objectives]
    columns = list(ROW_METRICS) + [k for k, _ in objectives if k not in ROW_METRICS]
    at = objectives[0][0] if objectives else m.EVAL_F1
    out = []
    question_ids: list[str] | None = None
    for t in trials:
        history = {k: dict(v) for k, v in t["history"].items()}  # a later value wins
        steps = sorted(history.get(at, {}))
        rows = [
            {k: float(s) if k == m.STEP else history.get(k, {}).get(s) for k in columns}
            for s in steps
        ]
        scored = t.get("per_question") or {}
        for row in rows:
            row[m.STEP] = int(row[m.STEP])
            if (q := scored.get(row[m.STEP])) is not None:
                question_ids = question_ids or list(q["ids"])
                same = list(q["ids"]) == question_ids
                row[m.PER_QUESTION] = {
                    **({} if same else {"ids": list(q["ids"])}),
                    "exact": list(q["exact"]),
                    "f1": list(q["f1"]),
                }
        out.append(
            {
                "name": t["name"],
                "run_id": t["run_id"],
                "outcome": t["outcome"],
                "stopped_early_at": t.get("stopped_early_at"),
                "config": dict(t["config"]),
                "rows": rows,
            }
        )
    table = {
        "schema": SCHEMA,
        "version": VERSION,
        "sweep": sweep,
        "parent_run_id": parent_run_id,
        "objectives": [list(o) for o in objectives],
        "constraints": list(constraints),
        "scheduler": dict(scheduler) if scheduler else None,
        "trials": out,
    }
    if question_ids is not None:
        table["question_ids"] = question_ids
    return table


def per_question_scores(text: str | None) -> dict[int, dict[str, list]]:
    """A run's ``per_question.json`` table (MLflow's ``log_table`` layout: ``columns`` and
    ``data``) as ``{step: {"ids", "exact", "f1"}}``; empty without one."""
    if not text:
        return {}
    table = json.loads(text)
    cols = {c: i for i, c in enumerate(table["columns"])}
    by_step: dict[int, dict[str, list]] = {}
    for row in table["data"]:
        step = int(row[cols["step"]])
        q = by_step.setdefault(step, {"ids": [], "exact": [], "f1": []})
        if row[cols["id"]] in q["ids"]:  # logged again for a step (a resumed run): once
            continue
        for k in ("ids", "exact", "f1"):
            q[k].append(row[cols["id" if k == "ids" else k]])
    return by_step


def export_curves(uri: str, sweep_or_run: str) -> dict[str, Any]:
    """The curve table of the newest sweep named ``sweep_or_run`` (or of that parent run id)
    in the MLflow store at ``uri``."""
    from qa_ray.report.summary import parse_objectives
    from qa_ray.tracking import runs as tracking

    parent = tracking.find_parent_run(uri, sweep_or_run)
    client = tracking.mlflow_client(uri)
    params = tracking.sweep_params(uri, parent)
    objectives = parse_objectives(params.get("objectives"))
    runs = {r.info.run_id: r for r in tracking.child_runs(uri, parent)}
    metrics = list(dict.fromkeys([*ROW_METRICS, *(k for k, _ in objectives)]))
    trials = []
    for rec in tracking.trial_records(uri, parent):
        run = runs[rec["run_id"]]
        stopped = run.data.tags.get(m.TAG_STOPPED_EARLY_AT)
        trials.append(
            {
                "name": rec["name"],
                "run_id": rec["run_id"],
                "outcome": rec["status"].lower(),
                "stopped_early_at": float(stopped) if stopped else None,
                "config": {k: tracking.number(v) for k, v in run.data.params.items()},
                "history": {
                    k: [(h.step, h.value) for h in client.get_metric_history(rec["run_id"], k)]
                    for k in metrics
                },
                "per_question": per_question_scores(
                    tracking.read_artifact(uri, rec["run_id"], tracking.PER_QUESTION_TABLE)
                ),
            }
        )
    scheduler = json.loads(params.get("scheduler") or "null")
    return curve_table(
        run_sweep_name(client, parent),
        parent,
        objectives,
        json.loads(params.get("constraints") or "[]"),
        scheduler,
        trials,
    )


def run_sweep_name(client, parent_run_id: str) -> str:
    run = client.get_run(parent_run_id)
    return run.data.tags.get(m.TAG_SWEEP, run.info.run_name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qa_ray.report.curves``: writes the table; exit 2 when no such sweep."""
    from qa_ray.errors import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m qa_ray.report.curves",
        description="Export a finished sweep's learning curves to one JSON table.",
        epilog="example: python -m qa_ray.report.curves --tracking-uri sqlite:///mlflow.db "
        "--sweep minilm-squad -o benchmarks/curves/minilm-squad.json",
    )
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--sweep", required=True, help="a sweep name or its parent run id")
    p.add_argument("-o", "--output", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    try:
        table = export_curves(args.tracking_uri, args.sweep)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with open(args.output, "w") as f:
        json.dump(table, f, indent=1)
    print(f"{args.output}: {len(table['trials'])} trials of sweep {table['sweep']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
