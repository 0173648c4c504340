"""Pareto plots: interactive HTML (plotly) and static PNG (matplotlib). Lazy optional imports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["line_png", "model_label", "pareto_html", "pareto_png", "scatter_png"]

_HOVER = (
    "model",
    "learning_rate",
    "lora_r",
    "quantization_bits",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "finetune",
    "warmup_ratio",
)


def _require(module: str, extra: str = "plots"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"plots need {module}: pip install 'qa-ray[{extra}]'") from exc


def _step_line(points: Sequence[tuple[float, float]], y_mode: str) -> tuple[list, list]:
    """The front as a staircase in x order (x is minimized)."""
    pts = sorted(points, key=lambda p: (p[0], -p[1] if y_mode == "max" else p[1]))
    xs, ys = [], []
    for x, y in pts:
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def pareto_html(
    trials: Sequence[Mapping[str, Any]], optimal: set[int], x: str, y: str, y_mode: str, title: str
) -> str:
    """A self-contained HTML page: one trace per (fine-tune method, bits), coloured by bits with
    a marker symbol per method (per model, when the sweep searches the model too); dominated
    trials faded; the front as steps."""
    go = _require("plotly.graph_objects")
    fig = go.Figure()
    models = sorted({str(t["model"]) for t in trials if t.get("model")})
    by_model = len(models) > 1
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, t in enumerate(trials):
        key = (
            model_label(t.get("model")) if by_model else "",
            str(t.get("finetune") or "?"),
            str(t.get("quantization_bits") or "?"),
        )
        groups.setdefault(key, []).append(i)
    palette = {"4": "#d62728", "8": "#ff7f0e", "16": "#2ca02c", "32": "#1f77b4"}
    symbols = {"full": "circle", "lora": "diamond"}
    shapes = ["circle", "diamond", "square", "triangle-up", "cross", "star", "hexagon"]
    model_symbol = {model_label(mo): shapes[k % len(shapes)] for k, mo in enumerate(models)}
    for (model, method, bits), idx in sorted(groups.items()):
        hover = [
            "<br>".join(
                [f"<b>{trials[i].get('name', i)}</b>"]
                + [f"{k}: {trials[i][k]}" for k in _HOVER if trials[i].get(k) is not None]
                + [f"{y}: {trials[i][y]:.2f}", f"{x}: {trials[i][x]:.1f}"]
            )
            for i in idx
        ]
        fig.add_trace(
            go.Scatter(
                x=[trials[i][x] for i in idx],
                y=[trials[i][y] for i in idx],
                mode="markers",
                name=f"{model} {method} {bits}-bit".strip(),
                text=hover,
                hoverinfo="text",
                marker=dict(
                    size=[14 if i in optimal else 9 for i in idx],
                    color=palette.get(bits, "#7f7f7f"),
                    symbol=model_symbol[model] if by_model else symbols.get(method, "square"),
                    opacity=[1.0 if i in optimal else 0.35 for i in idx],
                    line=dict(width=[2 if i in optimal else 0 for i in idx], color="black"),
                ),
            )
        )
    xs, ys = _step_line([(trials[i][x], trials[i][y]) for i in optimal], y_mode)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            name="Pareto front",
            line=dict(shape="linear", color="black", dash="dot"),
            hoverinfo="skip",
        )
    )
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    return fig.to_html(include_plotlyjs="inline", full_html=True, div_id="qa-ray-pareto")


def model_label(name_or_path) -> str:
    """A model's short name for legends: the last part of a hub id or folder path."""
    return str(name_or_path or "?").rstrip("/").rsplit("/", 1)[-1]


def _plt():
    mpl = _require("matplotlib")
    mpl.use("Agg")
    return _require("matplotlib.pyplot")


def pareto_png(
    path: str, trials, optimal: set[int], x: str, y: str, y_mode: str, title: str
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    palette = {4: "#d62728", 8: "#ff7f0e", 16: "#2ca02c", 32: "#1f77b4"}
    for i, t in enumerate(trials):
        on = i in optimal
        ax.scatter(
            t[x],
            t[y],
            s=60 if on else 30,
            alpha=1.0 if on else 0.35,
            color=palette.get(t.get("quantization_bits"), "#7f7f7f"),
            edgecolors="black" if on else "none",
        )
    xs, ys = _step_line([(trials[i][x], trials[i][y]) for i in optimal], y_mode)
    ax.plot(xs, ys, "k:", label="Pareto front")
    for bits, c in palette.items():
        ax.scatter([], [], color=c, label=f"{bits}-bit")
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scatter_png(path: str, trials, optimal: set[int], x: str, y: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, t in enumerate(trials):
        ax.scatter(t[x], t[y], color="#1f77b4" if i in optimal else "#aaaaaa")
    ax.set(xlabel=x, ylabel=y, title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def line_png(path: str, values: Sequence[float], ylabel: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(range(1, len(values) + 1), values, marker="o")
    ax.set(xlabel="completed trials", ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
