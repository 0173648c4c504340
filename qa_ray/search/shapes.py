"""A model's shape from its ``config.json``: what the memory account counts (torch-free).

Every family qa-ray trains is described the same way: stacks of layers (one for an encoder or
a decoder, two for T5's encoder and decoder), each layer's linear projections by the names
peft's ``target_modules`` use (what k-bit quantization and LoRA act on) and its other
parameters (norms, biases outside a projection, Mamba's state matrices), the embeddings, and
what a layer keeps for backward per token. The families: BERT-like encoders, Llama-like
decoders (gated MLP, grouped KV heads), GPT-2 / BLOOM / Falcon (fused QKV, 4h MLP), Mamba, T5,
and qa-ray's own LSTM (:func:`lstm_shape`). The parameter counts equal the built models' on
the tiny test models of every family (``tests/unit/search/test_memory.py``).

    read_shape("google-t5/t5-base")  # its config.json: the Hugging Face cache first
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_ray.search.model_config import read_config

__all__ = ["Linear", "ModelShape", "NotAccounted", "Stack", "lstm_shape", "read_shape"]


class NotAccounted(ValueError):
    """A model the memory account does not cover (its ``model_type``): a sweep over it can be
    planned for the other models only."""


@dataclass(frozen=True)
class Linear:
    """One projection of a layer. ``role`` says what pruning shrinks: ``q`` and ``kv`` (their
    outputs) and ``o`` (its input) with heads, ``up`` (output) and ``down`` (input) with
    feed-forward units."""

    name: str  # the module's name, as peft's target_modules matches it
    d_in: int
    d_out: int
    bias: bool = False
    role: str = ""
    quantized: bool = True  # bitsandbytes swaps it (not Mamba's dt_proj, nor T5's wo)

    def sized(self, heads_keep: float, ffn_keep: float) -> tuple[float, float]:
        d_in = self.d_in * {"o": heads_keep, "down": ffn_keep}.get(self.role, 1.0)
        d_out = self.d_out * {"q": heads_keep, "kv": heads_keep, "up": ffn_keep}.get(self.role, 1.0)
        return d_in, d_out


@dataclass(frozen=True)
class Stack:
    """A stack of identical layers (``shared``: ALBERT's one set of weights run every time)."""

    layers: int
    linears: tuple[Linear, ...]
    other: int  # a layer's parameters outside its projections
    shared: bool = False
    # What backward keeps per token of a layer, in values of the compute dtype: about
    # ``10h + 2i`` (Korthikanti et al. 2022; a gated MLP keeps 4i), plus for T5's decoder the
    # source's keys and values of cross-attention (per source token: ``cross``).
    keep: tuple[float, float] = (0.0, 0.0)  # (values, values per feed-forward unit kept)
    cross: float = 0.0
    decoder_side: bool = False  # T5's decoder: it reads the answer, not the source

    def weights(self, heads_keep: float = 1.0, ffn_keep: float = 1.0) -> tuple[float, float]:
        """(quantizable projection weights, the rest) of one layer."""
        q = rest = 0.0
        for lin in self.linears:
            d_in, d_out = lin.sized(heads_keep, ffn_keep)
            if lin.quantized:
                q += d_in * d_out
            else:
                rest += d_in * d_out
            rest += d_out if lin.bias else 0
        return q, rest + self.other


@dataclass(frozen=True)
class ModelShape:
    """What sets a model's sizes, read from its ``config.json``."""

    model_type: str
    family: str  # encoder | decoder | seq2seq | mamba | lstm: how it trains
    hidden: int
    heads: int
    vocab: int
    stacks: tuple[Stack, ...]
    embeddings: float  # input embeddings, positions, norms before and after the stacks
    tied: bool = True  # the LM head is the input embedding
    kv_width: int = 0  # a layer's keys (= values) per token: the KV cache
    lora_default: tuple[str, ...] = ()  # peft's (or qa-ray's) target_modules
    # transformers' default attention is SDPA (no s x s map kept); BLOOM's is eager (two maps
    # a layer), and ALiBi in Falcon or T5's position bias is one b*a*s*s mask per stack.
    # bytes a layer's map value costs: (constant, per byte of the compute dtype)
    maps_per_layer: tuple[float, float] = (0.0, 0.0)
    maps_per_stack: int = 0  # b*a*s*s masks in the compute dtype, one per stack
    state: int = 0  # Mamba: the state size of its scan (kept in fp32 over the sequence)
    intermediate: int = 0

    @property
    def decoder(self) -> bool:
        return self.family in ("decoder", "mamba")

    @property
    def layers(self) -> int:
        return self.stacks[0].layers


def _lin(
    name: str, d_in: int, d_out: int, bias: bool = False, role: str = "", quantized: bool = True
) -> Linear:
    return Linear(name, d_in, d_out, bias, role, quantized)


def _encoder(t: str, c: dict[str, Any]) -> ModelShape:
    if t == "distilbert":
        h, n, i, a = c["dim"], c["n_layers"], c["hidden_dim"], c["n_heads"]
        names = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
    else:
        h, n = c["hidden_size"], c["num_hidden_layers"]
        i, a = c["intermediate_size"], c["num_attention_heads"]
        names = (("query", "key", "value", "dense", "ffn", "ffn_output") if t == "albert"
                 else ("query", "key", "value", "dense", "dense", "dense"))  # fmt: skip
    e = c.get("embedding_size", h)
    linears = (
        _lin(names[0], h, h, True, "q"), _lin(names[1], h, h, True, "kv"),
        _lin(names[2], h, h, True, "kv"), _lin(names[3], h, h, True, "o"),
        _lin(names[4], h, i, True, "up"), _lin(names[5], i, h, True, "down"),
    )  # fmt: skip
    types = 0 if t == "distilbert" else c.get("type_vocab_size", 2)
    embed = c["vocab_size"] * e + (c.get("max_position_embeddings", 512) + types + 2) * e
    if e != h:  # ALBERT's factorized embeddings, mapped up to the hidden size
        embed += e * h + h
    stack = Stack(n, linears, 4 * h, shared=t == "albert", keep=(10 * h, 2 * i))
    eager = c.get("_attn_implementation") == "eager"
    return ModelShape(t, "encoder", h, a, c["vocab_size"], (stack,), embed,
                      lora_default=(names[0], names[2]),
                      maps_per_layer=(1.0, 2.0) if eager else (0.0, 0.0))  # fmt: skip


def _llama(t: str, c: dict[str, Any]) -> ModelShape:
    h, n, i = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    a = c["num_attention_heads"]
    d = c.get("head_dim") or h // a
    kv = (c.get("num_key_value_heads") or a) * d
    linears = (
        _lin("q_proj", h, a * d, role="q"), _lin("k_proj", h, kv, role="kv"),
        _lin("v_proj", h, kv, role="kv"), _lin("o_proj", a * d, h, role="o"),
        _lin("gate_proj", h, i, role="up"), _lin("up_proj", h, i, role="up"),
        _lin("down_proj", i, h, role="down"),
    )  # fmt: skip
    stack = Stack(n, linears, 2 * h, keep=(10 * h, 4 * i))
    return ModelShape(t, "decoder", h, a, c["vocab_size"], (stack,), c["vocab_size"] * h + h,
                      tied=c.get("tie_word_embeddings", True), kv_width=kv,
                      lora_default=("q_proj", "v_proj"))  # fmt: skip


def _gpt(t: str, c: dict[str, Any]) -> ModelShape:
    """GPT-2, BLOOM and Falcon: a fused QKV projection, a 4h GELU MLP, LayerNorms."""
    h = c.get("n_embd") or c.get("hidden_size") or c["n_embed"]
    n = c.get("n_layer") or c["num_hidden_layers"]
    a = c.get("n_head") or c["num_attention_heads"]
    d = h // a
    eager_map = (0.0, 0.0)
    if t == "gpt2":
        i, bias, kv = c.get("n_inner") or 4 * h, True, h
        names, lns = ("c_attn", "c_proj", "c_fc", "c_proj"), 4 * h
        embed = c["vocab_size"] * h + c.get("n_positions", 1024) * h + 2 * h
    elif t == "bloom":
        i, bias, kv = 4 * h, True, h
        names, lns = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), 4 * h
        embed = c["vocab_size"] * h + 4 * h
        eager_map = (4.0, 1.0)  # eager: softmax's fp32 output and its copy in the compute dtype
    else:  # falcon
        i, bias = c.get("ffn_hidden_size") or 4 * h, c.get("bias", False)
        new, multi = c.get("new_decoder_architecture", False), c.get("multi_query", True)
        kv = (c.get("num_kv_heads") or a) * d if new else (d if multi else h)
        names = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
        parallel, two = c.get("parallel_attn", True), c.get("num_ln_in_parallel_attn")
        lns = 4 * h if (not parallel or two == 2 or (two is None and new)) else 2 * h
        embed = c["vocab_size"] * h + 2 * h
    linears = (
        _lin(names[0], h, h + 2 * kv, bias), _lin(names[1], h, h, bias, "o"),
        _lin(names[2], h, i, bias, "up"), _lin(names[3], i, h, bias, "down"),
    )  # fmt: skip
    stack = Stack(n, linears, lns, keep=(10 * h, 2 * i))
    alibi = t == "falcon" and c.get("alibi", False)
    return ModelShape(t, "decoder", h, a, c["vocab_size"], (stack,), embed,
                      tied=c.get("tie_word_embeddings", True), kv_width=kv,
                      lora_default=(names[0],), maps_per_layer=eager_map,
                      maps_per_stack=1 if alibi else 0)  # fmt: skip


