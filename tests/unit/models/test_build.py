"""Model building: sizes, k-bit settings, dropout fields, the tokenizer's pad token."""

from __future__ import annotations

import torch

from qa_ray.config.trial import ModelConfig
from qa_ray.models.build import (
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


# ---- static pruning: keep_layers ---------------------------------------------------------------


def test_keep_layers_drops_whole_layers_evenly_spaced():
    from transformers import BertConfig, BertForQuestionAnswering

    from qa_ray.models.build import keep_layers

    model = BertForQuestionAnswering(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=6,
            num_attention_heads=2,
            intermediate_size=32,
        )  # fmt: skip
    )
    layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    before = sum(p.numel() for p in model.parameters())
    kept_ids = [id(model.bert.encoder.layer[i]) for i in (0, 2, 4)]
    assert keep_layers(model, 3) == [0, 2, 4]
    assert [id(x) for x in model.bert.encoder.layer] == kept_ids
    assert model.config.num_hidden_layers == 3
    assert sum(p.numel() for p in model.parameters()) == before - 3 * layer
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.start_logits.shape == (1, 3)


def test_a_pruned_decoder_still_generates(tiny_model_dir):
    cfg = ModelConfig(
        name_or_path=str(tiny_model_dir("llama", causal=True)), task="instruction", keep_layers=1
    )
    model = build_model(cfg, torch.device("cpu"))
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    out = model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_keeping_more_layers_than_there_are_is_an_error(tiny_model_dir):
    import pytest

    cfg = ModelConfig(name_or_path=str(tiny_model_dir("bert")), keep_layers=3)
    with pytest.raises(ValueError, match="keep_layers` = 3: the model has 2 layers"):
        build_model(cfg, torch.device("cpu"))


def test_a_pruned_model_fine_tunes_with_lora(tiny_model_dir, tmp_path):
    from qa_ray.training.loop import train_loop_per_worker
    from tests.helpers import RecordingSession, trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, model__keep_layers=1,
                     model__finetune="lora", train__max_steps=2, data__max_eval_examples=4)  # fmt: skip
    full = trial_dict(tiny_model_dir("bert"), tmp_path / "full", model__finetune="lora",
                      train__max_steps=2, data__max_eval_examples=4)  # fmt: skip
    pruned, unpruned = RecordingSession(), RecordingSession()
    a = train_loop_per_worker(cfg, pruned)
    b = train_loop_per_worker(full, unpruned)
    assert a["step"] == 2 and a["total_params"] < b["total_params"]
    assert a["model_footprint_mb"] < b["model_footprint_mb"]
