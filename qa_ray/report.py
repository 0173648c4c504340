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
from qa_ray.config import ConfigError
from qa_ray.pareto import front, hypervolume_history, nondominated_ranks, parse_constraint
from qa_ray.plots import model_label
from qa_ray.tasks import TASKS
from qa_ray.tracking import (
    QUALITATIVE_TABLE,
    TAG_OUTCOME,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL_NAME,
    _client,
    child_runs,
)

__all__ = [
    "ParetoSummary",
    "best_under",
    "budget_lines",
    "find_parent_run",
    "publish_pareto",
    "reference_point",
    "runnable_trial_yaml",
    "trials_table",
]


@dataclass(frozen=True)
class ParetoSummary:
    parent_run_id: str
    objectives: tuple[tuple[str, str], ...]
    trials: list[dict[str, Any]]  # name, run_id, status, params, metrics, pareto_optimal, rank
    optimal: tuple[int, ...]
    excluded: int
    hypervolume: list[float]
    reference: tuple[float, ...] = ()  # the hypervolume's reference point (objective units)
    best_under: tuple[dict[str, Any], ...] = ()  # per budget: metric, bound, trial index or None


def find_parent_run(uri: str, sweep_or_run: str) -> str:
    """The parent run id for a run id or a sweep name (the newest sweep of that name)."""
    client = _client(uri)
    try:
        return client.get_run(sweep_or_run).info.run_id
    except Exception:
        pass
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            exps,
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_or_run}' and tags.`{TAG_ROLE}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if exps
        else []
    )
    if not runs:
        raise ConfigError(
            sweep_or_run, [f"no sweep parent run or run id {sweep_or_run!r} at {uri}"]
        )
    return runs[0].info.run_id


def sweep_constraints(uri: str, parent_id: str) -> list[str]:
    """The constraints a sweep ran with (its parent run's ``constraints`` param)."""
    raw = _client(uri).get_run(parent_id).data.params.get("constraints")
    return json.loads(raw) if raw else []


def _records(uri: str, parent_id: str) -> list[dict[str, Any]]:
    out = []
    for r in child_runs(uri, parent_id):
        status = {"FINISHED": "COMPLETE"}.get(r.info.status, r.info.status)
        if status == "COMPLETE" and r.data.tags.get(TAG_OUTCOME) in ("pruned", "infeasible"):
            status = r.data.tags[TAG_OUTCOME].upper()  # PRUNED, INFEASIBLE: off the front
        rec: dict[str, Any] = {
            "name": r.data.tags.get(TAG_TRIAL_NAME) or r.info.run_name,
            "run_id": r.info.run_id,
            "status": status,
        }
        for k, v in r.data.params.items():
            rec[k] = _number(v)
        rec.update(r.data.metrics)
        out.append(rec)
    return out


