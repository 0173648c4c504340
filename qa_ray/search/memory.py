"""Predicting a configuration's peak memory before it runs (torch-free: the driver uses it).

Three parts:

- :func:`memory_key`: the knobs that set a trial's memory (model, fine-tune method, LoRA rank
  and targets, quantization, micro-batch, sequence length, eval batch, gradient checkpointing,
  layers kept and pruning, distillation teacher, device, workers). Learning rate, warmup and
  seeds are not in it: one measurement serves every configuration with the same key.
- :func:`features`: an analytic account of the bytes a trial holds, from the model's own
  ``config.json`` (no weights, no torch): ``static_mb`` (weights by dtype after quantization,
  plus gradients and AdamW's two moments of the trainable parameters, plus a teacher's weights)
  and ``activation_mb`` (what backward keeps, all layers, or with gradient checkpointing the
  layer inputs plus one layer; or an evaluation's, whichever is larger). Both grow with batch,
  sequence and rank.
- :class:`MemoryModel`: ``peak = c0 + c1 * static_mb + c2 * activation_mb``, a Bayesian linear
  model whose prior is the account itself (``c1 = c2 = 1`` and a runtime base ``c0``) and whose
  every measured trial refines it. The coefficients are kept non-negative, so a prediction is
  monotone in batch, sequence and rank. Its uncertainty (``sd_mb``) is the coefficients'
  posterior, which shrinks as measurements come in, plus the measurement noise and the error of
  the account's form (10 % of the peak until six measurements, then the fit's own relative
  residual spread). A configuration whose key was measured is predicted as that measurement.
  A peak that is no measurement (a trial stopped over a budget, out of memory, or before its
  first optimizer step) is a lower bound of its own key only, never a row of the fit.

The account covers BERT-family encoders (bert, roberta, electra, albert, distilbert, ...) and
Llama-family decoders (llama, mistral, qwen2, ...); another ``model_type`` (T5, Mamba, Bloom,
Falcon) or qa-ray's LSTM is :class:`NotAccounted`, an error naming it. The config is read from
a local folder or a hub id (:mod:`.model_config`: the Hugging Face cache first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qa_ray.search.model_config import read_config

__all__ = [
    "MemoryModel",
    "ModelShape",
    "NotAccounted",
    "Prediction",
    "features",
    "memory_key",
    "read_shape",
]

MB = 2**20
# Peak memory of the runtime before any model: CPU, a worker's Python + torch + transformers +
# tokenizer + data (the README's "about 0.6 GB"); GPU, a CUDA context.
RUNTIME_MB = {"cpu": 700.0, "cuda": 500.0}
_PRIOR_SD = (0.5, 0.3, 1.0)  # of c0 (relative to RUNTIME_MB), c1, c2: the activations are rough
_NOISE = 0.03  # relative: the spread of repeated measurements of one configuration
# Relative: how far the account's form (not its coefficients) can miss an unmeasured
# configuration, until enough measurements estimate it from the fit's own residuals
# (``_RESIDUALS_FROM`` rows and up). Without it a posterior fitted to three points of three
# coefficients calls itself exact: on real MiniLM it was too narrow (docs/memory.md).
_MODEL_ERROR = 0.10
_RESIDUALS_FROM = 6

# (path in a TrialConfig dict, default): what a trial's memory depends on.
_KEY_FIELDS = (
    ("model.name_or_path", None),
    ("model.task", "extractive"),
    ("model.finetune", "full"),
    ("model.quantization_bits", 32),
    ("model.lora.r", 8),
    ("model.lora.target_modules", None),
    ("model.keep_layers", None),
    ("model.prune.heads", None),
    ("model.prune.ffn", None),
    ("model.gradient_checkpointing", False),
    ("data.max_seq_length", 384),
    ("train.per_device_batch_size", 16),
    ("train.eval_batch_size", 64),
    ("train.precision", "auto"),
    ("train.distill.teacher", None),
    ("resources.num_workers", 1),
)


def _get(d: Mapping[str, Any], path: str, default: Any) -> Any:
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return default
        node = node[part]
    return node


def memory_key(config: Mapping[str, Any]) -> tuple:
    """The memory-relevant knobs of a trial config dict (a ``TrialConfig.model_dump()``), as a
    hashable tuple; LoRA's rank and targets only count for a LoRA trial."""
    lora = _get(config, "model.finetune", "full") == "lora"
    out = []
    for path, default in _KEY_FIELDS:
        value = _get(config, path, default)
        if path.startswith("model.lora.") and not lora:
            value = None
        out.append(tuple(value) if isinstance(value, list) else value)
    return tuple(out)


