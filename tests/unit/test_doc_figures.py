"""Figures the docs quote from a results file in ``benchmarks/results/`` are that file's.

Each entry below is a sentence or table row of a page with its figures left as ``{}``, the
results file, and how each figure is read from it and rounded as the page rounds it. The page
must hold the sentence with exactly those figures (line breaks and runs of spaces count as one
space). Covered: the memory-prediction and admission JSON files that README.md, memory.md and
benchmarks.md quote, and the MO-ASHA live runs. The replay and tune_rule figures come from text
outputs (``*.txt``) and the quickstart's from a console; no entry checks those yet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@cache
def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def pct(x: float) -> str:
    """0.0186 -> ``1.9``; -0.0693 -> ``-6.9``."""
    return f"{100 * x:.1f}"


def _errors(name: str, predictor: str) -> tuple[str, ...]:
    d = _load(name)
    p = d[predictor]
    return (
        pct(p["median_abs_rel_error"]),
        pct(p["worst_abs_rel_error"]),
        pct(p["worst_under"]),
        str(len(p["under_10pct_not_covered"])),
        str(d["n_held_out"]),
    )


def _admission(run: str) -> tuple[str, ...]:
    r = _load("budget_admission_run1.json")[run]
    return (
        str(r["launched"]),
        str(r["launched_over_budget"]),
        str(r["rejected_before_launch"]),
        f"{r['seconds_over_budget']:.0f}",
        f"{r['seconds_all']:.0f}",
        f"{r['steps_over_budget']:.0f}",
        f"{r['steps_all']:.0f}",
    )


def _mo_asha(name: str) -> tuple[str, ...]:
    ratios = _load(name)["ratios"]
    return (
        f"{ratios['steps_saved_x']:.1f}",
        f"{100 * ratios['hypervolume_kept (mo_asha / full)']:.0f}",
    )


_BEFORE = "before (every config launched)"
_AFTER = "after (admission)"
_ROW = "| {} % | {} % | {} % | {} of {} |"
_CURVES = "memory_prediction_curves_minilm_a.json"
_RUN1 = "memory_prediction_run1.json"
_SDPA = "memory_prediction_run1_reanalysed_sdpa.json"

# (page, sentence with {} for each figure, the figures from the results file)
CLAIMS: list[tuple[str, str, Callable[[], tuple[str, ...]]]] = [
    ("docs/memory.md", "| prior " + _ROW, lambda: _errors(_CURVES, "prior")),
    ("docs/memory.md", "| calibrated on 3 " + _ROW, lambda: _errors(_CURVES, "calibrated")),
    ("docs/memory.md", "| prior (no measurement), run 1 " + _ROW, lambda: _errors(_RUN1, "prior")),
    (
        "docs/memory.md",
        "| calibrated on 3, run 1 ([results](../benchmarks/results/memory_prediction_run1.json)) "
        + _ROW,
        lambda: _errors(_RUN1, "calibrated"),
    ),
    (
        "docs/memory.md",
        "| prior, SDPA account, run 1's measurements re-analysed " + _ROW,
        lambda: _errors(_SDPA, "prior"),
    ),
    (
        "docs/memory.md",
        "| calibrated on 3, SDPA account, re-analysed ([results](../benchmarks/results/"
        "memory_prediction_run1_reanalysed_sdpa.json)) " + _ROW,
        lambda: _errors(_SDPA, "calibrated"),
    ),
    (
        "README.md",
        "after three measured trials, median error {} % (worst {} %) on {} others",
        lambda: (*_errors(_CURVES, "calibrated")[:2], _errors(_CURVES, "calibrated")[4]),
    ),
    (
        "README.md",
        "(run 1) {} %, with {} of {} under-predictions not covered",
        lambda: (_errors(_RUN1, "calibrated")[0], *_errors(_RUN1, "calibrated")[3:]),
    ),
    (
        "docs/benchmarks.md",
        "calibrated median error {} %, worst {} %; {} of {} more than 10 % under",
        lambda: (*_errors(_RUN1, "calibrated")[:2], *_errors(_RUN1, "calibrated")[3:]),
    ),
    (
        "docs/memory.md",
        "| before: every configuration launched | {} | {} | {} | {} of {} | {} of {} |",
        lambda: _admission(_BEFORE),
    ),
    (
        "docs/memory.md",
        "| after: admission | {} | {} | {} | {} of {} | {} of {} |",
        lambda: _admission(_AFTER),
    ),
    (
        "README.md",
        "of {} trials, {} launched over the budget without it ({} % of the trial time), none "
        "with it",
        lambda: (
            _admission(_BEFORE)[0],
            _admission(_BEFORE)[1],
            f"{100 * float(_admission(_BEFORE)[3]) / float(_admission(_BEFORE)[4]):.0f}",
        ),
    ),
    (
        "docs/benchmarks.md",
        "{} trials launched each: {} over budget ({} of {} trial-seconds) without admission, {} "
        "with it ({} configurations rejected before launch)",
        lambda: (
            *_admission(_BEFORE)[:2],
            *_admission(_BEFORE)[3:5],
            _admission(_AFTER)[1],
            _admission(_AFTER)[2],
        ),
    ),
    (
        "README.md",
        "{}x fewer steps kept {} % of the hypervolume, {}x kept {} %",
        lambda: (*_mo_asha("early_stopping_grace4.json"), *_mo_asha("early_stopping_grace12.json")),
    ),
    (
        "docs/benchmarks.md",
        "grace 4: {}x fewer steps, {} % of the hypervolume; grace 12: {}x, {} %",
        lambda: (*_mo_asha("early_stopping_grace4.json"), *_mo_asha("early_stopping_grace12.json")),
    ),
]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(
    "page, sentence, figures", CLAIMS, ids=[f"{p}:{s[:40]}" for p, s, _ in CLAIMS]
)
def test_a_quoted_figure_is_the_results_file_s(page, sentence, figures):
    expected = _flat(sentence.format(*figures()))
    text = _flat((ROOT / page).read_text())
    if expected not in text:
        # Name what the page says instead: the sentence with its figures as a pattern.
        parts = [re.escape(_flat(p)) for p in sentence.split("{}")]
        found = re.search(r"(-?[\d.,]+)".join(parts), text)
        said = found.group(0) if found else "no such sentence"
        pytest.fail(f"{page} should say {expected!r} (from benchmarks/results/), but says {said!r}")


def test_pct_rounds_as_the_pages_do():
    assert (pct(0.018626), pct(-0.069326), pct(0.11155)) == ("1.9", "-6.9", "11.2")