def _number(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


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
    bounds = [c.bound for c in constraints if c.metric == metric and c.op in ("<=", "<")]
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


def publish_pareto(
    uri: str, parent_id: str, objectives, constraints=(), budgets=()
) -> ParetoSummary:
    """Computes the front over the parent's child runs and writes every artifact and tag.

    Args:
        constraints: feasibility filters (``peak_memory_mb <= 22000``); budgets on the x axis
            are drawn and set the hypervolume's reference point.
        budgets: more bounds on the x metric (``--budgets``): for each, the best trial under
            it, named in the summary and written as a runnable ``qa-ray train`` YAML.
    """
    from qa_ray import plots

    objs = tuple((o.metric, o.mode) for o in objectives)
    cons = [parse_constraint(c) for c in constraints]
    trials = _records(uri, parent_id)
    pf = front(trials, objs, cons)
    feasible = sorted(pf.optimal + pf.dominated)
    position = {i: k for k, i in enumerate(feasible)}  # trial index -> index among feasible
    ranks = nondominated_ranks([trials[i] for i in feasible], objs)
    client = _client(uri)
    for i, t in enumerate(trials):
        t["pareto_optimal"] = i in pf.optimal
        t["pareto_rank"] = ranks.get(position[i]) if i in position else None
        client.set_tag(t["run_id"], "pareto_optimal", "true" if t["pareto_optimal"] else "false")
        if t["pareto_rank"] is not None:
            client.set_tag(t["run_id"], "pareto_rank", str(t["pareto_rank"]))
    (y, y_mode), (x, _) = objs[0], objs[1] if len(objs) > 1 else (m.PEAK_MEMORY_MB, "min")
    x_budgets = _upper_budgets(cons, budgets, x)
    hv_budgets = {
        k: min(_upper_budgets(cons, budgets if k == x else (), k))
        for k, mode in objs
        if mode == "min" and _upper_budgets(cons, budgets if k == x else (), k)
    }
    ref = reference_point([trials[i] for i in feasible], objs, hv_budgets)
    hv = hypervolume_history([trials[i] for i in feasible], objs, ref)
    bests = tuple(
        {"metric": x, "bound": b, "trial": best_under(trials, feasible, x, b, objs[0])}
        for b in x_budgets
    )
    summary = ParetoSummary(
        parent_id, objs, trials, pf.optimal, len(pf.excluded), hv, tuple(ref), bests
    )

    plotted = [trials[i] for i in feasible]
    on_front = {position[i] for i in pf.optimal}
    others = [
        t
        for i, t in enumerate(trials)
        if i not in position
        and t["status"] in ("PRUNED", "INFEASIBLE", "COMPLETE")
        and isinstance(t.get(x), int | float)
    ]
    title = f"Pareto front: {y} vs {x} ({len(pf.optimal)} of {len(trials)} trials)"
    with tempfile.TemporaryDirectory() as d:

        def path(name):
            return os.path.join(d, name)

        with open(path("pareto.html"), "w") as f:
            f.write(
                plots.pareto_html(
                    plotted, on_front, x, y, y_mode, title, others=others, budgets=x_budgets
                )
            )
        plots.pareto_png(
            path("pareto.png"),
            plotted,
            on_front,
            x,
            y,
            y_mode,
            title,
            others=others,
            budgets=x_budgets,
        )
        for best in bests:
            if best["trial"] is not None:
                name = f"best_under_{best['bound']:g}_{x}.yaml"
                with open(path(name), "w") as f:
                    f.write(runnable_trial_yaml(client, parent_id, trials[best["trial"]]))
        for ym, xm in (
            (m.EVAL_EXACT, m.PEAK_MEMORY_MB),
            (m.EVAL_F1, m.PEAK_MEMORY_MB),
            (m.EVAL_F1, m.EVAL_LATENCY_MS),
        ):
            rows = [
                t for t in plotted if isinstance(t.get(ym), float) and isinstance(t.get(xm), float)
            ]
            if rows:
                plots.scatter_png(
                    path(f"{ym}_vs_{xm}.png"),
                    rows,
                    {j for j, t in enumerate(rows) if t["pareto_optimal"]},
                    xm,
                    ym,
                    f"{ym} vs {xm}",
                )
        if hv:
            plots.line_png(
                path("hypervolume.png"), hv, "hypervolume", "hypervolume after each trial"
            )
        with open(path("trials.csv"), "w", newline="") as f:
            f.write(_csv(trials))
        with open(path("summary.md"), "w") as f:
            f.write(summary_markdown(summary))
        task = client.get_run(parent_id).data.params.get("task", "extractive")
        answers = None
        if task in TASKS and TASKS[task].QUALITATIVE_QUESTIONS:
            answers = qualitative_by_trial(client, trials)
        if answers:
            with open(path("qualitative_answers.json"), "w") as f:
                json.dump(answers, f, indent=2)
            with open(path("qualitative_answers.html"), "w") as f:
                f.write(_html_table(answers, "Qualitative answers by trial (final evaluation)"))
        client.log_artifacts(parent_id, d, artifact_path="pareto")
    client.log_metric(parent_id, "pareto_front_size", len(pf.optimal))
    for step, v in enumerate(hv, start=1):
        client.log_metric(parent_id, "hypervolume", v, step=step)
    return summary


def runnable_trial_yaml(client, parent_id: str, trial: dict[str, Any]) -> str:
    """The trial's full configuration as a ``qa-ray train`` YAML: the sweep's trial blocks
    (the parent's ``sweep_config.yaml``) with the trial's sampled values set."""
    import yaml

    from qa_ray.config import TrialConfig
    from qa_ray.search_space import apply_params

    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(parent_id, "sweep_config.yaml", d)
        with open(local) as f:
            sweep = yaml.safe_load(f)
    base = {
        k: sweep[k] for k in ("model", "data", "train", "resources", "constraints") if k in sweep
    }
    params = client.get_run(trial["run_id"]).data.params
    cfg = apply_params(base, {k: _number(v) for k, v in params.items()})
    cfg["name"] = f"{sweep['name']}-{trial['name']}"
    cfg["output_dir"] = f"outputs/{cfg['name']}"
    cfg = TrialConfig.model_validate(cfg).model_dump(mode="json")
    head = (
        f"# {trial['name']} of sweep {sweep['name']} (MLflow run {trial['run_id']}), "
        "retrained alone:\n#   qa-ray train THIS_FILE\n"
    )
    return head + yaml.safe_dump(cfg, sort_keys=False)


def qualitative_by_trial(client, trials) -> dict[str, list] | None:
    """Each finished trial's last answers to the qualitative questions, a column per trial:
    ``{"columns": ["question", "<trial> (<configuration>)", ...], "data": [[...], ...]}``;
    ``None`` when no trial logged a qualitative table (every task but instruction)."""
    columns, by_trial = ["question"], []
    for t in trials:
        if t["status"] != "COMPLETE":
            continue
        with tempfile.TemporaryDirectory() as d:
            try:
                local = client.download_artifacts(t["run_id"], QUALITATIVE_TABLE, d)
            except Exception:  # no table on this run
                continue
            with open(local) as f:
                table = json.load(f)
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
    return len({str(t.get("model")) for t in trials}) > 1


def _config_label(t, with_model: bool = False) -> str:
    bits = t.get("quantization_bits", "")
    ft = t.get("finetune", "lora" if bits in (4, 8) else "")
    parts = [model_label(t.get("model")) if with_model else ""]
    parts += [f"{bits}-bit" if bits else "", ft or ""]
    if t.get("lora_r") is not None and (ft == "lora" or bits in (4, 8)):
        parts.append(f"r={t['lora_r']}")
    if "learning_rate" in t:
        parts.append(f"lr={float(t['learning_rate']):.1e}")
    if "per_device_batch_size" in t:
        parts.append(f"bs={t['per_device_batch_size']}x{t.get('gradient_accumulation_steps', 1)}")
    return " ".join(p for p in parts if p)


# The quality columns: EM/F1 for QA tasks, held-out loss/perplexity for instruction tuning.
_QA_COLUMNS = (("F1", m.EVAL_F1, ".2f"), ("EM", m.EVAL_EXACT, ".2f"))
_LM_COLUMNS = (("eval loss", m.EVAL_LOSS, ".4f"), ("perplexity", m.EVAL_PERPLEXITY, ".2f"))
_COST_COLUMNS = (
    ("peak memory MB", m.PEAK_MEMORY_MB, ".0f"),
    ("weights MB", m.MODEL_FOOTPRINT_MB, ".1f"),
    ("latency ms/q", m.EVAL_LATENCY_MS, ".1f"),
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
