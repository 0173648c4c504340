"""A model's config.json from a local folder or a hub id: read from a real Hugging Face cache
the test lays out (offline, as ``HF_HUB_OFFLINE=1``), one-line messages for what cannot be
read (not cached, gated, not a model), every family a shipped sweep names, and a family the account
does not cover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from qa_ray.search.memory import NotAccounted, features, read_shape
from qa_ray.search.model_config import read_config
from tests.hf_cache import BERT_BASE_UNCASED, SHIPPED, lay_out_hf_cache, use_hf_cache


def _run(program: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``program`` in a fresh Python, which reads the Hugging Face variables at import as a
    user's ``qa-ray plan`` would."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return subprocess.run(
        [sys.executable, "-c", program], env={**clean, **env}, capture_output=True, text=True
    )


def test_a_hub_id_is_read_from_the_users_cache_offline_without_torch(tmp_path):
    lay_out_hf_cache(tmp_path / "hf")
    done = _run(
        "import sys\n"
        "from qa_ray.search.memory import read_shape\n"
        "s = read_shape('google-bert/bert-base-uncased')\n"
        "print(s.model_type, s.hidden, s.layers, s.vocab)\n"
        "assert 'torch' not in sys.modules, 'the driver imported torch'\n",
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["bert", "768", "12", "30522"]


def test_the_shipped_hub_models_are_read_as_published(tmp_path, monkeypatch):
    use_hf_cache(monkeypatch, tmp_path / "hf")
    assert read_config("google-bert/bert-base-uncased") == BERT_BASE_UNCASED
    albert = read_shape("albert/albert-base-v2")
    # factorized 128-wide embeddings mapped up to 768; one set of layer weights
    assert albert.embeddings == 30000 * 128 + (512 + 2 + 2) * 128 + 128 * 768 + 768
    assert albert.stacks[0].shared
    llama = read_shape("meta-llama/Llama-3.2-1B")
    assert (llama.decoder, llama.hidden, llama.kv_width) == (True, 2048, 8 * 64)
    # the same account as from a local folder holding the same file
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BERT_BASE_UNCASED))
    assert read_shape(str(folder)) == read_shape("google-bert/bert-base-uncased")


def test_a_hub_model_missing_from_the_cache_offline_says_how_to_get_it(tmp_path, monkeypatch):
    use_hf_cache(monkeypatch, tmp_path / "hf", {})
    with pytest.raises(ValueError) as err:
        read_shape("google-bert/bert-base-uncased")
    message = str(err.value)
    assert message.startswith("`model.name_or_path` = 'google-bert/bert-base-uncased': no such")
    assert "not in the Hugging Face cache" in message and "(HF_HUB_OFFLINE=1)" in message
    assert "`hf download google-bert/bert-base-uncased config.json`" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="not a hub model id"):
        read_shape("/no/such/folder")
    with pytest.raises(ValueError, match="the teacher is a model you train first"):
        read_shape("models/bert-base-squad-v2-teacher", "train.distill.teacher")


class _GatedHub(BaseHTTPRequestHandler):
    """The hub's answer to a gated model's file without a token that has access."""

    def do_HEAD(self):  # noqa: N802 (http.server's names)
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model meta-llama/Llama-3.2-1B is restricted")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def test_a_gated_model_without_access_says_how_to_log_in(tmp_path):
    """huggingface_hub's own GatedRepoError, from a local server answering as the hub does."""
    server = HTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _run(
            "from qa_ray.search.memory import read_shape\n"
            "try:\n"
            "    read_shape('meta-llama/Llama-3.2-1B')\n"
            "except ValueError as exc:\n"
            "    print(exc)\n",
            {
                "HF_HOME": str(tmp_path / "hf"),
                "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
                "NO_PROXY": "127.0.0.1",
            },
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        "`model.name_or_path` = 'meta-llama/Llama-3.2-1B': a gated model: accept its licence "
        "on https://huggingface.co/meta-llama/Llama-3.2-1B and log in with `hf auth login` "
        "(or set HF_TOKEN)"
    )


