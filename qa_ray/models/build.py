"""Model builders: tokenizer, quantization (bitsandbytes), LoRA (peft), size accounting.

``quantization_bits`` maps to: 4 = NF4 with double quantization (QLoRA), 8 = LLM.int8 (QLoRA),
16 = bf16 weights, 32 = fp32 weights. What is trained is always fp32: a full fine-tune at 16
bits keeps fp32 master weights and computes in bf16 under autocast (as ``Trainer(bf16=True)``
does; bf16 weights updated in place lose most small updates to rounding), so 16-bit storage is
for the frozen base weights under LoRA. Frozen weights that are not quantized (embeddings, norms,
LM head) are stored in the trial's compute dtype; only the trained parameters (adapters, the
task's fresh heads) are kept in fp32. A fresh task head (e.g. ``qa_outputs``) is never quantized
and stays trainable under LoRA.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from qa_ray.config.trial import ModelConfig
from qa_ray.models import pruning
from qa_ray.tasks import TASKS

__all__ = [
    "ModelSize",
    "build_model",
    "build_tokenizer",
    "model_size",
    "quantization_config",
    "require_bitsandbytes",
]

logger = logging.getLogger(__name__)

# Architectures peft has no LoRA default for; peft's own mapping covers the rest.
_EXTRA_LORA_TARGETS = {
    "albert": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    # peft refuses out_proj and conv1d on Mamba; dt_proj's weight is read directly (no forward)
    "mamba": ["in_proj", "x_proj"],
}
_KBIT_LAYERS = ("Linear4bit", "Linear8bitLt")
# Linear layers whose weight the architecture reads directly (not through forward): a k-bit
# weight there breaks the maths, so they stay in full precision.
_KBIT_KEEP = {"mamba": ["dt_proj"]}
# Projections that subclass torch.nn.Linear without changing its maths (FalconLinear computes
# x @ W.T + b). transformers 5 swaps only exact nn.Linear for bitsandbytes layers (4.x took
# subclasses too), so while a k-bit model of these types is built the name means nn.Linear.
_PLAIN_LINEAR_SUBCLASSES = {
    "falcon": ("transformers.models.falcon.modeling_falcon", "FalconLinear"),
}


def require_bitsandbytes() -> None:
    """Fails with an actionable message when k-bit quantization is asked for without bnb."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:  # pragma: no cover - bnb is a core dependency
        raise ImportError(
            "quantization_bits 4/8 needs bitsandbytes: pip install 'bitsandbytes>=0.50,<0.51'"
        ) from exc


