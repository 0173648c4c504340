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
        "train": {"max_steps": 4, "per_device_batch_size": 8, "learning_rate": 1e-3},
        "output_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        block, _, field = key.partition("__")
        cfg.setdefault(block, {})[field] = value
    return cfg


def losses_on_a_fixed_batch(model, batch: dict, lr: float, steps: int) -> list[float]:
    """AdamW on the trainable parameters, ``steps`` times on one batch; the losses seen."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def assert_learns_on_a_fixed_batch(model, batch: dict, finetune: str, bits: int) -> None:
    """A tiny model in ``finetune`` / ``bits`` is built as asked and its loss goes down."""
    from qa_ray.models import model_size

    size = model_size(model)
    if finetune == "lora":
        assert 0 < size.trainable_params < size.total_params / 3
    if bits == 4:
        assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
    # Adapters on the attention only (the LM head stays frozen) learn slower: a larger step.
    losses = losses_on_a_fixed_batch(
        model, batch, lr=5e-2 if finetune == "lora" else 1e-2, steps=10
    )
    if finetune == "full":
        assert losses[-1] < losses[0] * 0.9, losses
    else:  # a random model's frozen LM head keeps its loss near log(vocab); it still moves
        assert losses[-1] < losses[0] - 0.05, losses


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
        "train": {"max_steps": 2, "per_device_batch_size": 8, "save_checkpoints": False},
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
