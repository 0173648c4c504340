"""docs/memory-table.md is what benchmarks/memory_table.py writes from the shipped sweeps and
their models' published configs, every figure on it is marked predicted, and the README's sweep
table takes its memory column from it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "memory-table.md"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "memory_table", ROOT / "benchmarks" / "memory_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_table_is_what_the_plan_predicts_today():
    assert PAGE.read_text() == _generator().render(), (
        "docs/memory-table.md is stale: run `PYTHONPATH=. .venv/bin/python "
        "benchmarks/memory_table.py --out docs/memory-table.md` and commit it"
    )


def test_every_shipped_sweep_has_a_table_marked_predicted():
    page = PAGE.read_text()
    assert "**Predicted, not measured on a GPU.**" in page.split("\n## ")[0]
    sections = re.findall(r"^## (\S+)$", page, re.M)
    assert sections == sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert "not predicted" not in page.lower().replace("predicted, not measured", "")


def test_the_readme_takes_each_sweeps_memory_from_the_table():
    """Each row of the README's "Shipped sweeps" table gives its sweep's predicted range as the
    table does, linked to its section there."""
    gen = _generator()
    plans = gen.plans()
    readme = (ROOT / "README.md").read_text()
    for name, plan in plans.items():
        sweep = name.removesuffix(".yaml")
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{sweep}` |"))
        cell = f"[{gen.summary(plan)}](docs/memory-table.md#{sweep})"
        assert cell in row, f"README's row of {sweep} should hold {cell}: {row}"
    assert "predicted, not measured" in readme