def _mamba(t: str, c: dict[str, Any]) -> ModelShape:
    h, n = c["hidden_size"], c["num_hidden_layers"]
    i = c.get("intermediate_size") or c.get("expand", 2) * h
    s, k = c.get("state_size", 16), c.get("conv_kernel", 4)
    r = c.get("time_step_rank", "auto")
    r = math.ceil(h / 16) if r == "auto" else int(r)
    bias = c.get("use_bias", False)
    linears = (
        _lin("in_proj", h, 2 * i, bias), _lin("x_proj", i, r + 2 * s),
        _lin("dt_proj", r, i, True, quantized=False), _lin("out_proj", i, h, bias),
    )  # fmt: skip
    conv = i * k + (i if c.get("use_conv_bias", True) else 0)
    # kept per token in the compute dtype: in_proj's output (2i), the convolution and its
    # activation, the time step, the scan's output, its gate and their product (~8i), two norms
    stack = Stack(n, linears, conv + i * s + i + h, keep=(2 * h + 10 * i, 0))
    return ModelShape(t, "mamba", h, 1, c["vocab_size"], (stack,), c["vocab_size"] * h + h,
                      tied=c.get("tie_word_embeddings", True), lora_default=("in_proj", "x_proj"),
                      state=s, intermediate=i)  # fmt: skip


