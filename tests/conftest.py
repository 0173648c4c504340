from __future__ import annotations

import os
from pathlib import Path

import pytest

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

from tests.helpers import SHARED_SQUAD  # noqa: E402
from tests.tiny_models import make_tiny_model  # noqa: E402


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto's server mode) on loopback for the whole session."""
    from tests.s3 import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path_factory):
    """A fresh bucket on the loopback S3 server, with the environment pointing at it the way
    a user points the AWS CLI, boto3 and pyarrow at an S3-compatible store."""
    from tests.s3 import make_bucket, set_env

    set_env(monkeypatch, s3_endpoint)
    # A bucket sweep keeps its driver state under $QA_RAY_STATE_DIR (default ~/.cache): each
    # test gets its own, as each head node has its own disk.
    monkeypatch.setenv("QA_RAY_STATE_DIR", str(tmp_path_factory.mktemp("qa-ray-state")))
    return make_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def squad_v2_dev() -> Path:
    path = SHARED_SQUAD / "dev-v2.0.json.gz"
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data beside the checkout)")
    return path
