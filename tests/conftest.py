from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60's default for local clusters, made explicit before Ray is imported, so every process
# of a test cluster and the tests' own Ray clients agree (token in ~/.ray/auth_token).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# `ray.init()` creates ~/.ray/auth_token when it is missing, but `ray start` does not: on a fresh
# machine the cluster tests (the first to run) would start nodes with no token. Give the whole
# session one token of its own, leaving ~/.ray alone.
if not (
    os.environ.get("RAY_AUTH_TOKEN")
    or os.environ.get("RAY_AUTH_TOKEN_PATH")
    or Path("~/.ray/auth_token").expanduser().is_file()
):
    import secrets
    import tempfile

    _token = Path(tempfile.mkdtemp(prefix="qa-ray-tests-")) / "auth_token"
    _token.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token)
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
SHARED_SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Builds (once per session) a tiny random-init model folder of each architecture and head:
    ``get("bert")`` has a QA span head, ``get("llama", causal=True)`` a language-model head,
    ``get("t5")`` is an encoder-decoder."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cache: dict[tuple[str, bool], Path] = {}

    def get(kind: str, causal: bool = False) -> Path:
        if (kind, causal) not in cache:
            out = tmp_path_factory.mktemp(f"{kind}-lm" if causal else kind)
            if kind == "t5":  # encoder-decoder: always a language-model head
                cache[kind, causal] = make_tiny_model(kind, out, AutoModelForSeq2SeqLM)
            elif causal:
                cache[kind, causal] = make_tiny_model(kind, out, AutoModelForCausalLM)
            else:
                cache[kind, causal] = make_tiny_model(kind, out)
        return cache[kind, causal]

    return get


@pytest.fixture
def ray_2cpu():
    """Local Ray with the 2 CPUs of the CI machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    yield
    ray.shutdown()


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
        # No progress reports unless a test asks: the reports a test counts are then the same
        # on a slow machine.
        "train": {
            "max_steps": 4,
            "per_device_batch_size": 8,
            "learning_rate": 1e-3,
            "progress_seconds": 0,
        },  # fmt: skip
        "output_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        block, _, field = key.partition("__")
        cfg.setdefault(block, {})[field] = value
    return cfg


def tiny_sweep(tmp_path, models, *, num_samples=4, tracking_uri=None) -> tuple[Path, str]:
    """A sweep file over tiny ``models`` (the first is the base model); returns (path, MLflow URI)."""
    good = models[0]
    data = {
        "name": "tiny-sweep",
        "model": {"name_or_path": str(good), "finetune": "lora"},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
            "max_eval_examples": 20,
        },
        "train": {
            "max_steps": 2,
            "per_device_batch_size": 8,
            "save_checkpoints": False,
            "progress_seconds": 0,
        },  # fmt: skip
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": {
            "num_samples": num_samples,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "seed": 3,
            "space": {
                "params": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "lora_r": {"type": "int", "low": 2, "high": 8},
                    "quantization_bits": {"type": "categorical", "choices": [8, 32]},
                    "model": {"type": "categorical", "choices": [str(m) for m in models]},
                }
            },
        },
        "storage_path": str(tmp_path / "runs"),
        "tracking": {
            "tracking_uri": tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment_name": "t",
        },
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(data))
    return p, data["tracking"]["tracking_uri"]
