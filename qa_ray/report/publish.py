"""Publishing the Pareto report to MLflow: read child runs back, tag the front, write artifacts.

    qa-ray pareto quickstart --x peak_memory_mb --y eval_f1

On the parent run: ``pareto/pareto.html`` (interactive), ``pareto/pareto.png``,
``pareto/trials.csv`` (with ``pareto_optimal``), EM/F1 vs memory and F1 vs latency plots,
hypervolume over trials, and ``pareto/summary.md``. Each child on the front is tagged
``pareto_optimal=true`` with its ``pareto_rank``. For instruction tuning, the finished trials'
answers to the qualitative questions side by side: ``pareto/qualitative_answers.html`` (a
table, question by trial) and ``.json``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import tempfile
from typing import Any

from qa_ray import metrics as m
from qa_ray.pareto import (
    parse_constraint,
)
from qa_ray.report.summary import ParetoSummary, summarize
from qa_ray.report.tables import config_label, several_models, summary_markdown
from qa_ray.tasks import FACTS
from qa_ray.tracking import runs as tracking
from qa_ray.tracking.runs import ERROR_BREAKDOWN_FILE, QUALITATIVE_TABLE

__all__ = ["publish_comparison", "publish_pareto", "runnable_trial_yaml"]


def publish_comparison(
    uri: str, parent_ids: list[str], objectives, constraints=(), budgets=()
) -> ParetoSummary:
    """One front over the trials of several sweeps (each sweep a family, drawn with its own
    marker), written to a new comparison run (``qa_ray.role = comparison``) with the same
    artifacts as a sweep's report. The trials' own Pareto tags (their sweep's) are left as
    they are."""
    records = [r for p in parent_ids for r in tracking.trial_records(uri, p)]
    for r in records:
        r["family"] = r["sweep"]
    tasks = {tracking.sweep_params(uri, p).get("task", "extractive") for p in parent_ids}
    run_id = tracking.start_comparison_run(
        uri,
        parent_ids,
        {
            "task": tasks.pop() if len(tasks) == 1 else "mixed",
            "objectives": [(o.metric, o.mode) for o in objectives],
            "constraints": json.dumps(list(constraints)),
        },
    )
    summary = summarize(
        run_id,
        records,
        [(o.metric, o.mode) for o in objectives],
        [parse_constraint(c) for c in constraints],
        budgets,
    )
    _write_report(uri, run_id, summary)
    return summary


def publish_pareto(
    uri: str, parent_id: str, objectives, constraints=(), budgets=()
) -> ParetoSummary:
    """Reads the sweep's trials from MLflow, summarizes them (:func:`summarize`) and writes
    the report: the trials' Pareto tags, the parent's artifacts under ``pareto/`` and its
    hypervolume curve.

    Args:
        objectives: :class:`~qa_ray.sweep.config.Objective` objects (metric, mode).
        constraints: texts (``peak_memory_mb <= 22000``).
        budgets: more bounds on the x metric (``--budgets``): for each, the best trial under
            it, named in the summary and written as a runnable ``qa-ray train`` YAML.
    """
    summary = summarize(
        parent_id,
        tracking.trial_records(uri, parent_id),
        [(o.metric, o.mode) for o in objectives],
        [parse_constraint(c) for c in constraints],
        budgets,
        reference=tracking.hypervolume_reference(uri, parent_id),
    )
    tracking.set_pareto_tags(uri, summary.trials)
    _write_report(uri, parent_id, summary)
    return summary


def _write_report(uri: str, run_id: str, summary: ParetoSummary) -> None:
    with tempfile.TemporaryDirectory() as d:
        for name, text in render(summary, uri).items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        _render_pngs(summary, d)
        tracking.mlflow_client(uri).log_artifacts(run_id, d, artifact_path="pareto")
    tracking.log_hypervolume(
        uri, run_id, summary.hypervolume, len(summary.optimal), summary.reference
    )


def render(summary: ParetoSummary, uri: str) -> dict[str, str]:
    """The report's text artifacts: ``pareto.html``, ``trials.csv``, ``summary.md``, a
    ``best_under_*.yaml`` per budget with a trial under it, and for instruction tuning the
    qualitative answers side by side."""
    from qa_ray.report import plots

    (y, y_mode), (x, x_mode) = summary.axes
    trials = summary.trials
    plotted, on_front, others = _plotted(summary)
    out = {
        "pareto.html": plots.pareto_html(
            plotted, on_front, x, y, y_mode, _title(summary), others=others,
            budgets=summary.budgets, x_mode=x_mode, staircase=len(summary.objectives) == 2,
        ),
        "trials.csv": _csv(trials),
        "summary.md": summary_markdown(summary),
    }  # fmt: skip
    import yaml

    for best in summary.best_under:
        if best["trial"] is None:
            continue
        t = trials[best["trial"]]
        parent = t.get("parent_run_id", summary.parent_run_id)
        sweep = yaml.safe_load(tracking.read_artifact(uri, parent, "sweep_config.yaml") or "{}")
        out[f"best_under_{best['bound']:g}_{x}.yaml"] = runnable_trial_yaml(
            sweep, tracking.run_params(uri, t["run_id"]), t
        )
    task = tracking.sweep_params(uri, summary.parent_run_id).get("task", "extractive")
    if task in FACTS and FACTS[task].qualitative_questions:
        answers = qualitative_by_trial(uri, trials)
        if answers:
            out["qualitative_answers.json"] = json.dumps(answers, indent=2)
            out["qualitative_answers.html"] = _html_table(
                answers, "Qualitative answers by trial (final evaluation)"
            )
    errors = errors_by_trial(uri, [trials[i] for i in summary.optimal])
    if errors:
        from qa_ray.scoring.breakdown import table_html

        out["error_breakdown.json"] = json.dumps(errors, indent=2)
        out["error_breakdown.html"] = table_html(
            errors, "Error breakdown of the front's trials (final predictions)"
        )
    return out


def errors_by_trial(uri: str, trials) -> dict[str, list] | None:
    """The trials' error breakdowns (their runs' ``error_breakdown.json``) side by side, a
    column per trial (:func:`qa_ray.scoring.breakdown.breakdown_table`); ``None`` when none
    logged one (instruction tuning)."""
    from qa_ray.scoring.breakdown import breakdown_table

    named = []
    for t in trials:
        text = tracking.read_artifact(uri, t["run_id"], ERROR_BREAKDOWN_FILE)
        if text is not None:
            named.append((f"{t['name']} ({config_label(t, several_models(trials))})",
                          json.loads(text)))  # fmt: skip
    return breakdown_table(named) if named else None


def _title(summary: ParetoSummary) -> str:
    (y, _), (x, _) = summary.axes
    return f"Pareto front: {y} vs {x} ({len(summary.optimal)} of {len(summary.trials)} trials)"


def _plotted(summary: ParetoSummary):
    """The feasible trials, which of them are on the front, and the others with an x value
    (stopped early, infeasible, outside the constraints) to draw apart."""
    _, (x, _) = summary.axes
    plotted = [summary.trials[i] for i in summary.feasible]
    on_front = {summary.feasible.index(i) for i in summary.optimal}
    others = [
        t
        for i, t in enumerate(summary.trials)
        if i not in summary.feasible
        and t["status"] in ("PRUNED", "INFEASIBLE", "COMPLETE")
        and isinstance(t.get(x), int | float)
    ]
    return plotted, on_front, others


def _render_pngs(summary: ParetoSummary, folder: str) -> None:
    from qa_ray.report import plots

    (y, y_mode), (x, x_mode) = summary.axes
    plotted, on_front, others = _plotted(summary)

    def path(name):
        return os.path.join(folder, name)

    plots.pareto_png(
        path("pareto.png"), plotted, on_front, x, y, y_mode, _title(summary), others=others,
        budgets=summary.budgets, x_mode=x_mode, staircase=len(summary.objectives) == 2,
    )  # fmt: skip
    for ym, xm in (
        (m.EVAL_EXACT, m.PEAK_MEMORY_MB),
        (m.EVAL_F1, m.PEAK_MEMORY_MB),
        (m.EVAL_F1, m.EVAL_LATENCY_MS),
    ):
        rows = [t for t in plotted if isinstance(t.get(ym), float) and isinstance(t.get(xm), float)]
        if rows:
            plots.scatter_png(
                path(f"{ym}_vs_{xm}.png"),
                rows,
                {j for j, t in enumerate(rows) if t["pareto_optimal"]},
                xm,
                ym,
                f"{ym} vs {xm}",
            )
    if summary.hypervolume:
        plots.line_png(
            path("hypervolume.png"),
            summary.hypervolume,
            "hypervolume",
            "hypervolume after each completed trial (in the order they ended)",
        )


def runnable_trial_yaml(sweep: dict[str, Any], params: dict[str, Any], trial: dict) -> str:
    """A trial's full configuration as a ``qa-ray train`` YAML: the sweep's trial blocks (its
    resolved ``sweep_config.yaml``) with the trial's sampled values (its run's params) set."""
    import yaml

    from qa_ray.config.trial import TrialConfig
    from qa_ray.search.space import apply_params

    base = {
        k: sweep[k] for k in ("model", "data", "train", "resources", "constraints") if k in sweep
    }
    cfg = apply_params(base, params)
    cfg["name"] = f"{sweep['name']}-{trial['name']}"
    cfg["output_dir"] = f"outputs/{cfg['name']}"
    cfg = TrialConfig.model_validate(cfg).model_dump(mode="json")
    head = (
        f"# {trial['name']} of sweep {sweep['name']} (MLflow run {trial['run_id']}), "
        "retrained alone:\n#   qa-ray train THIS_FILE\n"
    )
    return head + yaml.safe_dump(cfg, sort_keys=False)


def qualitative_by_trial(uri: str, trials) -> dict[str, list] | None:
    """Each finished trial's last answers to the qualitative questions, a column per trial:
    ``{"columns": ["question", "<trial> (<configuration>)", ...], "data": [[...], ...]}``;
    ``None`` when no trial logged a qualitative table (every task but instruction)."""
    columns, by_trial = ["question"], []
    for t in trials:
        if t["status"] != "COMPLETE":
            continue
        text = tracking.read_artifact(uri, t["run_id"], QUALITATIVE_TABLE)
        if text is None:  # no table on this run
            continue
        table = json.loads(text)
        rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
        last = max(r["step"] for r in rows)
        by_trial.append({r["question"]: r["answer"] for r in rows if r["step"] == last})
        columns.append(f"{t['name']} ({config_label(t, several_models(trials))})")
    if not by_trial:
        return None
    questions = list(dict.fromkeys(q for answers in by_trial for q in answers))
    return {
        "columns": columns,
        "data": [[q] + [answers.get(q, "") for answers in by_trial] for q in questions],
    }


def _html_table(table: dict[str, list], title: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table["data"]
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;white-space:pre-wrap;"
        "max-width:28em}th{background:#f3f3f3}</style>"
        f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"
    )


def _csv(trials) -> str:
    keys: list[str] = []
    for t in trials:
        keys.extend(k for k in t if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(trials)
    return buf.getvalue()