# ---- the analytic account --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What sets a transformer's sizes, read from its ``config.json``."""

    model_type: str
    decoder: bool  # Llama family: gated MLP, grouped KV heads, causal-LM logits
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    positions: int
    embedding: int  # ALBERT factorizes its embeddings; else = hidden
    head_dim: int
    shared_layers: bool = False  # ALBERT: one set of layer weights for every layer
    tied: bool = True
    # transformers' default attention (>= 4.36) for these families is SDPA, whose fused
    # kernels keep no s x s attention map for backward; "eager" keeps two and a dropout mask.
    eager_attention: bool = False

    def layer_params(self, heads_keep: float = 1.0, ffn_keep: float = 1.0) -> float:
        h, head_dim = self.hidden, self.head_dim
        q_out = self.heads * head_dim * heads_keep
        kv_out = self.kv_heads * head_dim * heads_keep
        attn = h * q_out + 2 * h * kv_out + q_out * h
        i = self.intermediate * ffn_keep
        mlp = (3 if self.decoder else 2) * h * i
        norms = (2 if self.decoder else 4) * h
        biases = 0 if self.decoder else q_out + 2 * kv_out + h + i + h
        return attn + mlp + norms + biases

    def embedding_params(self) -> float:
        e = self.embedding
        n = self.vocab * e + (self.hidden if self.decoder else (self.positions + 2 + 2) * e)
        if e != self.hidden:
            n += e * self.hidden
        return n