def build_tokenizer(cfg: ModelConfig):
    """Loads the fast tokenizer of ``cfg.name_or_path``; gives it a pad token if it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        cfg.name_or_path, use_fast=True, trust_remote_code=cfg.trust_remote_code
    )
    if not tok.is_fast:
        raise ValueError(
            f"`model.name_or_path` = {cfg.name_or_path!r} has no fast tokenizer; offset "
            "mapping (answer spans) needs one"
        )
    if tok.pad_token is None:  # decoder-only models (Llama) ship without one
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def quantization_config(cfg: ModelConfig, compute_dtype: torch.dtype, model_type: str):
    """bitsandbytes settings for a k-bit model; 4-bit layers compute in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    # None keeps transformers' default (the output embedding, e.g. lm_head, stays unquantized).
    skip = list(TASKS[cfg.task].FRESH_HEADS) or None
    if model_type in _KBIT_KEEP:
        skip = (skip or ["lm_head"]) + _KBIT_KEEP[model_type]
    if cfg.quantization_bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def build_model(
    cfg: ModelConfig,
    device: torch.device,
    compute_dtype: torch.dtype = torch.float32,
    *,
    prune_losses: Callable[[torch.nn.Module], Iterable[torch.Tensor]] | None = None,
    prune_plan: dict[str, list[list[int]]] | None = None,
    frozen: bool = False,
):
    """Builds the model for ``cfg.task`` with the asked quantization and LoRA adapters.

    Args:
        cfg: the validated model block.
        device: where the model will train; k-bit weights are placed there at load time.
        compute_dtype: what the trial computes in (its autocast dtype, fp32 without): the
            compute dtype of 4-bit layers and the storage of frozen non-quantized weights of a
            k-bit model.
        prune_losses: with ``cfg.prune``: the training loss of ``cfg.prune.batches`` batches
            for a model, where head and unit importance is measured (before LoRA).
        prune_plan: with ``cfg.prune``: the heads and units to keep, as a resumed trial's
            checkpoint recorded them (nothing is measured).
        frozen: a model nothing trains (a distillation teacher): no fp32 masters, so at 16
            bits every weight is stored in ``compute_dtype``, and no parameter needs a grad.

    Returns:
        The model, on ``device``, LoRA-wrapped when ``cfg.finetune == "lora"``.
    """
    import transformers

    if cfg.architecture == "bilstm_attention":
        return _build_bilstm(cfg, device)
    auto_class = getattr(transformers, TASKS[cfg.task].AUTO_CLASS)
    kwargs: dict = {"trust_remote_code": cfg.trust_remote_code}
    kbit = cfg.quantization_bits in (4, 8)
    if kbit:
        require_bitsandbytes()
        model_type = _model_type(cfg)
        kwargs["quantization_config"] = quantization_config(cfg, compute_dtype, model_type)
        kwargs["device_map"] = {"": device}
        kwargs["dtype"] = compute_dtype
    elif cfg.quantization_bits == 16 and frozen:
        kwargs["dtype"] = compute_dtype  # nothing trained, so no fp32 master weights
    elif cfg.quantization_bits == 16 and cfg.finetune == "lora":
        kwargs["dtype"] = torch.bfloat16  # frozen base weights; adapters and heads fp32 below
    else:
        kwargs["dtype"] = torch.float32  # trained weights: fp32 masters (16-bit: bf16 autocast)
    if cfg.dropout is not None:
        kwargs["config"] = _with_dropout(cfg)
    stored = pruning.stored_plan(cfg.name_or_path)
    if stored is not None and kbit:
        raise ValueError(
            f"`model.name_or_path` = {cfg.name_or_path!r} was pruned (config.json "
            f"{pruning.PLAN_KEY}): it loads in 16 or 32 bits, not {cfg.quantization_bits}"
        )
    if stored is not None:
        model = _load_pruned(auto_class, cfg.name_or_path, stored, kwargs)
    else:
        with _plain_linears(model_type) if kbit else contextlib.nullcontext():
            model = auto_class.from_pretrained(cfg.name_or_path, **kwargs)
    if kbit and not any(type(m).__name__ in _KBIT_LAYERS for m in model.modules()):
        # transformers swaps only exact torch.nn.Linear (and GPT-2's Conv1D) for bitsandbytes
        # layers: other subclasses (see _PLAIN_LINEAR_SUBCLASSES) stay full precision, silently.
        raise ValueError(
            f"`model.quantization_bits` = {cfg.quantization_bits}: bitsandbytes quantized no "
            f"layer of {cfg.name_or_path!r} (model_type {model.config.model_type!r}; its "
            "projections are not plain torch.nn.Linear). Use quantization_bits 16 or 32."
        )
    if cfg.keep_layers is not None:
        kept = keep_layers(model, cfg.keep_layers)
        logger.info("kept layers %s of %s (model.keep_layers)", kept, cfg.name_or_path)
    if cfg.prune is not None and prune_plan is not None:
        pruning.apply_plan(model, prune_plan)
    elif cfg.prune is not None:
        if prune_losses is None:
            raise ValueError("`model.prune` measures importance on training batches: none given")
        model.to(device)
        done = pruning.prune(model, cfg.prune.heads, cfg.prune.ffn, prune_losses)
        logger.info(
            "pruned by importance on %d batches (model.prune): heads %d -> %d, feed-forward "
            "units %d -> %d, parameters %d -> %d (%.1f%% fewer)",
            cfg.prune.batches,
            *done["heads"],
            *done["ffn_units"],
            *done["params"],
            100 * done["removed_fraction"],
        )
    if cfg.quantization_bits == 8:
        _clone_int8_outputs(model)
    if cfg.quantization_bits == 4:
        _keep_4bit_layout(model)
    if not kbit:
        model.to(device)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)

    if kbit or frozen:
        # What peft's prepare_model_for_kbit_training does, less its upcast of every
        # non-quantized weight to fp32 (for Llama-3.2-1B about 1 GB more than its 16-bit
        # trials, all of it frozen): what is trained is made fp32 below, the rest stays.
        for p in model.parameters():
            p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if kbit or cfg.finetune == "lora":
            model.enable_input_require_grads()

    if cfg.finetune == "lora":
        model = _add_lora(model, cfg)
    _trained_in_fp32(model)
    return model


