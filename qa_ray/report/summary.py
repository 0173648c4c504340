"""The sweep's Pareto report in MLflow: read child runs back, tag the front, write artifacts.

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
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from qa_ray import metrics as m
from qa_ray import tracking
from qa_ray.pareto import (
    Constraint,
    front,
    hypervolume_history,
    nondominated_ranks,
    parse_constraint,
)
from qa_ray.plots import family, model_label
from qa_ray.tasks import FACTS
from qa_ray.tracking import QUALITATIVE_TABLE, find_parent_run

__all__ = [
    "ParetoSummary",
    "best_under",
    "budget_lines",
    "find_parent_run",
    "publish_comparison",
    "publish_pareto",
    "reference_point",
    "runnable_trial_yaml",
    "trials_table",
]


@dataclass(frozen=True)
class ParetoSummary:
    """What a sweep's report says, computed from its trial records alone (:func:`summarize`).

    ``trials`` are copies of the records with ``pareto_optimal`` and ``pareto_rank`` set;
    the index fields point into it.
    """

    parent_run_id: str
    objectives: tuple[tuple[str, str], ...]
    trials: list[dict[str, Any]]
    optimal: tuple[int, ...]  # on the front
    feasible: tuple[int, ...]  # completed, every objective, within the constraints
    excluded: int  # failed, stopped early, over a budget, or missing an objective
    hypervolume: list[float]  # after each feasible trial, in the order they ended
    reference: tuple[float, ...]  # the hypervolume's reference point (objective units)
    budgets: tuple[float, ...]  # bounds on the x objective: constraints and --budgets
    best_under: tuple[dict[str, Any], ...]  # per budget: metric, bound, trial index or None

    @property
    def axes(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((y, mode), (x, mode))``: the first objective up, the second (or peak memory)
        across."""
        return self.objectives[0], (
            self.objectives[1] if len(self.objectives) > 1 else (m.PEAK_MEMORY_MB, "min")
        )


def sweep_constraints(uri: str, parent_id: str) -> list[str]:
    """The constraints a sweep ran with (its parent run's ``constraints`` param)."""
    raw = tracking.sweep_params(uri, parent_id).get("constraints")
    return json.loads(raw) if raw else []


def reference_point(trials, objectives, budgets: dict[str, float] | None = None) -> list[float]:
    """The hypervolume's reference point, in the objectives' units.

    A metric with a budget (``peak_memory_mb <= 22000``) takes the budget: the hypervolume is
    then the area of the feasible region a sweep covers, comparable across sweeps of the same
    task and budget. Otherwise: 0 for a maximized score (F1, EM: the untrained baseline's
    floor), and for a minimized metric a value worse than every trial's (the worst plus 10 %
    of its size, or plus 1 when it is 0), which moves with the trials.
    """
    budgets = budgets or {}
    ref = []
    for k, mode in objectives:
        if k in budgets:
            ref.append(float(budgets[k]))
            continue
        vals = [
            float(t[k])
            for t in trials
            if isinstance(t.get(k), int | float) and math.isfinite(float(t[k]))
        ]
        if mode == "max":
            ref.append(min(0.0, *vals) if vals else 0.0)
        else:
            worst = max(vals) if vals else 0.0
            ref.append(worst + (abs(worst) * 0.1 or 1.0))
    return ref


def _upper_budgets(constraints, budgets, metric: str) -> list[float]:
    """The budgets on ``metric``: the sweep's ``<=`` / ``<`` constraints, then ``--budgets``."""
    bounds = [c.bound for c in constraints if c.metric == metric and c.is_upper]
    return sorted(set(bounds) | {float(b) for b in budgets})


def best_under(trials, feasible, metric: str, bound: float, objective) -> int | None:
    """The feasible trial with the best first objective among those with ``metric <= bound``."""
    y, mode = objective
    inside = [
        i
        for i in feasible
        if isinstance(trials[i].get(metric), int | float) and trials[i][metric] <= bound
    ]
    if not inside:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(inside, key=lambda i: (sign * float(trials[i][y]), float(trials[i][metric])))


def summarize(
    parent_id: str,
    trials: list[dict[str, Any]],
    objectives,
    constraints: list[Constraint] = (),
    budgets=(),
) -> ParetoSummary:
    """The report of a sweep from its trial records (see :func:`tracking.trial_records`):
    front, ranks, hypervolume history and its reference point, the best trial under each
    budget. Pure: reads and writes nothing.

    Args:
        objectives: ``(metric, mode)`` pairs; the first is the y axis, the second the x axis.
        constraints: feasibility filters; those bounding a minimized objective from above
            are its budgets (drawn, and the hypervolume's reference point).
        budgets: more bounds on the x objective (``--budgets``).
    """
    objs = tuple((k, mode) for k, mode in objectives)
    trials = [dict(t) for t in trials]
    pf = front(trials, objs, constraints)
    feasible = tuple(sorted(pf.optimal + pf.dominated))
    ranks = nondominated_ranks([trials[i] for i in feasible], objs)
    for i, t in enumerate(trials):
        t["pareto_optimal"] = i in pf.optimal
        t["pareto_rank"] = ranks[feasible.index(i)] if i in feasible else None
    x = objs[1][0] if len(objs) > 1 else m.PEAK_MEMORY_MB
    budget_of = {
        k: _upper_budgets(constraints, budgets if k == x else (), k)
        for k, mode in objs
        if mode == "min"
    }
    ref = reference_point(
        [trials[i] for i in feasible], objs, {k: min(b) for k, b in budget_of.items() if b}
    )
    # in the order the trials ended, so the curve reads "after N completed trials"
    by_end = sorted(feasible, key=lambda i: (trials[i].get("ended") or 0, i))
    hv = hypervolume_history([trials[i] for i in by_end], objs, ref)
    x_budgets = tuple(_upper_budgets(constraints, budgets, x))
    bests = tuple(
        {"metric": x, "bound": b, "trial": best_under(trials, feasible, x, b, objs[0])}
        for b in x_budgets
    )
    return ParetoSummary(
        parent_run_id=parent_id,
        objectives=objs,
        trials=trials,
        optimal=pf.optimal,
        feasible=feasible,
        excluded=len(trials) - len(feasible),
        hypervolume=hv,
        reference=tuple(ref),
        budgets=x_budgets,
        best_under=bests,
    )


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
        objectives: :class:`~qa_ray.sweep_config.Objective` objects (metric, mode).
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
    tracking.log_hypervolume(uri, run_id, summary.hypervolume, len(summary.optimal))


def render(summary: ParetoSummary, uri: str) -> dict[str, str]:
    """The report's text artifacts: ``pareto.html``, ``trials.csv``, ``summary.md``, a
    ``best_under_*.yaml`` per budget with a trial under it, and for instruction tuning the
    qualitative answers side by side."""
    from qa_ray import plots

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
    return out


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
    from qa_ray import plots

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

    from qa_ray.config import TrialConfig
    from qa_ray.search_space import apply_params

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
        columns.append(f"{t['name']} ({_config_label(t, _several_models(trials))})")
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


def _several_models(trials) -> bool:
    return len({family(t) for t in trials}) > 1


def _config_label(t, with_model: bool = False) -> str:
    bits = t.get("quantization_bits", "")
    ft = t.get("finetune", "lora" if bits in (4, 8) else "")
    parts = [model_label(family(t)) if with_model else ""]
    parts += [f"{bits}-bit" if bits else "", ft or ""]
    if t.get("lora_r") is not None and (ft == "lora" or bits in (4, 8)):
        parts.append(f"r={t['lora_r']}")
    if "learning_rate" in t:
        parts.append(f"lr={float(t['learning_rate']):.1e}")
    if "per_device_batch_size" in t:
        parts.append(f"bs={t['per_device_batch_size']}x{t.get('gradient_accumulation_steps', 1)}")
    return " ".join(p for p in parts if p)


