"""Tiny random-init models built from real architectures' configs, saved as local folders.

Each folder holds a 2-layer, 64-dim model plus a tokenizer from ``tests/assets`` (no hub
access), so every builder and the training loop run on the real ``from_pretrained`` path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    AlbertConfig,
    AutoModelForQuestionAnswering,
    BertConfig,
    BloomConfig,
    FalconConfig,
    GPT2Config,
    LlamaConfig,
    MambaConfig,
    T5Config,
)

ASSETS = Path(__file__).parent / "assets"
WORDPIECE = ASSETS / "wordpiece"
BPE = ASSETS / "bpe"
VOCAB = 2000


def _config(kind: str):
    if kind == "bert":
        return BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
        ), WORDPIECE
    if kind == "albert":
        return AlbertConfig(
            vocab_size=VOCAB,
            embedding_size=32,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
        ), WORDPIECE
    if kind == "llama":
        return LlamaConfig(
            vocab_size=VOCAB + 8,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=1024,
            pad_token_id=2,
            bos_token_id=0,
            eos_token_id=1,
        ), BPE
    # Decoder-only families for generative QA (with the BPE tokenizer: <s>=0, </s>=1, <pad>=2).
    special = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if kind == "falcon":
        return FalconConfig(
            vocab_size=VOCAB + 8,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            new_decoder_architecture=False,
            multi_query=True,
            **special,
        ), BPE
    if kind == "bloom":
        return BloomConfig(
            vocab_size=VOCAB + 8, hidden_size=64, n_layer=2, n_head=2, **special
        ), BPE
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB + 8, n_embd=64, n_layer=2, n_head=2, n_positions=512, **special
        ), BPE
    if kind == "mamba":  # a state-space model (transformers' slow path on CPU)
        return MambaConfig(
            vocab_size=VOCAB + 8, hidden_size=64, num_hidden_layers=2, state_size=8, **special
        ), BPE
    if kind == "t5":
        return T5Config(
            vocab_size=VOCAB + 8,
            d_model=64,
            d_kv=32,
            d_ff=128,
            num_layers=2,
            num_heads=2,
            decoder_start_token_id=2,
            **special,
        ), BPE
    raise ValueError(kind)


def make_tiny_model(
    kind: str, out_dir: str | Path, auto_class=AutoModelForQuestionAnswering
) -> Path:
    """Saves a seeded tiny ``kind`` model (bert, albert, llama, falcon, bloom, gpt2, mamba, t5) with the
    ``auto_class`` head and its tokenizer to ``out_dir``."""
    out = Path(out_dir)
    config, tok_dir = _config(kind)
    torch.manual_seed(0)
    auto_class.from_config(config).save_pretrained(out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