def _load_pruned(auto_class, path: str, plan: dict, kwargs: dict) -> torch.nn.Module:
    """A checkpoint qa-ray pruned: its weights have the kept heads' and units' shapes, which
    ``from_pretrained`` refuses; built from its config, sliced to its plan, then loaded."""
    from transformers import AutoConfig

    config = kwargs.get("config") or AutoConfig.from_pretrained(
        path, trust_remote_code=kwargs["trust_remote_code"]
    )
    model = auto_class.from_config(
        config, dtype=kwargs["dtype"], trust_remote_code=kwargs["trust_remote_code"]
    )
    pruning.apply_plan(model, plan)
    load_weights(model, Path(path))
    return model


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Loads the full-model weights ``save_pretrained`` wrote to ``path`` (one file or
    shards) into ``model``, strictly but for weights tied to another.

    Raises:
        ValueError: the weights do not match the model.
    """
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    shards = (
        sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.is_file()
        else [path / "model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained leaves out weights tied to another (e.g. the LM head to the embeddings)
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(
            f"{path}: checkpoint does not match the model (missing {untied[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def _build_bilstm(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    """The from-scratch LSTM baseline, sized for the tokenizer at ``cfg.name_or_path``."""
    from qa_ray.models.lstm import BiLSTMAttentionConfig, BiLSTMAttentionForQuestionAnswering

    tok = build_tokenizer(cfg)
    lstm = cfg.lstm
    pretrained = None
    if lstm.embeddings_from:
        from transformers import AutoModel

        pretrained = AutoModel.from_pretrained(lstm.embeddings_from).get_input_embeddings().weight
        if pretrained.shape[0] < len(tok):
            raise ValueError(
                f"`model.lstm.embeddings_from` = {lstm.embeddings_from!r} has "
                f"{pretrained.shape[0]} embeddings, the tokenizer {len(tok)} tokens"
            )
    config = BiLSTMAttentionConfig(
        vocab_size=len(tok),
        embedding_dim=pretrained.shape[1] if pretrained is not None else lstm.embedding_dim,
        hidden_size=lstm.hidden_size,
        num_layers=lstm.num_layers,
        dropout=cfg.dropout if cfg.dropout is not None else lstm.dropout,
        pad_token_id=tok.pad_token_id,
    )
    model = BiLSTMAttentionForQuestionAnswering(config)
    if pretrained is not None:
        with torch.no_grad():
            model.embeddings.weight.copy_(pretrained[: len(tok)])
    return model.to(device)


def keep_layers(model: torch.nn.Module, keep: int) -> list[int]:
    """Drops all but ``keep`` of the model's transformer layers, evenly spaced from the first
    (``range(0, n, n / keep)``: every other layer for half, as DistilBERT's student starts);
    returns the kept indices. The stack is the first ``ModuleList`` as long as the config's
    ``num_hidden_layers``; layers that index a KV cache get their new index. ALBERT, whose
    layers share one set of weights, runs its shared layer ``keep`` times.

    Raises:
        ValueError: ``keep`` is above the model's layer count, or no layer stack is found.
    """
    config = model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not n or keep > n:
        raise ValueError(
            f"`model.keep_layers` = {keep}: the model has {n} layers (model_type "
            f"{config.model_type!r})"
        )
    kept = [int(i * n / keep) for i in range(keep)]
    stacks = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n
    ]
    if stacks:
        name, stack = stacks[0]
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        layers = torch.nn.ModuleList(stack[i] for i in kept)
        for new, layer in enumerate(layers):
            for sub in layer.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = new
        setattr(parent, name.rsplit(".", 1)[-1], layers)
    elif config.model_type != "albert":
        raise ValueError(
            f"`model.keep_layers`: no stack of {n} layers found in model_type {config.model_type!r}"
        )
    for attr in ("num_hidden_layers", "num_layers"):
        if getattr(config, attr, None) == n:
            setattr(config, attr, keep)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n:
        config.layer_types = [config.layer_types[i] for i in kept]
    return kept


def _trained_in_fp32(model) -> None:
    """Trained parameters (adapters, fresh heads, full fine-tune weights) in fp32; logs what
    that keeps in fp32 and what stays in a lower precision."""
    kept = frozen_low = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
        if p.requires_grad:
            kept += p.numel()
        elif p.dtype in (torch.bfloat16, torch.float16):
            frozen_low += p.numel()
    logger.info(
        "fp32: %d trained parameters (%.1f MB); %d frozen parameters in 16 bits",
        kept,
        kept * 4 / 2**20,
        frozen_low,
    )


def _clone_output(module, inputs, output):
    return output.clone()


def _clone_int8_outputs(model) -> None:
    """Makes every 8-bit layer's output an ordinary tensor.

    bitsandbytes 0.50's 8-bit matmul returns a view made inside its autograd Function (a reshape
    of its 2-D result on GPU, ``F.linear`` of a 3-D input on CPU), and autograd forbids changing
    such a view in place: an architecture that adds to a projection's output in place (Falcon:
    ``mlp_output += attention_output``) fails. The copy costs one layer's output at a time (the
    Function keeps no reference to the original, which is freed at once).
    """
    for module in model.modules():
        if type(module).__name__ == "Linear8bitLt":
            module.register_forward_hook(_clone_output)


def _keep_4bit_layout(model) -> None:
    """Keeps every 4-bit layer in its training layout, in eval mode too.

    On a CPU with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit.forward`` repacks its weight in
    place into an inference-only layout (``_convert_weight_packed_for_cpu``) the first time it
    runs in eval mode on an input without grad, i.e. at a trial's first evaluation. A trial then
    trains on a weight whose matmul has no backward (LoRA below that layer stops learning), its
    evaluation computes in bf16 instead of the trial's compute dtype, and layers narrower than
    one quantization block (64 inputs) fail to repack at all. A trial alternates training and
    evaluation, so the layout never changes: evaluation runs the same maths as training.
    """
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _model_type(cfg: ModelConfig) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        cfg.name_or_path, trust_remote_code=cfg.trust_remote_code
    ).model_type


@contextlib.contextmanager
def _plain_linears(model_type: str):
    """While loading: the architecture's plain nn.Linear subclass is nn.Linear, so bitsandbytes
    quantizes those projections as it does every other model's."""
    spec = _PLAIN_LINEAR_SUBCLASSES.get(model_type)
    if spec is None:
        yield
        return
    module = importlib.import_module(spec[0])
    original = getattr(module, spec[1])
    setattr(module, spec[1], torch.nn.Linear)
    logger.info("%s: %s built as torch.nn.Linear so bitsandbytes quantizes it", model_type, spec[1])
    try:
        yield
    finally:
        setattr(module, spec[1], original)