_DECODERS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3"}
_ENCODERS = {"bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "deberta"}


class NotAccounted(ValueError):
    """A model the memory account does not cover (its ``model_type``, or an architecture qa-ray
    builds itself): a sweep over it can be planned for the other models only."""


def read_shape(name_or_path: str, field: str = "model.name_or_path") -> ModelShape:
    """The shape of a model, from its ``config.json`` in a local folder or on the hub
    (:func:`~.model_config.read_config`: the Hugging Face cache first, no weights).

    Raises:
        NotAccounted: a ``model_type`` the account does not cover.
        ValueError: no config.json to read (see :func:`~.model_config.read_config`).
    """
    c = read_config(name_or_path, field)
    model_type = c.get("model_type", "")
    if model_type not in _DECODERS | _ENCODERS:
        raise NotAccounted(
            f"`{field}` = {name_or_path!r}: model_type {model_type!r} is not one the "
            f"memory account covers ({sorted(_DECODERS | _ENCODERS)})"
        )
    if model_type == "distilbert":
        hidden, layers, inter, heads = c["dim"], c["n_layers"], c["hidden_dim"], c["n_heads"]
    else:
        hidden, layers = c["hidden_size"], c["num_hidden_layers"]
        inter, heads = c["intermediate_size"], c["num_attention_heads"]
    return ModelShape(
        model_type=model_type,
        decoder=model_type in _DECODERS,
        hidden=hidden,
        layers=layers,
        intermediate=inter,
        heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        vocab=c["vocab_size"],
        positions=c.get("max_position_embeddings", 512),
        embedding=c.get("embedding_size", hidden),
        head_dim=c.get("head_dim") or hidden // heads,
        shared_layers=model_type == "albert",
        tied=c.get("tie_word_embeddings", True),
        eager_attention=c.get("_attn_implementation") == "eager",
    )


def _bytes_per_frozen_param(bits: int, finetune: str) -> float:
    # 16 bits: bf16 frozen weights under LoRA; a full fine-tune keeps fp32 master weights.
    if bits == 16:
        return 2.0 if finetune == "lora" else 4.0
    return {32: 4.0, 8: 1.0, 4: 0.5625}[bits]  # 4-bit: + an fp32 absmax per 64 weights


_LORA_DIMS = {  # target name -> (d_in, d_out) in units of (hidden, intermediate, kv width)
    "query": ("h", "h"), "key": ("h", "kv"), "value": ("h", "kv"), "q_lin": ("h", "h"),
    "v_lin": ("h", "h"), "k_lin": ("h", "h"), "q_proj": ("h", "h"), "k_proj": ("h", "kv"),
    "v_proj": ("h", "kv"), "o_proj": ("h", "h"), "gate_proj": ("h", "i"), "up_proj": ("h", "i"),
    "down_proj": ("i", "h"),
}  # fmt: skip


def _lora_params(shape: ModelShape, r: int, targets: list[str] | None, layers: int) -> float:
    if targets is None:  # peft's defaults: query+value (encoders), q_proj+v_proj (decoders)
        targets = ["q_proj", "v_proj"] if shape.decoder else ["query", "value"]
    width = {"h": shape.hidden, "i": shape.intermediate, "kv": shape.kv_heads * shape.head_dim}
    per_layer = 0.0
    for t in targets:
        if t == "dense" and not shape.decoder:  # BERT: attention output, intermediate, output
            per_layer += r * (4 * width["h"] + 2 * width["i"])
            continue
        d_in, d_out = _LORA_DIMS.get(t, ("h", "h"))
        per_layer += r * (width[d_in] + width[d_out])
    return per_layer * layers


@dataclass(frozen=True)
class Features:
    static_mb: float
    activation_mb: float
    params: float  # the student's parameters after layers kept and pruning
    trainable: float


def features(
    config: Mapping[str, Any], shapes: dict[str, ModelShape | NotAccounted] | None = None
) -> Features:
    """The analytic account of a trial config dict (see the module docstring).

    ``shapes`` maps a model path to its shape, or to why the account does not cover it; a
    path missing there is read (its ``config.json``: a hub id's from the cache, or the hub)
    and added, so a sweep's model reads each model once.
    """
    shapes = {} if shapes is None else shapes

    def shape_of(path: str, field: str) -> ModelShape:
        if path not in shapes:
            try:
                shapes[path] = read_shape(path, field)
            except NotAccounted as exc:
                shapes[path] = exc
        found = shapes[path]
        if isinstance(found, NotAccounted):
            raise NotAccounted(str(found))
        return found

    name = _get(config, "model.name_or_path", "")
    architecture = _get(config, "model.architecture", "auto")
    if architecture != "auto":  # qa-ray's own model, not the transformer it names
        raise NotAccounted(
            f"`model.architecture` = {architecture!r}: the memory account covers transformers "
            f"loaded from their config.json, not qa-ray's {architecture} (of {name!r})"
        )
    s = shape_of(name, "model.name_or_path")
    finetune = _get(config, "model.finetune", "full")
    bits = int(_get(config, "model.quantization_bits", 32))
    layers = int(_get(config, "model.keep_layers", s.layers))
    heads_keep = 1.0 - float(_get(config, "model.prune.heads", 0.0))
    ffn_keep = 1.0 - float(_get(config, "model.prune.ffn", 0.0))
    layer = s.layer_params(heads_keep, ffn_keep)
    stacked = layer * (1 if s.shared_layers else layers)
    embed = s.embedding_params()
    causal = _get(config, "model.task", "extractive") != "extractive"
    head = (0 if s.tied else s.vocab * s.hidden) if causal else 2 * s.hidden + 2  # span head
    params = stacked + embed + head
    if finetune == "lora":
        lora = _lora_params(
            s,
            int(_get(config, "model.lora.r", 8)),
            _get(config, "model.lora.target_modules", None),
            layers,
        )
        # peft trains a copy of the span head (modules_to_save) beside the frozen original.
        span = 0 if causal else head
        trainable = lora + span
        params += span
        weights = stacked * _bytes_per_frozen_param(bits, "lora") + (embed + head + span) * 4
        weights += lora * 4
    else:
        trainable = params
        weights = (
            params * _bytes_per_frozen_param(bits, "full")
            if bits >= 16
            else (stacked * _bytes_per_frozen_param(bits, "full") + (embed + head) * 4)
        )
    static = weights + trainable * (4 + 8)  # fp32 gradients + AdamW's two moments
    teacher = _get(config, "train.distill.teacher", None)
    t = None
    if teacher is not None and not str(teacher).startswith("sweep:"):
        t = shape_of(str(teacher), "train.distill.teacher")
        static += (t.layer_params() * (1 if t.shared_layers else t.layers)
                   + t.embedding_params()) * 4  # fmt: skip

    b = int(_get(config, "train.per_device_batch_size", 16))
    seq = int(_get(config, "data.max_seq_length", 384))
    eb = int(_get(config, "train.eval_batch_size", 64))
    act_bytes = 2.0 if _get(config, "train.precision", "auto") in ("bf16", "fp16") else 4.0
    checkpointing = bool(_get(config, "model.gradient_checkpointing", False))
    act = (causal, act_bytes)
    train_act = _activations(s, b, seq, layers, heads_keep, ffn_keep, *act, checkpointing)
    if t is not None:  # the teacher's forward under no_grad: one layer live at a time
        train_act += _activations(t, b, seq, 1, 1.0, 1.0, *act, False) / 2
    eval_act = _activations(s, eb, seq, 1, heads_keep, ffn_keep, *act, False) / 2
    return Features(
        static_mb=static / MB,
        activation_mb=max(train_act, eval_act) / MB,
        params=params,
        trainable=trainable,
    )


def _activations(
    s: ModelShape,
    batch: int,
    seq: int,
    layers: int,
    heads_keep: float,
    ffn_keep: float,
    causal: bool,
    act_bytes: float,
    checkpointing: bool,
) -> float:
    """Bytes backward keeps: per layer about ``b*s*(10h + 2i)`` values, plus with eager
    attention two ``b*a*s*s`` attention maps (scores, probabilities) and the dropout mask (a
    byte a value), as Korthikanti et al. (2022) count them (SDPA keeps a ``b*a*s`` logsumexp
    instead); the logits (and their gradient) on top."""
    h, i, a = s.hidden, s.intermediate * ffn_keep, s.heads * heads_keep
    maps = batch * a * seq * seq * (2 * act_bytes + 1) if s.eager_attention else batch * a * seq * 4
    per_layer = batch * seq * (10 * h + 2 * i) * act_bytes + maps
    kept = (batch * seq * h * act_bytes * layers + per_layer) if checkpointing else (
        per_layer * layers)  # fmt: skip
    logits = batch * seq * (s.vocab if causal else 2) * 4 * 2
    return kept + logits


# ---- the calibrated model --------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A predicted peak, its standard deviation, and how many measurements informed it."""

    peak_mb: float
    sd_mb: float
    measured: bool = False  # this configuration's key was measured: the prediction is that
    # A trial of this key was stopped over a budget (or ran out of memory) holding this much:
    # it needs at least that, whatever the fit says.
    at_least_mb: float | None = None

    def fits(self, budget_mb: float, z: float = 2.0) -> bool | None:
        """True: under ``budget_mb`` beyond the uncertainty; False: over it beyond the
        uncertainty, or known to need more; None: within ``z`` standard deviations of it."""
        if self.at_least_mb is not None and self.at_least_mb > budget_mb:
            return False
        if self.peak_mb - z * self.sd_mb > budget_mb:
            return False
        if self.peak_mb + z * self.sd_mb <= budget_mb:
            return True
        return None


@dataclass
class MemoryModel:
    """A sweep's memory model on one device kind (``"cpu"`` or ``"cuda"``)."""

    device: str = "cpu"
    # model path -> its shape, or why the account lacks it: each model's config is read once
    shapes: dict[str, ModelShape | NotAccounted] = field(default_factory=dict)
    measured: dict[tuple, float] = field(default_factory=dict)  # key -> largest peak seen
    at_least: dict[tuple, float] = field(default_factory=dict)  # key -> a stopped trial's peak
    _rows: list[tuple[float, float, float]] = field(default_factory=list)  # static, act, peak

    def __post_init__(self) -> None:
        base = RUNTIME_MB[self.device]
        self._prior_mean = np.array([base, 1.0, 1.0])
        self._prior_cov = np.diag(
            [(_PRIOR_SD[0] * base) ** 2, _PRIOR_SD[1] ** 2, _PRIOR_SD[2] ** 2]
        )

    def observe(
        self, config: Mapping[str, Any], peak_mb: float, *, steps: int | None = None
    ) -> None:
        """Takes a trial's measured peak (``peak_memory_mb``) into the model.

        ``steps`` is the optimizer steps the trial took (its last ``step``). A trial that took
        none held its weights and maybe an evaluation, never training's activations and
        optimizer state: its peak is a lower bound (:meth:`observe_at_least`), not a row.
        """
        if steps is not None and steps < 1:
            self.observe_at_least(config, peak_mb)
            return
        f = features(config, self.shapes)
        key = memory_key(config)
        self.measured[key] = max(peak_mb, self.measured.get(key, 0.0))
        self._rows.append((f.static_mb, f.activation_mb, float(peak_mb)))

    def observe_at_least(self, config: Mapping[str, Any], peak_mb: float) -> None:
        """Takes the peak of a trial that did not measure its need: stopped over a budget, out
        of memory, or before its first optimizer step. It is a lower bound (a censored reading):
        configurations of its key are predicted at least it, and a budget under it rules them
        out. It is no row of the fit: a trial stopped at setup holds its weights alone, and as
        a row it pulled every other prediction down (a BERT-base batch 48 from 8004 to 4468 MB
        after two measurements and one such stop; see the unit test)."""
        key = memory_key(config)
        self.at_least[key] = max(peak_mb, self.at_least.get(key, 0.0))

    def __setstate__(self, state: dict) -> None:  # pickled before lower bounds
        state.setdefault("at_least", {})
        self.__dict__.update(state)

    @property
    def n(self) -> int:
        return len(self._rows)

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean (clipped at 0: monotone) and covariance of ``(c0, c1, c2)``."""
        precision = np.linalg.inv(self._prior_cov)
        rhs = precision @ self._prior_mean
        for static, act, peak in self._rows:
            x = np.array([1.0, static, act])
            w = 1.0 / (_NOISE * peak) ** 2
            precision = precision + w * np.outer(x, x)
            rhs = rhs + w * peak * x
        cov = np.linalg.inv(precision)
        mean = cov @ rhs
        return np.maximum(mean, 0.0), cov

    def predict(self, config: Mapping[str, Any]) -> Prediction:
        """The predicted peak of a trial config dict, with its uncertainty."""
        key = memory_key(config)
        floor = self.at_least.get(key)
        if key in self.measured:
            peak = max(self.measured[key], floor or 0.0)
            return Prediction(peak, _NOISE * peak, measured=True, at_least_mb=floor)
        f = features(config, self.shapes)
        mean, cov = self.coefficients()
        x = np.array([1.0, f.static_mb, f.activation_mb])
        peak = max(float(mean @ x), floor or 0.0)
        form = self.model_error(mean)
        sd = math.sqrt(max(float(x @ cov @ x), 0.0) + (_NOISE**2 + form**2) * peak**2)
        return Prediction(peak, sd, at_least_mb=floor)

    def model_error(self, mean: np.ndarray | None = None) -> float:
        """The relative error of the account's form: :data:`_MODEL_ERROR` until there are
        ``_RESIDUALS_FROM`` measurements, then the fit's relative residual spread (degrees of
        freedom counted), at least the measurement noise."""
        n = len(self._rows)
        if n < _RESIDUALS_FROM:
            return _MODEL_ERROR
        if mean is None:
            mean, _ = self.coefficients()
        rel = [(mean @ np.array([1.0, st, act]) - peak) / peak for st, act, peak in self._rows]
        return max(_NOISE, math.sqrt(sum(r * r for r in rel) / (n - 3)))
