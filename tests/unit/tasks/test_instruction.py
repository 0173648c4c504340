"""Instruction tuning (Alpaca) on tiny random-init causal LMs (CPU, no hub): the prompt, the
loss on the response only, and the evaluation's token-weighted loss, perplexity and answers."""

import contextlib
import math

import pytest
import torch

from qa_ray.config.trial import TrialConfig
from qa_ray.models.build import build_model, build_tokenizer
from qa_ray.tasks import instruction
from tests.helpers import ASSETS, trial_dict

ALPACA = str(ASSETS / "alpaca_tiny.json")


def _setup(tiny_model_dir, tmp_path, kind="llama", finetune="lora", bits=32, **over):
    over = {"data__path": ALPACA, "data__max_seq_length": 160, **over}
    cfg = TrialConfig.model_validate(
        trial_dict(tiny_model_dir(kind, causal=True), tmp_path, model__task="instruction", **over)
    )
    mcfg = cfg.model.model_copy(update={"finetune": finetune, "quantization_bits": bits})
    return cfg, mcfg, build_tokenizer(mcfg)


def _model(mcfg):
    torch.manual_seed(0)
    return build_model(mcfg, torch.device("cpu"))


def test_the_alpaca_prompt_with_and_without_input():
    with_input = instruction.prompt(" Translate. ", " bonjour ")
    assert with_input == instruction.PROMPT_WITH_INPUT.format(
        instruction="Translate.", input="bonjour"
    )
    assert instruction.prompt("Name a colour.", "  ") == instruction.PROMPT_NO_INPUT.format(
        instruction="Name a colour."
    )
    assert "### Input:" in with_input and "### Input:" not in instruction.prompt("x")


def test_sequences_are_the_alpaca_prompt_then_the_response(tiny_model_dir, tmp_path):
    cfg, _, tok = _setup(tiny_model_dir, tmp_path, data__max_seq_length=224)
    train, _ = instruction.load_train_eval(cfg.data)
    feats = instruction.train_features(train, tok, cfg.data)
    assert len(feats) == len(train)  # every tiny record fits in 224 tokens
    for ex, row in zip(train, feats, strict=True):
        pairs = list(zip(row["input_ids"], row["labels"], strict=True))
        prompt = tok.decode([t for t, lab in pairs if lab == -100], skip_special_tokens=True)
        response = [lab for _, lab in pairs if lab != -100]
        assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")
        assert ("### Input:\n" in prompt) == bool(ex.input.strip())
        assert response[-1] == tok.eos_token_id
        assert tok.decode(response[:-1]) == ex.output.strip()
    # A response cut at max_seq_length keeps its prompt whole; a prompt that fills it is dropped.
    short = cfg.data.model_copy(update={"max_seq_length": 64})
    cut = instruction.train_features(train, tok, short)
    assert 0 < len(cut) < len(train)
    assert all(len(r["input_ids"]) <= 64 and r["labels"][-1] != -100 for r in cut)


def test_evaluate_gives_token_weighted_loss_perplexity_and_answers(tiny_model_dir, tmp_path):
    cfg, mcfg, tok = _setup(tiny_model_dir, tmp_path, finetune="full", data__max_answer_length=6)
    _, held = instruction.load_train_eval(cfg.data)
    feats = instruction.eval_features(held, tok, cfg.data)
    model = _model(mcfg)
    cpu = torch.device("cpu")
    out = instruction.evaluate(model, held, feats, tok, cfg.data, cpu, 4, contextlib.nullcontext)
    # The model's own loss, record by record, weighted by each record's response tokens.
    collate = instruction.collator(tok)
    total = tokens = 0
    with torch.no_grad():
        for i in range(len(feats)):
            one = collate([feats[i]])
            n = int((one["labels"] != -100).sum())
            total += model(**one).loss.item() * n
            tokens += n
    assert out.scores["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert out.scores["perplexity"] == pytest.approx(math.exp(out.scores["loss"]), rel=1e-6)
    assert list(out.predictions) == list(instruction.QUALITATIVE_QUESTIONS)
    assert len(instruction.QUALITATIVE_QUESTIONS) == 14
    assert all(isinstance(a, str) for a in out.predictions.values())