def _is_dropout_field(name: str) -> bool:
    return "dropout" in name or name.endswith("_pdrop")


def _with_dropout(cfg: ModelConfig):
    """The checkpoint's config with every dropout probability set to ``cfg.dropout``.

    Names differ per architecture (``hidden_dropout_prob`` and ``attention_probs_dropout_prob``
    in BERT/ALBERT, ``attention_dropout`` in Llama, ``dropout_rate`` in T5, ``*_pdrop`` in GPT-2),
    so every float field named like one is set; fields that are unset (``None``) stay unset.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    changed = []
    for name, value in config.to_dict().items():
        if _is_dropout_field(name) and isinstance(value, float):
            setattr(config, name, cfg.dropout)
            changed.append(name)
    if not changed:
        logger.warning("model.dropout=%s: %s has no dropout fields", cfg.dropout, cfg.name_or_path)
    else:
        logger.info("dropout %s -> %s", cfg.dropout, ", ".join(changed))
    return config


def _add_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    model_type = model.config.model_type
    targets = cfg.lora.target_modules or _EXTRA_LORA_TARGETS.get(model_type)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha if cfg.lora.alpha is not None else 2 * cfg.lora.r,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        task_type=TASKS[cfg.task].PEFT_TASK_TYPE,  # peft keeps the task's head trainable
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ValueError(
            f"LoRA could not be applied to model_type {model_type!r}: {exc}. Set "
            "`model.lora.target_modules` to the names of its attention projections."
        ) from None


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts and the bytes the weights (and buffers) take in memory."""

    total_params: int
    trainable_params: int
    footprint_bytes: int

    @property
    def footprint_mb(self) -> float:
        return self.footprint_bytes / 2**20


def model_size(model) -> ModelSize:
    """Counts parameters and measures the weight footprint (``get_memory_footprint``).

    4-bit weights are stored two per byte, so their ``numel`` is half the logical parameter
    count; the total counts logical parameters.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSize(total, trainable, int(base.get_memory_footprint()))