@pytest.mark.parametrize(
    ("repo_id", "model_type", "params"),
    [
        ("google-t5/t5-base", "t5", 222.9e6),
        ("state-spaces/mamba-130m-hf", "mamba", 129.1e6),
        ("bigscience/bloom-3b", "bloom", 3002.6e6),
        ("tiiuae/falcon-rw-1b", "falcon", 1311.6e6),
    ],
)
def test_every_family_a_shipped_sweep_names_is_read_from_the_cache(
    tmp_path, monkeypatch, repo_id, model_type, params
):
    """Their published sizes (T5-base 223M, Mamba-130M 129M, BLOOM-3B 3.0B, Falcon-RW-1B
    1.3B), from their config.json alone."""
    use_hf_cache(monkeypatch, tmp_path / "hf")
    assert read_shape(repo_id).model_type == model_type
    task = "seq2seq" if model_type == "t5" else "generative"
    f = features({"model": {"name_or_path": repo_id, "task": task}})
    assert f.params == pytest.approx(params, rel=1e-3)


def test_a_family_the_account_lacks_is_named(tmp_path, monkeypatch):
    use_hf_cache(
        monkeypatch, tmp_path / "hf", {"EleutherAI/pythia-70m": {"model_type": "gpt_neox"}}
    )
    with pytest.raises(NotAccounted, match="model_type 'gpt_neox' is not one the memory"):
        read_shape("EleutherAI/pythia-70m")


def test_the_lstm_is_not_predicted_as_the_transformer_it_borrows_a_tokenizer_from(
    tmp_path, monkeypatch
):
    use_hf_cache(monkeypatch, tmp_path / "hf")
    config = {"model": {"name_or_path": "google-bert/bert-base-uncased"}}
    assert features(config).params > 100e6  # BERT-base
    config["model"]["architecture"] = "bilstm_attention"
    config["model"]["lstm"] = {
        "hidden_size": 128,
        "embeddings_from": "google-bert/bert-base-uncased",
    }
    lstm = features(config)
    # BERT's 30522 x 768 embeddings, then 1.6M of LSTMs and attention, all trained
    assert 23.4e6 < lstm.params < 26e6 and lstm.trainable == lstm.params


def test_admission_switched_off_by_an_unreadable_model_says_so_once_on_the_console(
    tmp_path, monkeypatch, caplog
):
    """A hub model that is not in the cache (offline) cannot be predicted: the sweep's
    admission (and packing, which asks it) runs without, and says so once, on the logger the
    CLI's default console shows, with the line that tells the user how to fix it."""
    import logging

    from qa_ray.cli import quiet
    from qa_ray.pareto import parse_constraint
    from qa_ray.search.memory import MemoryModel
    from qa_ray.search.searcher import MemoryAdmission

    use_hf_cache(monkeypatch, tmp_path / "hf", {})
    levels = {n: logging.getLogger(n).level for n in [*quiet.QUIET_LOGGERS, ""]}
    try:
        quiet.configure(verbose=False)
        searcher_log = logging.getLogger("qa_ray.search.searcher")
        assert searcher_log.isEnabledFor(logging.WARNING)
        base = {"model": {"name_or_path": "google-bert/bert-base-uncased"}}
        admission = MemoryAdmission(MemoryModel("cuda"), base, pack_margin=0.1)
        budget = parse_constraint("peak_memory_mb <= 9500")
        with caplog.at_level(logging.WARNING):
            for batch in (8, 16, 32):
                assert admission.check({"per_device_batch_size": batch}, [budget]) is None
                assert admission.request_mb({"per_device_batch_size": batch}) is None
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    said = [r for r in caplog.records if r.name == "qa_ray.search.searcher"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "memory admission off" in said[0].getMessage()
    assert "hf download google-bert/bert-base-uncased config.json" in said[0].getMessage()


def test_a_sweeps_memory_model_reads_each_hub_config_once(tmp_path, monkeypatch):
    """Online, each read of a hub file asks the hub whether it changed: a sweep's predictions
    (one a sampled configuration, one a child run) read each model's config once, the
    families the account lacks included."""
    import huggingface_hub

    from qa_ray.search.memory import MemoryModel

    use_hf_cache(
        monkeypatch,
        tmp_path / "hf",
        {**SHIPPED, "EleutherAI/pythia-70m": {"model_type": "gpt_neox"}},
    )
    asked = []
    download = huggingface_hub.hf_hub_download

    def counted(repo_id, filename, **kwargs):
        asked.append(repo_id)
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counted)
    model = MemoryModel("cuda")
    bert = {"model": {"name_or_path": "google-bert/bert-base-uncased"}}
    for batch in (4, 8, 16, 32):
        model.predict({**bert, "train": {"per_device_batch_size": batch}})
    for _ in range(3):
        with pytest.raises(NotAccounted, match="model_type 'gpt_neox'"):
            model.predict({"model": {"name_or_path": "EleutherAI/pythia-70m"}})
    assert asked == ["google-bert/bert-base-uncased", "EleutherAI/pythia-70m"]