# The quality columns: EM/F1 for QA tasks, held-out loss/perplexity for instruction tuning.
_QA_COLUMNS = (
    (m.LABELS[m.EVAL_F1], m.EVAL_F1, ".2f"),
    (m.LABELS[m.EVAL_EXACT], m.EVAL_EXACT, ".2f"),
)
_LM_COLUMNS = (
    (m.LABELS[m.EVAL_LOSS], m.EVAL_LOSS, ".4f"),
    (m.LABELS[m.EVAL_PERPLEXITY], m.EVAL_PERPLEXITY, ".2f"),
)
_COST_COLUMNS = tuple(
    (m.LABELS[k], k, fmt)
    for k, fmt in (
        (m.PEAK_MEMORY_MB, ".0f"),
        (m.MODEL_FOOTPRINT_MB, ".1f"),
        (m.EVAL_LATENCY_MS, ".1f"),
    )
)


def _columns(trials):
    lm = any(m.EVAL_LOSS in t for t in trials) and not any(m.EVAL_F1 in t for t in trials)
    return (_LM_COLUMNS if lm else _QA_COLUMNS) + _COST_COLUMNS


def _header(trials) -> list[str]:
    return ["trial", "status", "configuration"] + [c[0] for c in _columns(trials)]


def _rows(summary: ParetoSummary):
    trials = summary.trials
    columns = _columns(trials)
    quality, quality_sign = columns[0][1], -1 if columns[0][1] == m.EVAL_F1 else 1
    with_model = _several_models(trials)

    def sort_key(i):
        t = trials[i]
        v = t.get(quality)
        return (
            not t["pareto_optimal"],
            t["pareto_rank"] if t["pareto_rank"] is not None else 1e9,
            quality_sign * float(v) if isinstance(v, int | float) else math.inf,
        )

    for i in sorted(range(len(trials)), key=sort_key):
        t = trials[i]
        yield [
            ("*" if t["pareto_optimal"] else " ") + t["name"],
            t["status"],
            _config_label(t, with_model),
        ] + [
            format(t[k], fmt) if isinstance(t.get(k), int | float) else "-" for _, k, fmt in columns
        ]


def summary_markdown(summary: ParetoSummary) -> str:
    """The seed-report style table, front rows (*) first."""
    header = _header(summary.trials)
    lines = [
        f"# Pareto summary ({', '.join(f'{k} {mo}' for k, mo in summary.objectives)})",
        "",
        f"{len(summary.optimal)} trials on the front (*), {summary.excluded} excluded "
        "(failed, stopped early, over a budget, or missing an objective).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(summary)]
    if summary.best_under:
        lines += ["", "## Best under each budget", ""]
        lines += [f"- {line}" for line in budget_lines(summary)]
    if summary.reference:
        ref = ", ".join(
            f"{k} {v:g}" for (k, _), v in zip(summary.objectives, summary.reference, strict=True)
        )
        lines += ["", f"Hypervolume reference point: {ref}."]
    return "\n".join(lines) + "\n"


def budget_lines(summary: ParetoSummary) -> list[str]:
    """``best under 22000 MB peak_memory_mb: trial-x (config), eval_f1 42.10 at 20312``."""
    (y, _), out = summary.objectives[0], []
    for b in summary.best_under:
        head = f"best under {b['metric']} <= {b['bound']:g}"
        if b["trial"] is None:
            out.append(f"{head}: no completed trial fits")
            continue
        t = summary.trials[b["trial"]]
        out.append(
            f"{head}: {t['name']} ({_config_label(t, _several_models(summary.trials))}), "
            f"{y} {float(t[y]):.2f} at {float(t[b['metric']]):.0f}"
            f" (pareto/best_under_{b['bound']:g}_{b['metric']}.yaml)"
        )
    return out


def trials_table(summary: ParetoSummary) -> str:
    """A plain-text table of every trial, front (*) first, for the terminal."""
    header = _header(summary.trials)
    rows = [header] + list(_rows(summary))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows
    )
