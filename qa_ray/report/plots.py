"""Pareto plots: interactive HTML (plotly) and static PNG (matplotlib). Lazy optional imports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "check_available",
    "family",
    "line_png",
    "model_label",
    "pareto_html",
    "pareto_png",
    "scatter_png",
]

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


def check_available() -> None:
    """Raises ImportError naming the extra when plotly or matplotlib is missing: a sweep checks
    it before it starts, so it does not fail at its very end, on the report."""
    for module in ("plotly.graph_objects", "matplotlib"):
        _require(module)


def _require(module: str, extra: str = "plots"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"plots need {module}: pip install 'qa-ray[{extra}]'") from exc


def _step_line(
    points: Sequence[tuple[float, float]], y_mode: str, x_mode: str = "min"
) -> tuple[list, list]:
    """A two-objective front as a staircase: from its best-x end (smallest x when x is
    minimized, largest when maximized), each step holds the y reached so far until the next
    point's x, then moves to that point's y."""
    sign_x = 1 if x_mode == "min" else -1
    sign_y = -1 if y_mode == "max" else 1
    pts = sorted(points, key=lambda p: (sign_x * p[0], sign_y * p[1]))
    xs, ys = [], []
    for x, y in pts:
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def _off_front(others: Sequence[Mapping[str, Any]], y: str, floor: float):
    """Trials kept off the front, by outcome: ``(label, symbol, [(x, y, trial)])``; a trial
    stopped before it was scored is drawn at ``floor`` (the lowest y plotted)."""
    groups = [
        ("stopped early (partial)", "circle-open", "PRUNED"),
        ("over budget / out of memory", "x", "INFEASIBLE"),
        ("outside the constraints", "x-open", "COMPLETE"),
    ]
    for label, symbol, status in groups:
        rows = [t for t in others if t.get("status") == status]
        if rows:
            yield (
                label,
                symbol,
                [(t, t[y] if isinstance(t.get(y), int | float) else floor) for t in rows],
            )


def pareto_html(
    trials: Sequence[Mapping[str, Any]],
    optimal: set[int],
    x: str,
    y: str,
    y_mode: str,
    title: str,
    *,
    others: Sequence[Mapping[str, Any]] = (),
    budgets: Sequence[float] = (),
    x_mode: str = "min",
    staircase: bool = True,
) -> str:
    """A self-contained HTML page: one trace per (fine-tune method, bits), coloured by bits with
    a marker symbol per method (per model, when the sweep searches the model too); dominated
    trials faded; the front as steps; trials stopped early or over a budget (``others``) in
    grey, and each budget on x as a dashed vertical line. ``staircase`` is for two
    objectives: with three or more the front's projection is no staircase, so its points are
    highlighted without a line."""
    go = _require("plotly.graph_objects")
    fig = go.Figure()
    # A family per marker: the sweep in a comparison across sweeps, else the model.
    models = sorted({family(t) for t in trials if family(t)})
    by_model = len(models) > 1
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, t in enumerate(trials):
        key = (
            model_label(family(t)) if by_model else "",
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
    if staircase:
        xs, ys = _step_line([(trials[i][x], trials[i][y]) for i in optimal], y_mode, x_mode)
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
    floor = min((float(t[y]) for t in trials if isinstance(t.get(y), int | float)), default=0.0)
    for label, symbol, rows in _off_front(others, y, floor):
        fig.add_trace(
            go.Scatter(
                x=[t[x] for t, _ in rows],
                y=[v for _, v in rows],
                mode="markers",
                name=label,
                text=[
                    f"<b>{t.get('name')}</b><br>{t.get('status')}<br>{x}: {t[x]:.1f}"
                    + (f"<br>{y}: {t[y]:.2f}" if isinstance(t.get(y), int | float) else "")
                    for t, _ in rows
                ],
                hoverinfo="text",
                marker=dict(size=9, color="#7f7f7f", symbol=symbol),
            )
        )
    for b in budgets:
        fig.add_vline(x=b, line=dict(color="#d62728", dash="dash"), annotation_text=f"budget {b:g}")
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    return fig.to_html(include_plotlyjs="inline", full_html=True, div_id="qa-ray-pareto")


def family(trial: Mapping[str, Any]) -> str:
    """What a trial is grouped and marked by: its sweep in a comparison of several sweeps
    (``family``), else its model."""
    return str(trial.get("family") or trial.get("model") or "")


def model_label(name_or_path) -> str:
    """A model's short name for legends: the last part of a hub id or folder path."""
    return str(name_or_path or "?").rstrip("/").rsplit("/", 1)[-1]


def _plt():
    mpl = _require("matplotlib")
    mpl.use("Agg")
    return _require("matplotlib.pyplot")


def pareto_png(
    path: str,
    trials,
    optimal: set[int],
    x: str,
    y: str,
    y_mode: str,
    title: str,
    *,
    others=(),
    budgets: Sequence[float] = (),
    x_mode: str = "min",
    staircase: bool = True,
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
    if staircase:
        xs, ys = _step_line([(trials[i][x], trials[i][y]) for i in optimal], y_mode, x_mode)
        ax.plot(xs, ys, "k:", label="Pareto front")
    for bits, c in palette.items():
        ax.scatter([], [], color=c, label=f"{bits}-bit")
    floor = min((float(t[y]) for t in trials if isinstance(t.get(y), int | float)), default=0.0)
    for label, symbol, rows in _off_front(others, y, floor):
        marker = {"circle-open": "o", "x": "x", "x-open": "+"}[symbol]
        ax.scatter(
            [t[x] for t, _ in rows],
            [v for _, v in rows],
            marker=marker,
            label=label,
            **(
                {"facecolors": "none", "edgecolors": "#7f7f7f"}
                if marker == "o"
                else {"color": "#7f7f7f"}
            ),
        )
    for b in budgets:
        ax.axvline(b, color="#d62728", linestyle="--", linewidth=1)
        ax.annotate(f"budget {b:g}", (b, 1), xycoords=("data", "axes fraction"), fontsize=7)
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
