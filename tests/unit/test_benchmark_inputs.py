"""The benchmark scripts answer bad input in one line on stderr with exit 2, naming the flag,
file or field and the value, before any work (no trial, no OUT folder): each run here as a user
runs it, in a subprocess from the repository root. (tests/unit/test_replay.py holds replay.py's
and tune_rule.py's.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets"


def _sweep(tmp: Path) -> Path:
    """A sweep that validates offline, on the test assets."""
    path = tmp / "sweep.yaml"
    path.write_text(
        f"name: bad-input\n"
        f"model: {{name_or_path: {ASSETS / 'wordpiece'}, finetune: lora}}\n"
        f"data: {{path: {ASSETS / 'squad_v1_tiny.json'}, max_seq_length: 128, doc_stride: 32}}\n"
        "train: {max_steps: 2}\n"
        "search:\n"
        "  num_samples: 2\n"
        "  space: {params: {learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}}}\n"
        "storage_path: runs\n"
    )
    return path


def _write(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _runs(tmp: Path, names: object, walls: object) -> Path:
    """OUT with an early_stopping.json record of earlier runs."""
    _write(tmp, "early_stopping.json", json.dumps({"names": names, "wall_seconds": walls}))
    return tmp


# script -> (argv, what stderr must say), built in tmp; OUT is always tmp / "out"
CASES = {
    "budget_admission --samples 0": (
        "budget_admission.py",
        lambda t: ["--out", t / "out", "--samples", "0"],
        ["budget_admission.py: --samples must be >= 1, but got 0"],
    ),
    "budget_admission missing --data": (
        "budget_admission.py",
        lambda t: ["--out", t / "out", "--data", t / "missing.json"],
        ["--data: no such file or folder, but got", "missing.json"],
    ),
    "budget_admission --samples x": (
        "budget_admission.py",
        lambda t: ["--out", t / "out", "--samples", "x"],
        ["budget_admission.py: argument --samples: invalid int value: 'x'"],
    ),
    "early_stopping --budget 0": (
        "early_stopping.py",
        lambda t: ["--out", t / "out", "--budget", "0", "--grace", "-1"],
        ["--budget must be > 0, but got 0.0; --grace must be > 0, but got -1.0"],
    ),
    "early_stopping --reuse, no record": (
        "early_stopping.py",
        lambda t: ["--out", t / "out", "--reuse"],
        ["out/early_stopping.json: cannot be read (No such file or directory)"],
    ),
    "early_stopping --reuse, record not JSON": (
        "early_stopping.py",
        lambda t: ["--out", _write(t, "early_stopping.json", "{names").parent, "--reuse"],
        ["early_stopping.json: not JSON (", "line 1"],
    ),
    "early_stopping --reuse, names not a mapping": (
        "early_stopping.py",
        lambda t: ["--out", _runs(t, 3, {}), "--reuse"],
        ["early_stopping.json: `names` must be a mapping, but got 3"],
    ),
    "early_stopping --reuse, seconds missing": (
        "early_stopping.py",
        lambda t: [
            "--out",
            _runs(t, {"all to the end": "a", "mo_asha": "b"}, {"all to the end": 1.0}),
            "--reuse",
        ],  # fmt: skip
        ["`wall_seconds.mo_asha` must be seconds, but got None"],
    ),
    "early_stopping --reuse, no store": (
        "early_stopping.py",
        lambda t: [
            "--out",
            _runs(
                t, {"all to the end": "a", "mo_asha": "b"}, {"all to the end": 1.0, "mo_asha": 2.0}
            ),
            "--reuse",
        ],  # fmt: skip
        ["early_stopping.py: a: no MLflow store at sqlite:///", "mlflow.db to find 'a' in"],
    ),
    "memory_prediction missing --curves": (
        "memory_prediction.py",
        lambda t: ["--out", t / "out", "--curves", t / "none.json", "--sweep", _sweep(t)],
        ["memory_prediction.py: ", "none.json: cannot be read (No such file or directory)"],
    ),
    "memory_prediction --curves alone": (
        "memory_prediction.py",
        lambda t: ["--out", t / "out", "--curves", t / "none.json"],
        ["memory_prediction.py: --curves and --sweep go together"],
    ),
    "memory_prediction trials not a list": (
        "memory_prediction.py",
        lambda t: [
            "--out",
            t / "out",
            "--curves",
            _write(t, "t.json", '{"trials": {}}'),
            "--sweep",
            _sweep(t),
        ],  # fmt: skip
        ["t.json: `trials` must be a list of trials, but got {}"],
    ),
    "memory_prediction nothing to predict": (
        "memory_prediction.py",
        lambda t: [
            "--out",
            t / "out",
            "--curves",
            _write(t, "t.json", '{"trials": []}'),
            "--sweep",
            _sweep(t),
        ],  # fmt: skip
        ["t.json: `trials`: none left to predict (0 complete"],
    ),
    "memory_prediction missing --model": (
        "memory_prediction.py",
        lambda t: ["--out", t / "out", "--model", t / "no-model", "--data", "x.json"],
        ["memory_prediction.py: --model: no such folder, but got", "no-model'"],
    ),
    "memory_prediction --reanalyse incomplete": (
        "memory_prediction.py",
        lambda t: [
            "--out",
            t / "out",
            "--model",
            ASSETS / "wordpiece",
            "--data",
            "x.json",
            "--reanalyse",
            _write(t, "r.json", '{"calibration": {}, "held_out": []}'),
        ],  # fmt: skip
        [
            "r.json: `calibration` and `held_out` must measure every configuration, but got none "
            "for b4-s128-full-e16"
        ],  # fmt: skip
    ),
    "memory_table --out in no folder": (
        "memory_table.py",
        lambda t: ["--out", t / "out" / "page.md"],
        ["memory_table.py: --out: no such folder", "page.md'"],
    ),
    "memory_table --out a folder": (
        "memory_table.py",
        lambda t: ["--out", t],
        ["memory_table.py: --out: is a folder, not a file, but got"],
    ),
    "t5_base_footprint an argument": (
        "t5_base_footprint.py",
        lambda t: ["--bogus"],
        ["t5_base_footprint.py: unrecognized arguments: --bogus"],
    ),
    "trial_overhead --steps 0": (
        "trial_overhead.py",
        lambda t: ["--out", t / "out", "--steps", "0"],
        ["trial_overhead.py: --steps must be >= 1, but got 0"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_to_a_benchmark_is_one_line_and_exit_2(tmp_path, case):
    script, argv, said = CASES[case]
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *map(str, argv(tmp_path))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = done.stderr.strip()
    assert done.returncode == 2, done.stderr
    assert err and "\n" not in err and "Traceback" not in err, done.stderr
    for words in said:
        assert words in err
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()  # refused before any work
