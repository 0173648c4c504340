from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
SHARED_SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Builds (once per session) a tiny random-init model folder of each architecture."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_tiny_model(kind, tmp_path_factory.mktemp(kind))
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def squad_v1_dev() -> Path:
    path = SHARED_SQUAD / "dev-v1.1.json.gz"
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data beside the checkout)")
    return path


def trial_dict(model_dir, tmp_path, **over) -> dict:
    """A small trial config dict on the tiny SQuAD v1.1 fixture."""
    cfg = {
        "name": "t",
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"max_steps": 4, "per_device_batch_size": 8, "learning_rate": 1e-3},
        "output_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        block, _, field = key.partition("__")
        cfg.setdefault(block, {})[field] = value
    return cfg
