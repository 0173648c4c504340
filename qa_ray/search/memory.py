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

The account covers every family qa-ray trains, as it trains them (:mod:`.shapes` reads their
sizes: BERT-like encoders, Llama-like decoders, GPT-2, BLOOM, Falcon, Mamba, T5 and qa-ray's
LSTM): a causal LM's logits at the answer tokens only (``logits_to_keep``), generation with a
KV cache at evaluation, frozen weights in the dtype ``build_model`` stores them, and values in
the dtype the trial computes in on its device (``"cuda"``, or ``"cpu"`` where only 16-bit
trials autocast). Another ``model_type`` is :class:`NotAccounted`, an error naming it. The
config is read from a local folder or a hub id (:mod:`.model_config`: the Hugging Face cache
first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qa_ray.search.shapes import ModelShape, NotAccounted, Stack, lstm_shape, read_shape

__all__ = [
    "Features",
    "MemoryModel",
    "ModelShape",
    "NotAccounted",
    "Prediction",
    "compute_bytes",
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
    ("data.max_answer_length", 30),
    ("model.architecture", "auto"),
    ("model.lstm.hidden_size", None),
    ("model.lstm.embedding_dim", None),
    ("model.lstm.num_layers", None),
    ("model.lstm.embeddings_from", None),
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
    hashable tuple; LoRA's rank and targets only count for a LoRA trial, the LSTM's sizes only
    for the LSTM."""
    lora = _get(config, "model.finetune", "full") == "lora"
    lstm = _get(config, "model.architecture", "auto") != "auto"
    out = []
    for path, default in _KEY_FIELDS:
        value = _get(config, path, default)
        if (path.startswith("model.lora.") and not lora) or (
            path.startswith("model.lstm.") and not lstm
        ):
            value = None
        out.append(tuple(value) if isinstance(value, list) else value)
    return tuple(out)


# ---- the analytic account --------------------------------------------------------------------

# NF4 with double quantization: half a byte, an 8-bit absmax per 64 weights and an fp32 one per
# 256 of those; LLM.int8: a byte (its per-row scales are negligible).
_QUANTIZED_BYTES = {4: 0.5 + 1 / 64 + 4 / (64 * 256), 8: 1.0}
# Alpaca's template without an input is about 32 tokens. Its responses average 68 tokens, but
# the peak is an epoch's longest micro-batch: counted as 4 characters a token, the largest
# batch of 8 in an epoch of the 52k records averaged 195-250 response tokens a row at sequence
# 512 (batch 4: 240-295), about half of what the prompt leaves; that half is the account's.
_INSTRUCTION_PROMPT = 32
# The qualitative questions an instruction evaluation answers in one batch, ~64 prompt tokens.
_QUALITATIVE = (14, 64)


def compute_bytes(device: str, precision: str, bits: int) -> float:
    """Bytes of a value a trial computes in (``qa_ray.training.precision``): on CUDA bf16 (or
    fp16) autocast unless ``precision`` is fp32; on CPU only 16-bit trials autocast (bf16)."""
    if device == "cpu":
        return 2.0 if bits == 16 else 4.0
    return 4.0 if precision == "fp32" else 2.0


@dataclass(frozen=True)
class Features:
    static_mb: float
    activation_mb: float
    params: float  # the student's parameters after layers kept and pruning
    trainable: float


def _shape_of(config: Mapping[str, Any], shapes: dict, path: str, field: str) -> ModelShape:
    lstm = field == "model.name_or_path" and _get(config, "model.architecture", "auto") != "auto"
    sizes = _get(config, "model.lstm", {}) if lstm else {}
    key = f"{path} lstm {sorted(sizes.items())}" if lstm else path  # its sizes make its shape
    if key not in shapes:
        try:
            shapes[key] = lstm_shape(path, sizes) if lstm else read_shape(path, field)
        except NotAccounted as exc:
            shapes[key] = exc
    found = shapes[key]
    if isinstance(found, NotAccounted):
        raise NotAccounted(str(found))
    return found


def _counts(s: ModelShape, layers: int | None, hk: float = 1.0, fk: float = 1.0) -> tuple:
    """(quantizable projection weights, other layer weights) of the stacks; ``layers`` kept of
    the first (``keep_layers`` keeps the first stack's, T5's encoder's)."""
    q = rest = 0.0
    for k, st in enumerate(s.stacks):
        n = 1 if st.shared else (layers if k == 0 and layers else st.layers)
        sq, srest = st.weights(hk, fk)
        q, rest = q + sq * n, rest + srest * n
    return q, rest


def _lora_params(s: ModelShape, r: int, targets: list[str] | None, layers: int | None) -> float:
    """peft's adapters: ``r * (d_in + d_out)`` on every projection a target names."""
    names = set(targets or s.lora_default)
    out = 0.0
    for k, st in enumerate(s.stacks):
        n = 1 if st.shared else (layers if k == 0 and layers else st.layers)
        out += n * sum(r * (lin.d_in + lin.d_out) for lin in st.linears if lin.name in names)
    return out


def features(
    config: Mapping[str, Any],
    shapes: dict[str, ModelShape | NotAccounted] | None = None,
    device: str = "cuda",
) -> Features:
    """The analytic account of a trial config dict on ``device`` (``"cuda"`` or ``"cpu"``; see
    the module docstring).

    ``shapes`` maps a model path to its shape, or to why the account does not cover it; a
    path missing there is read (its ``config.json``: a hub id's from the cache, or the hub)
    and added, so a sweep's model reads each model once.
    """
    shapes = {} if shapes is None else shapes
    s = _shape_of(config, shapes, _get(config, "model.name_or_path", ""), "model.name_or_path")
    task = _get(config, "model.task", "extractive")
    finetune = "full" if s.family == "lstm" else _get(config, "model.finetune", "full")
    bits = int(_get(config, "model.quantization_bits", 32))
    cb = compute_bytes(device, _get(config, "train.precision", "auto"), bits)
    layers = _get(config, "model.keep_layers", None)
    hk = 1.0 - float(_get(config, "model.prune.heads", 0.0))
    fk = 1.0 - float(_get(config, "model.prune.ffn", 0.0))
    quantizable, rest = _counts(s, layers, hk, fk)
    causal = task != "extractive"
    if s.family == "lstm":
        head = 0.0  # its start and end heads are among its layer weights
    else:
        head = (0.0 if s.tied else s.vocab * s.hidden) if causal else 2.0 * s.hidden + 2
    params = quantizable + rest + s.embeddings + head
    if finetune == "lora":
        lora = _lora_params(s, int(_get(config, "model.lora.r", 8)),
                            _get(config, "model.lora.target_modules", None), layers)  # fmt: skip
        # peft trains a copy of the span head (modules_to_save) beside the frozen original.
        span = 0.0 if causal else head
        trainable = lora + span
        params += span
        # Frozen weights as build_model stores them: 16 bits bf16, 32 bits fp32, and under
        # 4/8 bits the projections quantized and the rest in the compute dtype.
        frozen = {16: 2.0, 32: 4.0}.get(bits, cb)
        weights = quantizable * _QUANTIZED_BYTES.get(bits, frozen)
        weights += (rest + s.embeddings + head) * frozen + trainable * 4
    else:  # every weight trained: fp32 masters, whatever the bits (16: bf16 autocast)
        trainable = params
        weights = params * 4
    static = weights + trainable * (4 + 8)  # fp32 gradients + AdamW's two moments
    teacher = _get(config, "train.distill.teacher", None)
    t = None
    if teacher is not None and not str(teacher).startswith("sweep:"):
        t = _shape_of(config, shapes, str(teacher), "train.distill.teacher")
        static += (sum(_counts(t, None)) + t.embeddings) * 4

    b = int(_get(config, "train.per_device_batch_size", 16))
    eb = int(_get(config, "train.eval_batch_size", 64))
    seq = int(_get(config, "data.max_seq_length", 384))
    answer = int(_get(config, "data.max_answer_length", 30))
    checkpointing = bool(_get(config, "model.gradient_checkpointing", False))
    shape = _Sizes(s, layers, hk, fk, cb, seq, answer)
    train_act = shape.train(b, task, checkpointing)
    if t is not None:  # the teacher's forward under no_grad: one layer live at a time
        train_act += _Sizes(t, None, 1.0, 1.0, cb, seq, answer).forward(b, task)
    return Features(
        static_mb=static / MB,
        activation_mb=max(train_act, shape.evaluate(eb, task)) / MB,
        params=params,
        trainable=trainable,
    )


@dataclass(frozen=True)
class _Sizes:
    """What a model of shape ``s`` holds while it trains and evaluates, in bytes."""

    s: ModelShape
    layers: int | None
    hk: float
    fk: float
    cb: float  # bytes of a value in the compute dtype
    seq: int
    answer: int

    def _layer(self, st: Stack, batch: int, length: int) -> float:
        """What backward keeps of one layer for ``batch`` sequences of ``length`` tokens: about
        ``b*s*(10h + 2i)`` values (Korthikanti et al. 2022), SDPA's logsumexp (``b*a*s``,
        fp32), the attention maps an eager attention keeps, a T5 decoder's cross-attention keys
        and values of the source, and Mamba's scan over the sequence (transformers' torch
        path: its discretized A and B and every step's state, fp32, ``b*s*i*n`` each)."""
        s, tokens = self.s, batch * length
        values = st.keep[0] + st.keep[1] * self.fk
        heads = s.heads * self.hk
        c0, c1 = s.maps_per_layer
        out = tokens * values * self.cb + tokens * heads * 4 + batch * st.cross * self.seq * self.cb
        out += batch * heads * length * length * (c0 + c1 * self.cb)
        if s.state:
            out += tokens * s.intermediate * s.state * (12 + (self.cb if self.cb < 4 else 0))
        return out

    def _stacks(self, batch: int, source: int) -> Iterator[tuple[Stack, int, int, float]]:
        """Each stack, its layers, its sequence length and its b*a*s*s masks in bytes."""
        for k, st in enumerate(self.s.stacks):
            n = self.layers if k == 0 and self.layers else st.layers
            length = self.answer + 1 if st.decoder_side else source
            masks = 0 if st.decoder_side else self.s.maps_per_stack
            yield st, n, length, masks * batch * self.s.heads * self.hk * length**2 * self.cb

    def _logits(self, batch: int, task: str) -> float:
        """The logits and their gradient: the span head's two a token; a causal LM's at the
        answer tokens only (``logits_to_keep``), at most ``max_answer_length`` + EOS a row
        (generative) or half the sequence less Alpaca's prompt (instruction); T5's decoder's
        over the answer. Each a value in the compute dtype, its fp32 log-softmax and gradient."""
        if task == "extractive" or self.s.family == "lstm":
            return batch * self.seq * 2 * 4 * 2
        rows = {"instruction": max(1, (self.seq - _INSTRUCTION_PROMPT) // 2)}.get(
            task, min(self.answer + 1, self.seq)
        )
        return batch * rows * self.s.vocab * (self.cb + 8)

    def train(self, batch: int, task: str, checkpointing: bool) -> float:
        """Training's activations: every layer's, or with gradient checkpointing each layer's
        input and one layer's again."""
        out = self._logits(batch, task)
        for st, n, length, masks in self._stacks(batch, self.seq):
            layer = self._layer(st, batch, length)
            inputs = batch * length * self.s.hidden * self.cb * n
            out += masks + ((inputs + layer) if checkpointing else layer * n)
        return out

    def forward(self, batch: int, task: str) -> float:
        """A forward without gradients: one layer's values live at a time, and the logits."""
        out = self._logits(batch, task) / 2
        for st, _, length, masks in self._stacks(batch, self.seq):
            out += masks + self._layer(st, batch, length) / 2
        return out

    def _generate(self, batch: int, prompt: int) -> float:
        """Greedy generation (``generate``): the prompt's forward, one layer at a time, and the
        KV cache of every layer (Mamba: its small recurrent state), with the last position's
        logits in fp32."""
        s, new = self.s, self.answer
        out = batch * s.vocab * 4 * 2.0
        for st, n, length, masks in self._stacks(batch, prompt):
            out += masks + self._layer(st, batch, length) / 2
            if s.family == "seq2seq" and not st.decoder_side:  # the encoder's output
                out += batch * prompt * s.hidden * self.cb
            elif s.family == "mamba":  # a state and a convolution window a layer
                out += n * batch * s.intermediate * (s.state * 4 + 4 * self.cb)
            else:  # keys and values of prompt and answer (T5: the source's cross-attention's)
                out += 2 * s.kv_width * n * batch * (prompt + new) * self.cb
        return out

    def evaluate(self, batch: int, task: str) -> float:
        """An evaluation's peak: the span head's forward (extractive), greedy generation
        (generative, seq2seq), or the held-out loss and the qualitative answers (instruction)."""
        if task in ("generative", "seq2seq") and self.s.family != "lstm":
            return self._generate(batch, self.seq)
        if task == "instruction":
            return max(self.forward(batch, task), self._generate(*_QUALITATIVE))
        return self.forward(batch, task)


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
        f = features(config, self.shapes, self.device)
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
        f = features(config, self.shapes, self.device)
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