def _t5(t: str, c: dict[str, Any]) -> ModelShape:
    h, i, a, d = c["d_model"], c["d_ff"], c["num_heads"], c["d_kv"]
    inner = a * d
    gated = c.get("feed_forward_proj", "relu").startswith("gated")
    ff: tuple[Linear, ...] = (
        (_lin("wi_0", h, i, role="up"), _lin("wi_1", h, i, role="up"))
        if gated
        else (_lin("wi", h, i, role="up"),)
    )
    # transformers keeps T5's `wo` out of k-bit quantization (_keep_in_fp32_modules)
    ff += (_lin("wo", i, h, role="down", quantized=False),)
    attn = (
        _lin("q", h, inner, role="q"), _lin("k", h, inner, role="kv"),
        _lin("v", h, inner, role="kv"), _lin("o", inner, h, role="o"),
    )  # fmt: skip
    mlp = (4 if gated else 2) * i
    encoder = Stack(c["num_layers"], attn + ff, 2 * h, keep=(10 * h, mlp))
    decoder = Stack(c.get("num_decoder_layers") or c["num_layers"], attn + attn + ff, 3 * h,
                    keep=(14 * h, mlp), cross=2 * inner, decoder_side=True)  # fmt: skip
    # shared embeddings, a relative position bias and a final norm per stack
    embed = c["vocab_size"] * h + 2 * (c.get("relative_attention_num_buckets", 32) * a + h)
    return ModelShape(t, "seq2seq", h, a, c["vocab_size"], (encoder, decoder), embed,
                      tied=c.get("tie_word_embeddings", True), kv_width=inner,
                      lora_default=("q", "v"), maps_per_stack=1)  # fmt: skip


