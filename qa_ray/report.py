"""The sweep's Pareto report in MLflow: read child runs back, tag the front, write artifacts.

    qa-ray pareto quickstart --x peak_memory_mb --y eval_f1

On the parent run: ``pareto/pareto.html`` (interactive), ``pareto/pareto.png``,
``pareto/trials.csv`` (with ``pareto_optimal``), EM/F1 vs memory and F1 vs latency plots,
hypervolume over trials, and ``pareto/summary.md``. Each child on the front is tagged
``pareto_optimal=true`` with its ``pareto_rank``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from qa_ray import metrics as m
from qa_ray.config import ConfigError
from qa_ray.pareto import front, hypervolume_history, nondominated_ranks, parse_constraint
from qa_ray.tracking import TAG_ROLE, TAG_SWEEP, TAG_TRIAL_NAME, _client, child_runs

__all__ = ["ParetoSummary", "find_parent_run", "publish_pareto", "trials_table"]


@dataclass(frozen=True)
class ParetoSummary:
    parent_run_id: str
    objectives: tuple[tuple[str, str], ...]
    trials: list[dict[str, Any]]  # name, run_id, status, params, metrics, pareto_optimal, rank
    optimal: tuple[int, ...]
    excluded: int
    hypervolume: list[float]


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


def _records(uri: str, parent_id: str) -> list[dict[str, Any]]:
    out = []
    for r in child_runs(uri, parent_id):
        rec: dict[str, Any] = {
            "name": r.data.tags.get(TAG_TRIAL_NAME) or r.info.run_name,
            "run_id": r.info.run_id,
            "status": {"FINISHED": "COMPLETE"}.get(r.info.status, r.info.status),
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


def _reference(trials, objectives) -> list[float]:
    """A reference point worse than every trial: 0 for a max metric, 1.1 x the worst for min."""
    ref = []
    for k, mode in objectives:
        vals = [
            float(t[k])
            for t in trials
            if isinstance(t.get(k), int | float) and not math.isnan(t[k])
        ]
        ref.append(0.0 if mode == "max" else (max(vals) * 1.1 if vals else 1.0))
    return ref


def publish_pareto(uri: str, parent_id: str, objectives, constraints=()) -> ParetoSummary:
    """Computes the front over the parent's child runs and writes every artifact and tag."""
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
    hv = hypervolume_history([trials[i] for i in feasible], objs, _reference(trials, objs))
    summary = ParetoSummary(parent_id, objs, trials, pf.optimal, len(pf.excluded), hv)

    (y, y_mode), (x, _) = objs[0], objs[1] if len(objs) > 1 else (m.PEAK_MEMORY_MB, "min")
    plotted = [trials[i] for i in feasible]
    on_front = {position[i] for i in pf.optimal}
    title = f"Pareto front: {y} vs {x} ({len(pf.optimal)} of {len(trials)} trials)"
    with tempfile.TemporaryDirectory() as d:

        def path(name):
            return os.path.join(d, name)

        with open(path("pareto.html"), "w") as f:
            f.write(plots.pareto_html(plotted, on_front, x, y, y_mode, title))
        plots.pareto_png(path("pareto.png"), plotted, on_front, x, y, y_mode, title)
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
        client.log_artifacts(parent_id, d, artifact_path="pareto")
    client.log_metric(parent_id, "pareto_front_size", len(pf.optimal))
    for step, v in enumerate(hv, start=1):
        client.log_metric(parent_id, "hypervolume", v, step=step)
    return summary


def _csv(trials) -> str:
    keys: list[str] = []
    for t in trials:
        keys.extend(k for k in t if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(trials)
    return buf.getvalue()


def _config_label(t) -> str:
    bits = t.get("quantization_bits", "")
    ft = t.get("finetune", "lora" if bits in (4, 8) else "")
    parts = [f"{bits}-bit" if bits else "", ft or ""]
    if t.get("lora_r") is not None and (ft == "lora" or bits in (4, 8)):
        parts.append(f"r={t['lora_r']}")
    if "learning_rate" in t:
        parts.append(f"lr={float(t['learning_rate']):.1e}")
    if "per_device_batch_size" in t:
        parts.append(f"bs={t['per_device_batch_size']}x{t.get('gradient_accumulation_steps', 1)}")
    return " ".join(p for p in parts if p)


def _rows(summary: ParetoSummary):
    order = sorted(
        range(len(summary.trials)),
        key=lambda i: (
            not summary.trials[i]["pareto_optimal"],
            summary.trials[i]["pareto_rank"]
            if summary.trials[i]["pareto_rank"] is not None
            else 1e9,
            -float(summary.trials[i].get(m.EVAL_F1, -1) or -1),
        ),
    )
    for i in order:
        t = summary.trials[i]

        def f(k, fmt, t=t):
            v = t.get(k)
            return format(v, fmt) if isinstance(v, int | float) else "-"

        yield [
            ("*" if t["pareto_optimal"] else " ") + t["name"],
            t["status"],
            _config_label(t),
            f(m.EVAL_F1, ".2f"),
            f(m.EVAL_EXACT, ".2f"),
            f(m.PEAK_MEMORY_MB, ".0f"),
            f(m.MODEL_FOOTPRINT_MB, ".1f"),
            f(m.EVAL_LATENCY_MS, ".1f"),
        ]


_HEADER = [
    "trial",
    "status",
    "configuration",
    "F1",
    "EM",
    "peak memory MB",
    "weights MB",
    "latency ms/q",
]


def summary_markdown(summary: ParetoSummary) -> str:
    """The seed-report style table, front rows (*) first."""
    lines = [
        f"# Pareto summary ({', '.join(f'{k} {mo}' for k, mo in summary.objectives)})",
        "",
        f"{len(summary.optimal)} trials on the front (*), {summary.excluded} excluded "
        "(failed or missing an objective).",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(summary)]
    return "\n".join(lines) + "\n"


def trials_table(summary: ParetoSummary) -> str:
    """A plain-text table of every trial, front (*) first, for the terminal."""
    rows = [_HEADER] + list(_rows(summary))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(_HEADER))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows
    )
