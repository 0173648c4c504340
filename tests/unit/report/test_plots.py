"""The Pareto plots: the staircase, the trials kept off the front, the budget lines."""

from __future__ import annotations

import pytest

from qa_ray.report import plots


def test_the_staircase_starts_at_the_best_x_end():
    pts = [(900.0, 40.0), (1900.0, 60.0), (500.0, 10.0)]
    assert plots._step_line(pts, "max") == (
        [500.0, 900.0, 900.0, 1900.0, 1900.0],
        [10.0, 10.0, 40.0, 40.0, 60.0],
    )
    # x maximized (e.g. throughput): from the largest x down
    xs, _ = plots._step_line(pts, "max", x_mode="max")
    assert xs[0] == 1900.0 and xs[-1] == 500.0


def _trials():
    base = {"model": "m", "finetune": "full", "quantization_bits": 32}
    return [
        {**base, "name": "a", "eval_f1": 40.0, "peak_memory_mb": 900.0},
        {**base, "name": "b", "eval_f1": 60.0, "peak_memory_mb": 1900.0},
    ]


def test_the_html_draws_budgets_and_the_trials_off_the_front():
    others = [
        {"name": "p", "status": "PRUNED", "eval_f1": 5.0, "peak_memory_mb": 700.0},
        {"name": "i", "status": "INFEASIBLE", "peak_memory_mb": 2500.0},  # never scored
    ]
    page = plots.pareto_html(
        _trials(), {0, 1}, "peak_memory_mb", "eval_f1", "max", "t", others=others, budgets=[2000.0]
    )
    names = ('"name":"stopped early (partial)"', '"name":"over budget \\u002f out of memory"')
    assert all(n in page for n in names), "the trials kept off the front are drawn"
    assert "budget 2000" in page and '"name":"Pareto front"' in page
    three = plots.pareto_html(
        _trials(), {0, 1}, "peak_memory_mb", "eval_f1", "max", "t", staircase=False
    )
    assert '"name":"Pareto front"' not in three


def test_the_png_is_written(tmp_path):
    out = tmp_path / "p.png"
    plots.pareto_png(str(out), _trials(), {0}, "peak_memory_mb", "eval_f1", "max", "t",
                     others=[{"name": "p", "status": "PRUNED", "eval_f1": 5.0,
                              "peak_memory_mb": 700.0}], budgets=[1000.0])  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_extra_is_named(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_plotly(name, *args, **kwargs):
        if name.startswith("plotly"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_plotly)
    with pytest.raises(ImportError, match=r"pip install 'qa-ray\[plots\]'"):
        plots.check_available()


def test_model_label():
    assert plots.model_label("meta-llama/Llama-3.2-1B/") == "Llama-3.2-1B"
    assert plots.model_label(None) == "?"
