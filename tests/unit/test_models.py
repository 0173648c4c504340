"""Model building: sizes, k-bit settings, dropout fields, the tokenizer's pad token."""

from __future__ import annotations

import torch

from qa_ray.config import ModelConfig
from qa_ray.models import (
    _is_dropout_field,
    build_model,
    build_tokenizer,
    model_size,
    quantization_config,
)
from tests.helpers import ASSETS


def test_model_size_counts_parameters_and_measures_the_weights(tiny_model_dir):
    model = build_model(
        ModelConfig(name_or_path=str(tiny_model_dir("bert")), finetune="lora"), torch.device("cpu")
    )
    size = model_size(model)
    params = list(model.parameters())
    assert size.total_params == sum(p.numel() for p in params)
    assert size.trainable_params == sum(p.numel() for p in params if p.requires_grad)
    assert 0 < size.trainable_params < size.total_params
    weights = sum(p.numel() * p.element_size() for p in params)
    assert (
        weights
        <= size.footprint_bytes
        <= weights + sum(b.numel() * b.element_size() for b in model.buffers())
    )


def test_four_bit_weights_count_as_their_logical_parameters(tiny_model_dir):
    path = str(tiny_model_dir("llama", causal=True))
    full = model_size(
        build_model(
            ModelConfig(name_or_path=path, task="instruction", finetune="lora"), torch.device("cpu")
        )
    )
    four = model_size(
        build_model(
            ModelConfig(
                name_or_path=path, task="instruction", finetune="lora", quantization_bits=4
            ),
            torch.device("cpu"),
        )
    )
    assert four.total_params == full.total_params
    assert four.footprint_bytes < full.footprint_bytes


def test_kbit_settings():
    cfg = ModelConfig(name_or_path="x", finetune="lora", quantization_bits=4)
    q = quantization_config(cfg, torch.bfloat16, "llama")
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert "qa_outputs" in q.llm_int8_skip_modules  # the fresh span head stays unquantized
    eight = quantization_config(
        cfg.model_copy(update={"quantization_bits": 8}), torch.float32, "bert"
    )
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_dropout_fields_of_every_architecture():
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout",
                 "dropout_rate", "resid_pdrop", "embd_pdrop", "classifier_dropout"):  # fmt: skip
        assert _is_dropout_field(name), name
    for name in ("hidden_size", "layer_norm_eps", "initializer_range"):
        assert not _is_dropout_field(name), name


def test_a_tokenizer_without_a_pad_token_gets_one(tiny_model_dir):
    tok = build_tokenizer(
        ModelConfig(name_or_path=str(tiny_model_dir("llama", causal=True)), task="instruction")
    )
    assert tok.pad_token is not None and tok.is_fast
    wordpiece = build_tokenizer(ModelConfig(name_or_path=str(ASSETS / "wordpiece")))
    assert wordpiece.pad_token == "[PAD]"
