"""Tables of a :class:`~.summary.ParetoSummary`: the markdown summary, the console table and the
budget lines ``qa-ray pareto`` prints.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from qa_ray import metrics as m
from qa_ray.report.plots import family, model_label

if TYPE_CHECKING:
    from qa_ray.report.summary import ParetoSummary

__all__ = ["budget_lines", "trials_table"]


def several_models(trials) -> bool:
    return len({family(t) for t in trials}) > 1


def config_label(t, with_model: bool = False) -> str:
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


# Beside the measured peak when the sweep predicted it (every child run logs its prediction).
_PREDICTED_COLUMN = ((m.LABELS[m.PREDICTED_PEAK_MEMORY_MB], m.PREDICTED_PEAK_MEMORY_MB, ".0f"),)


def _columns(trials):
    lm = any(m.EVAL_LOSS in t for t in trials) and not any(m.EVAL_F1 in t for t in trials)
    cost = _COST_COLUMNS
    if any(m.PREDICTED_PEAK_MEMORY_MB in t for t in trials):
        cost = cost[:1] + _PREDICTED_COLUMN + cost[1:]
    return (_LM_COLUMNS if lm else _QA_COLUMNS) + cost


def _header(trials) -> list[str]:
    return ["trial", "status", "configuration"] + [c[0] for c in _columns(trials)]


def _rows(summary: ParetoSummary):
    trials = summary.trials
    columns = _columns(trials)
    quality, quality_sign = columns[0][1], -1 if columns[0][1] == m.EVAL_F1 else 1
    with_model = several_models(trials)

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
            config_label(t, with_model),
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
            f"{head}: {t['name']} ({config_label(t, several_models(summary.trials))}), "
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
