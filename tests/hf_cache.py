"""A real Hugging Face cache folder, laid out by a test: the hub models the shipped sweeps name,
each with its published ``config.json`` (no weights), as ``hf download ID config.json`` leaves
it, so ``huggingface_hub`` reads them with ``HF_HUB_OFFLINE=1`` and no network.

The configs are the ones the hub publishes for these ids, written out here (no hub access in
tests); only the keys the memory account reads matter to it, the rest is kept as published.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
    "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0",
    "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}  # fmt: skip
ALBERT_BASE_V2 = {
    "architectures": ["AlbertForMaskedLM"], "attention_probs_dropout_prob": 0, "bos_token_id": 2,
    "classifier_dropout_prob": 0.1, "down_scale_factor": 1, "embedding_size": 128,
    "eos_token_id": 3, "gap_size": 0, "hidden_act": "gelu_new", "hidden_dropout_prob": 0,
    "hidden_size": 768, "initializer_range": 0.02, "inner_group_num": 1,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "albert", "net_structure_type": 0, "num_attention_heads": 12,
    "num_hidden_groups": 1, "num_hidden_layers": 12, "num_memory_blocks": 0, "pad_token_id": 0,
    "type_vocab_size": 2, "vocab_size": 30000,
}  # fmt: skip
_LLAMA_32 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip
LLAMA_32_1B = {**_LLAMA_32, "head_dim": 64, "hidden_size": 2048, "intermediate_size": 8192,
               "num_attention_heads": 32, "num_hidden_layers": 16}  # fmt: skip
LLAMA_32_3B = {**_LLAMA_32, "head_dim": 128, "hidden_size": 3072, "intermediate_size": 8192,
               "num_attention_heads": 24, "num_hidden_layers": 28}  # fmt: skip
BLOOM_3B = {
    "apply_residual_connection_post_layernorm": False, "architectures": ["BloomForCausalLM"],
    "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_dropout": 0.0, "hidden_size": 2560,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "masked_softmax_fusion": True,
    "model_type": "bloom", "n_head": 32, "n_inner": None, "n_layer": 30, "offset_alibi": 100,
    "pad_token_id": 3, "pretraining_tp": 4, "skip_bias_add": True, "skip_bias_add_qkv": False,
    "slow_but_exact": False, "transformers_version": "4.21.0.dev0", "unk_token_id": 0,
    "use_cache": True, "vocab_size": 250880,
}  # fmt: skip
FALCON_RW_1B = {
    "alibi": True, "apply_residual_connection_post_layernorm": False,
    "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": True,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_dropout": 0.0, "hidden_size": 2048,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon",
    "multi_query": False, "new_decoder_architecture": False, "num_attention_heads": 32,
    "num_hidden_layers": 24, "parallel_attn": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.33.0.dev0", "use_cache": True, "vocab_size": 50304,
}  # fmt: skip
_T5_TASKS = {
    "summarization": {"early_stopping": True, "length_penalty": 2.0, "max_length": 200,
                      "min_length": 30, "no_repeat_ngram_size": 3, "num_beams": 4,
                      "prefix": "summarize: "},
    **{f"translation_en_to_{code}": {"early_stopping": True, "max_length": 300, "num_beams": 4,
                                     "prefix": f"translate English to {language}: "}
       for code, language in (("de", "German"), ("fr", "French"), ("ro", "Romanian"))},
}  # fmt: skip
T5_BASE = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 3072, "d_kv": 64, "d_model": 768,
    "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
    "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "n_positions": 512, "num_heads": 12, "num_layers": 12,
    "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32,
    "task_specific_params": _T5_TASKS, "vocab_size": 32128,
}  # fmt: skip
MAMBA_130M_HF = {
    "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "d_inner": 1536,
    "d_model": 768, "eos_token_id": 0, "expand": 2, "fused_add_norm": True, "hidden_act": "silu",
    "hidden_size": 768, "initializer_range": 0.1, "intermediate_size": 1536,
    "layer_norm_epsilon": 1e-05, "model_type": "mamba", "n_layer": 24, "num_hidden_layers": 24,
    "pad_token_id": 0, "pad_vocab_size_multiple": 8, "rescale_prenorm_residual": False,
    "residual_in_fp32": True, "rms_norm": True, "ssm_cfg": {}, "state_size": 16,
    "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1,
    "time_step_min": 0.001, "time_step_rank": 48, "time_step_scale": 1.0,
    "torch_dtype": "float32", "transformers_version": "4.39.0.dev0", "use_bias": False,
    "use_cache": True, "use_conv_bias": True, "vocab_size": 50280,
}  # fmt: skip
# sentence-transformers/all-MiniLM-L6-v2: the quickstart's local folder (scripts/stage_minilm.sh)
MINILM_L6 = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02,
    "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0,
    "position_embedding_type": "absolute", "transformers_version": "4.8.2",
    "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}  # fmt: skip

# The hub ids the shipped sweeps and search spaces name.
SHIPPED = {
    "google-bert/bert-base-uncased": BERT_BASE_UNCASED,
    "albert/albert-base-v2": ALBERT_BASE_V2,
    "meta-llama/Llama-3.2-1B": LLAMA_32_1B,
    "meta-llama/Llama-3.2-3B": LLAMA_32_3B,
    "bigscience/bloom-3b": BLOOM_3B,
    "tiiuae/falcon-rw-1b": FALCON_RW_1B,
    "google-t5/t5-base": T5_BASE,
    "state-spaces/mamba-130m-hf": MAMBA_130M_HF,
}


def lay_out_hf_cache(hf_home: Path, models: dict[str, dict[str, Any]] = SHIPPED) -> Path:
    """Writes ``models`` into a Hugging Face cache under ``hf_home`` (``HF_HOME``); returns its
    hub folder (``HF_HUB_CACHE``): ``models--ORG--NAME/refs/main`` holds a revision, and
    ``snapshots/<revision>/config.json`` the config."""
    hub = hf_home / "hub"
    for repo_id, config in models.items():
        repo = hub / f"models--{repo_id.replace('/', '--')}"
        revision = hashlib.sha1(repo_id.encode()).hexdigest()  # 40 hex digits, as a commit
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    return hub


def use_hf_cache(monkeypatch, hf_home: Path, models: dict[str, dict[str, Any]] = SHIPPED) -> Path:
    """Lays out the cache and points this process's ``huggingface_hub`` at it, offline.

    ``huggingface_hub`` reads ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, when it
    is imported: the environment is set for any subprocess, and its ``constants`` for this one
    (``hf_hub_download`` reads them at each call)."""
    from huggingface_hub import constants

    hub = lay_out_hf_cache(hf_home, models)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub
