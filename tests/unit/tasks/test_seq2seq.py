"""Seq2seq QA (T5-style) on a tiny random-init encoder-decoder (CPU, no hub): the decoder's
labels are the answer, decoding gives the official scores of its answers."""

import contextlib

import pytest
import torch

from qa_ray.config.trial import TrialConfig
from qa_ray.data.squad import load_train_eval
from qa_ray.models.build import build_model, build_tokenizer
from qa_ray.tasks import seq2seq
from tests.helpers import official_scores, trial_dict


def _setup(tiny_model_dir, tmp_path, finetune="full", bits=32, **over):
    cfg = TrialConfig.model_validate(
        trial_dict(tiny_model_dir("t5"), tmp_path, model__task="seq2seq", **over)
    )
    mcfg = cfg.model.model_copy(update={"finetune": finetune, "quantization_bits": bits})
    return cfg, mcfg, build_tokenizer(mcfg)


def test_decoder_labels_are_the_answer(tiny_model_dir, tmp_path):
    cfg, _, tok = _setup(tiny_model_dir, tmp_path)
    train, _ = load_train_eval(cfg.data)
    feats = seq2seq.train_features(train[:10], tok, cfg.data)
    for ex, row in zip(train[:10], feats, strict=True):
        assert row["labels"][-1] == tok.eos_token_id
        assert tok.decode(row["labels"], skip_special_tokens=True).strip() == ex.answers[0].strip()
        source = tok.decode(row["input_ids"], skip_special_tokens=True)
        assert source.startswith("question:") and ex.answers[0].strip() in source


def test_decode_extract_score_gives_squad_metrics(tiny_model_dir, tmp_path):
    cfg, mcfg, tok = _setup(tiny_model_dir, tmp_path, data__max_answer_length=5)
    _, evals = load_train_eval(cfg.data)
    evals = evals[:6]
    feats = seq2seq.eval_features(evals, tok, cfg.data)
    model = build_model(mcfg, torch.device("cpu"))
    cpu = torch.device("cpu")
    out = seq2seq.evaluate(model, evals, feats, tok, cfg.data, cpu, 4, contextlib.nullcontext)
    assert set(out.predictions) == {ex.id for ex in evals}
    assert out.scores["total"] == 6
    assert out.scores == pytest.approx(official_scores(evals, out.predictions))