_FAMILIES = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert",
                     "camembert"), _encoder),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"), _llama),
    **dict.fromkeys(("gpt2", "bloom", "falcon"), _gpt),
    "mamba": _mamba,
    **dict.fromkeys(("t5", "mt5"), _t5),
}  # fmt: skip


def read_shape(name_or_path: str, field: str = "model.name_or_path") -> ModelShape:
    """The shape of a model, from its ``config.json`` in a local folder or on the hub
    (:func:`~.model_config.read_config`: the Hugging Face cache first, no weights).

    Raises:
        NotAccounted: a ``model_type`` the account does not cover.
        ValueError: no config.json to read (see :func:`~.model_config.read_config`).
    """
    c = read_config(name_or_path, field)
    model_type = c.get("model_type", "")
    if model_type not in _FAMILIES:
        raise NotAccounted(
            f"`{field}` = {name_or_path!r}: model_type {model_type!r} is not one the "
            f"memory account covers ({sorted(_FAMILIES)})"
        )
    return _FAMILIES[model_type](model_type, c)


def _tokens(name_or_path: str) -> int:
    """How many tokens the tokenizer at ``name_or_path`` has (``len(tokenizer)``): from a local
    ``tokenizer.json`` (its vocabulary and added tokens), else the model's ``vocab_size``."""
    path = Path(name_or_path) / "tokenizer.json"
    if path.is_file():
        tok = json.loads(path.read_text())
        ids = [*tok["model"]["vocab"].values(), *(t["id"] for t in tok.get("added_tokens", []))]
        return max(ids) + 1
    return int(read_config(name_or_path)["vocab_size"])


def lstm_shape(name_or_path: str, lstm: dict[str, Any]) -> ModelShape:
    """The shape of qa-ray's BiLSTM with attention (:mod:`qa_ray.models.lstm`), sized for the
    tokenizer at ``name_or_path`` and ``model.lstm``."""
    h, n = int(lstm.get("hidden_size", 128)), int(lstm.get("num_layers", 1))
    e = int(lstm.get("embedding_dim", 128))
    if lstm.get("embeddings_from"):
        src = read_config(str(lstm["embeddings_from"]), "model.lstm.embeddings_from")
        e = src.get("embedding_size") or src.get("hidden_size") or src.get("dim") or e

    def bilstm(d_in: int) -> int:  # weights and two biases of four gates, two directions
        return 2 * (4 * h * (d_in + h) + 8 * h)

    encoder = sum(bilstm(e if k == 0 else 2 * h) for k in range(n))
    heads = (2 * h + 1) + 2 * h + 2 * h + bilstm(6 * h) + bilstm(2 * h) + (2 * h + 1) + (4 * h + 1)
    # per token: embeddings and their dropout, four gates and two states a direction and LSTM,
    # the attention's concatenations and the two modelling LSTMs' outputs
    stack = Stack(1, (), encoder + heads, keep=(2 * e + 14 * h * n + 60 * h, 0))
    vocab = _tokens(name_or_path)
    return ModelShape("bilstm_attention", "lstm", h, 1, vocab, (stack,), vocab * e,
                      maps_per_stack=4)  # fmt: skip
