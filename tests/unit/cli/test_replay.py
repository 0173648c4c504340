"""``qa-ray replay``: a curve table or a sweep in MLflow replayed and advised on; bad input
said in one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa_ray.cli import main

ROOT = Path(__file__).resolve().parents[3]
TABLE = str(ROOT / "tests" / "assets" / "curves_tiny.json")
QUICK = ["--splits", "2", "--draws", "1", "--workers", "1"]


def test_a_table_is_replayed_and_a_block_or_none_recommended(capsys):
    assert main(["replay", TABLE, *QUICK]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{TABLE}: 8 trials run to their end; objectives eval_f1 max, ")
    assert "rank correlation of eval_f1 at a step with its final value" in out
    for rule in ("run everything", "all to 20%, top 25%", "1st eval (10), top K", "mo_asha grace"):
        assert rule in out
    assert "cross-validation: 2 splits, each chosen on 4 configurations" in out
    assert "recommendation" in out


def test_a_sweep_name_is_read_from_mlflow_through_the_curve_export(monkeypatch, capsys):
    from qa_ray.report import curves

    raw = json.loads(Path(TABLE).read_text())
    asked = []

    def export(uri, name):
        asked.append((uri, name))
        return raw

    monkeypatch.setattr(curves, "export_curves", export)
    assert main(["replay", "tiny-sweep", "--tracking-uri", "sqlite:///x.db", *QUICK]) == 0
    assert asked == [("sqlite:///x.db", "tiny-sweep")]
    assert capsys.readouterr().out.startswith("sweep 'tiny-sweep': 8 trials")


@pytest.mark.parametrize(
    "argv, said",
    [
        (["missing.json"], "error: missing.json: cannot be read"),
        (["{bad}"], "error: {bad}: not JSON"),
        ([TABLE, "--keep", "2"], "error: command line: `--keep` must be in (0, 1], but got 2.0"),
        ([TABLE, "--splits", "1"], "error: command line: `--splits` must be >= 2, but got 1"),
        (["few"], "error: few: `trials`: a replay needs at least 8 trials run to their end"),
        (["no-such-sweep", "--tracking-uri", "sqlite:////nonexistent/m.db"],
         "error: no-such-sweep: no MLflow store at"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, said):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{bad}").write_text("{bad")
    raw = json.loads(Path(TABLE).read_text())
    (tmp_path / "few").write_text(json.dumps(dict(raw, trials=raw["trials"][:6])))
    assert main(["replay", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1
