"""The set-up scripts' choices: QA_RAY_TORCH picks the torch build, the CPU default unchanged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _torch_args(choice: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "QA_RAY_TORCH"}
    if choice is not None:
        env["QA_RAY_TORCH"] = choice
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "--print-torch"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.parametrize(
    "choice, args",
    [
        (None, "torch==2.13.0"),  # CI's default: as pip finds it
        ("", "torch==2.13.0"),
        ("cpu", "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
        ("cu128", "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"),
        ("cu126", "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"),
        ("torch==2.12.1", "torch==2.12.1"),  # a requirement, as before
    ],
)
def test_qa_ray_torch_picks_the_build(choice, args):
    assert _torch_args(choice) == args


def test_get_data_refuses_an_unknown_file():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "get_data.sh"), "train-v9"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "train-v9" in out.stderr
