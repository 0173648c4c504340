"""A trial's configuration: one pydantic model per block, validated once, every error together.

A trial file (``qa-ray train``) has the blocks ``model``, ``data``, ``train`` and ``resources``;
a sweep file (``qa-ray sweep``) adds ``search``, ``objectives`` and the sweep settings (see
:mod:`qa_ray.sweep.config`). Unknown keys are errors everywhere (``extra="forbid"``).

Longer than 500 lines because it is the whole trial schema, a block per concern and every field
with the description ``docs/configuration.md`` is generated from: split, a field's meaning
would sit apart from the validator that checks it against its neighbours.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from qa_ray import metrics as m
from qa_ray.pareto import Constraint, parse_constraint

__all__ = [
    "Block",
    "Budget",
    "DataConfig",
    "DistillConfig",
    "LoraConfig",
    "LstmConfig",
    "ModelConfig",
    "ResourcesConfig",
    "TrainConfig",
    "TrialConfig",
    "check_windows",
    "parse_constraints",
]


class Block(BaseModel):
    """The base of every config block: unknown keys are errors, values are frozen, defaults
    are validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LoraConfig(Block):
    """LoRA adapter settings (used when ``model.finetune == "lora"``)."""

    r: int = Field(8, gt=0, description="adapter rank")
    alpha: float | None = Field(
        None, gt=0, description="scaling alpha; default is 2 * r (alpha/r = 2)"
    )
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; default depends on the architecture"
    )


class LstmConfig(Block):
    """Sizes of the ``bilstm_attention`` baseline (see :mod:`qa_ray.models.lstm`)."""

    embedding_dim: int = Field(128, gt=0, description="ignored with embeddings_from")
    hidden_size: int = Field(128, gt=0, description="per direction")
    num_layers: int = Field(1, gt=0, description="of the encoder BiLSTM")
    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="on the embeddings and the LSTM outputs"
    )
    embeddings_from: str | None = Field(
        None,
        description="copy the input embeddings of this model (hub id or folder; its "
        "tokenizer must be the model's); default: random",
    )


class PruneConfig(Block):
    """Static pruning of attention heads and feed-forward units by importance measured on a
    few training batches before fine-tuning (see :mod:`qa_ray.models.pruning`)."""

    heads: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="fraction of all attention heads to remove, the least important across "
        "layers (at least one kept per layer)",
    )
    ffn: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="fraction of each layer's feed-forward units to remove, the least important",
    )
    batches: int = Field(8, gt=0, description="training batches the importance is measured on")


class ModelConfig(Block):
    """Which model, which task family, how it is fine-tuned and quantized."""

    name_or_path: str = Field(
        description="hub id (e.g. albert/albert-base-v2) or local folder; for "
        "architecture bilstm_attention, where its tokenizer comes from"
    )
    architecture: Literal["auto", "bilstm_attention"] = Field(
        "auto",
        description="auto: the checkpoint's own (transformers); bilstm_attention: an LSTM "
        "with BiDAF-style attention trained from scratch (extractive, full fine-tune only)",
    )
    lstm: LstmConfig = Field(
        LstmConfig(), description="the LSTM's sizes (architecture bilstm_attention only)"
    )
    task: Literal["extractive", "generative", "seq2seq", "instruction"] = Field(
        "extractive",
        description="extractive: a span head (AutoModelForQuestionAnswering); generative: a "
        "causal LM that writes the answer (AutoModelForCausalLM); seq2seq: an encoder-decoder "
        "such as T5 (AutoModelForSeq2SeqLM); instruction: a causal LM tuned on Alpaca-format "
        "instructions, scored by held-out loss / perplexity",
    )
    finetune: Literal["full", "lora"] = Field(
        "full", description="full: every weight trains; lora: adapters on a frozen base"
    )
    quantization_bits: Literal[4, 8, 16, 32] = Field(
        32,
        description="4 = NF4 QLoRA, 8 = LLM.int8 QLoRA (both need finetune=lora), "
        "16 = bf16 weights, 32 = fp32",
    )
    lora: LoraConfig = Field(LoraConfig(), description="the adapters (finetune lora only)")
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="sets every dropout probability in the model config (hidden, attention, "
        "classifier); null keeps the checkpoint's. 0 is about a third faster per step on CPU",
    )
    keep_layers: int | None = Field(
        None,
        gt=0,
        description="static pruning before fine-tuning: keep this many of the model's "
        "transformer layers, evenly spaced (every other one for half), drop the rest",
    )
    prune: PruneConfig | None = Field(
        None,
        description="static pruning before fine-tuning: attention heads and feed-forward "
        "units by measured importance (BERT-family encoders); composes with keep_layers, "
        "full fine-tune and LoRA",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, more time"
    )
    trust_remote_code: bool = Field(
        False, description="let transformers run the checkpoint's own modelling code"
    )

    @model_validator(mode="after")
    def _lstm_from_scratch(self) -> ModelConfig:
        if self.architecture != "bilstm_attention":
            return self
        wrong = [
            f"{k}={v}"
            for k, v in (
                ("task", self.task),
                ("finetune", self.finetune),
                ("quantization_bits", self.quantization_bits),
                ("keep_layers", self.keep_layers),
                ("prune", self.prune),
            )
            if (k, v)
            not in {
                ("task", "extractive"),
                ("finetune", "full"),
                ("quantization_bits", 32),
                ("quantization_bits", 16),
                ("keep_layers", None),
                ("prune", None),
            }  # fmt: skip
        ]
        if wrong:
            raise ValueError(
                "architecture bilstm_attention is trained from scratch for the extractive "
                "task: full fine-tune, 32 or 16 bits, no LoRA, k-bit or pruning, but "
                f"got ({', '.join(wrong)})"
            )
        return self

    @model_validator(mode="after")
    def _prune_full_precision(self) -> ModelConfig:
        if self.prune is not None and self.quantization_bits in (4, 8):
            raise ValueError(
                "`prune` slices the model's weights before fine-tuning: it needs 16 or 32-bit "
                f"weights, but got (quantization_bits={self.quantization_bits})"
            )
        return self

    @model_validator(mode="after")
    def _kbit_needs_lora(self) -> ModelConfig:
        if self.quantization_bits in (4, 8) and self.finetune != "lora":
            raise ValueError(
                f"`quantization_bits` in (4, 8) needs `finetune: lora` (QLoRA): a k-bit base "
                f"model cannot be fully fine-tuned, but got (quantization_bits="
                f"{self.quantization_bits}, finetune={self.finetune!r})"
            )
        return self


class DataConfig(Block):
    """Where the data come from and how they are split and tokenized: SQuAD-format questions,
    or Alpaca-format instructions for ``model.task: instruction``."""

    path: str = Field(
        description="hub dataset id (rajpurkar/squad, tatsu-lab/alpaca), or a local "
        "official-format SQuAD JSON (.json/.json.gz), a flat-schema JSON/JSONL file, or (task "
        "instruction) a JSON list / JSONL of {instruction, input, output} records"
    )
    split: str | None = Field(None, description="hub split for training (default: train)")
    eval_path: str | None = Field(
        None, description="eval data; when unset, `path` is split by article title"
    )
    eval_split: str | None = Field(None, description="hub split for eval (default: validation)")
    eval_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="articles held out (instruction: records held out)"
    )
    split_seed: int | None = Field(
        0, description="seed of the article shuffle; null holds out the last articles in order"
    )
    max_train_examples: int | None = Field(
        None, gt=0, description="train on the first N examples (questions or records)"
    )
    max_eval_examples: int | None = Field(
        None, gt=0, description="score the first N held-out examples"
    )
    max_seq_length: int = Field(
        384,
        ge=32,
        description="tokens per window (extractive), per prompt and answer (generative, "
        "instruction), per encoder input (seq2seq)",
    )
    drop_windows_missing_answer: bool = Field(
        False,
        description="train only on windows that hold the answer of an answerable question "
        "(unanswerable questions keep all their windows); fewer CLS labels per step",
    )
    doc_stride: int = Field(
        128, gt=0, description="extractive: tokens shared by consecutive windows of a context"
    )
    max_answer_length: int = Field(
        30,
        gt=0,
        description="answer tokens: longest span (extractive), new tokens (generative, seq2seq; "
        "instruction: for the qualitative answers)",
    )
    no_answer_text: str = Field(
        "unanswerable",
        min_length=1,
        description="generative: what the model learns to answer to an unanswerable question "
        "(scored as the empty answer)",
    )
    n_best_size: int = Field(
        20, gt=0, description="extractive: start and end candidates searched per window"
    )
    squad_v2: bool | None = Field(
        None,
        description="extractive: the empty answer may win (SQuAD 2.0 scoring); null decides "
        "from the data: true when any train or eval question is unanswerable",
    )
    cache_dir: str | None = Field(None, description="tokenized-feature cache (default ~/.cache)")


def _known_budget(text: str, info: ValidationInfo) -> str:
    # `model` is declared above `constraints`, so it is validated (or absent) by now.
    model = info.data.get("model")
    parse_constraints([text], model.task if model is not None else None)
    return text


# One budget of a `constraints` list, checked on its own: an error names `constraints[i]`.
Budget = Annotated[str, AfterValidator(_known_budget)]

TEACHER_FROM_SWEEP = "sweep:"


class DistillConfig(Block):
    """Knowledge distillation: the loss mixes the task loss with the KL divergence from the
    teacher's softened outputs, ``(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T)``
    (Hinton et al. 2015), over the logits the task family names (start/end for extractive,
    answer tokens for generative, seq2seq and instruction)."""

    teacher: str = Field(
        description="a local model folder of the same task and tokenizer (a fine-tuned "
        "model's folder, a trial's checkpoint), or `sweep:SWEEP/TRIAL`: the newest checkpoint "
        "of trial TRIAL of sweep SWEEP (its name or parent run id), looked up in MLflow"
    )
    alpha: float = Field(0.5, gt=0.0, le=1.0, description="the distillation term's weight")
    temperature: float = Field(2.0, gt=0.0, description="softens both distributions")

    @property
    def from_sweep(self) -> tuple[str, str] | None:
        """``(sweep, trial)`` for a ``sweep:SWEEP/TRIAL`` teacher, else None."""
        if not self.teacher.startswith(TEACHER_FROM_SWEEP):
            return None
        sweep, _, trial = self.teacher[len(TEACHER_FROM_SWEEP) :].rpartition("/")
        return sweep, trial

    @model_validator(mode="after")
    def _sweep_and_trial(self) -> DistillConfig:
        named = self.from_sweep
        if named is not None and not all(named):
            raise ValueError(
                f"`teacher` names a trial as `sweep:SWEEP/TRIAL` (e.g. "
                f"sweep:bert-base/trial-3f2a9c1d), but got {self.teacher!r}"
            )
        return self


class TrainConfig(Block):
    """Optimizer, schedule, batch and precision of one fine-tune."""

    learning_rate: float = Field(5e-5, gt=0.0, description="AdamW's peak learning rate")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW's decoupled weight decay")
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="linear warmup over this share of the steps"
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warmup over N optimizer steps (not with warmup_ratio)"
    )
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="the decay after warmup"
    )
    per_device_batch_size: int = Field(16, gt=0, description="examples per worker per micro-batch")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="micro-batches per optimizer step"
    )
    eval_batch_size: int = Field(64, gt=0, description="examples per evaluation batch")
    max_grad_norm: float | None = Field(
        1.0, gt=0.0, description="clip the gradient norm to this; null: no clipping"
    )
    num_epochs: float = Field(1.0, gt=0.0, description="passes over the training data")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    max_train_seconds: float | None = Field(
        None, gt=0.0, description="stop training after this wall time (a compute budget)"
    )
    eval_steps: int | None = Field(
        None, gt=0, description="evaluate every N optimizer steps (always at the end)"
    )
    eval_at_steps: list[int] = Field(
        default_factory=list,
        description="also evaluate at these optimizer steps (a sweep with MO-ASHA on steps "
        "sets its rungs here when eval_steps is unset)",
    )
    eval_on_start: bool = Field(
        False, description="also evaluate before the first step: the untrained baseline (step 0)"
    )
    distill: DistillConfig | None = Field(
        None, description="learn from a teacher's outputs too (knowledge distillation)"
    )
    progress_seconds: float = Field(
        15.0,
        ge=0.0,
        description="between evaluations, report step, loss and peak memory this often (the "
        "sweep's live line, the MLflow curves); 0: only at evaluations and checkpoints",
    )
    seed: int = Field(42, description="seeds initialisation, dropout and the data order")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when the worker sees a GPU, else cpu"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype on GPU (auto = bf16 where supported); on CPU only 16-bit "
        "trials autocast (bf16), the rest compute in fp32. Trained weights are always fp32",
    )
    checkpoints_to_keep: int = Field(1, ge=1, description="the newest N checkpoints are kept")
    save_checkpoints: bool = Field(
        True,
        description="checkpoint at every evaluation (and every checkpoint_steps / "
        "checkpoint_seconds): weights or adapter, optimizer, schedule, RNG and loop position, "
        "so a trial resumes where it stopped",
    )
    checkpoint_steps: int | None = Field(
        None, gt=0, description="also checkpoint every N optimizer steps between evaluations"
    )
    checkpoint_seconds: float | None = Field(
        None, gt=0.0, description="also checkpoint when this much wall time passed since the last"
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainConfig:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError(
                f"set `warmup_ratio` or `warmup_steps`, not both, but got "
                f"(warmup_ratio={self.warmup_ratio}, warmup_steps={self.warmup_steps})"
            )
        return self


class ResourcesConfig(Block):
    """Ray Train workers of one trial (``gpus_per_worker`` < 1 packs trials on a GPU)."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per worker")
    gpus_per_worker: float = Field(
        0.0,
        ge=0.0,
        description="GPUs Ray reserves per worker; 0.5 packs two trials on one GPU (a "
        "reservation, not a memory limit)",
    )
    max_failures: int = Field(
        2,
        ge=-1,
        description="worker-group restarts per trial after a lost worker (preemption, OOM "
        "kill); the trial resumes from its last checkpoint. -1: no limit",
    )
    pack_by_memory: bool = Field(
        False,
        description="sweeps on GPU nodes: each worker asks Ray for its predicted peak memory "
        "(plus `memory_margin`) of the nodes' `gpu_memory_mb` resource, and the matching "
        "fraction of a GPU, instead of `gpus_per_worker`, which stays the most it may take; "
        "each worker caps itself at what it asked for (see docs/memory.md#used-packing)",
    )
    memory_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="with `pack_by_memory`: the share added to the prediction's upper end "
        "(peak + 2 sd) when a worker asks for memory",
    )
    gpu_memory_mb: float | None = Field(
        None,
        gt=0.0,
        description="the GPU memory a worker may use, CUDA context included: it caps its "
        "allocator there (torch.cuda.set_per_process_memory_fraction), so its excess is its "
        "own out-of-memory and never a neighbour's; `pack_by_memory` sets it per trial; "
        "ignored on CPU",
    )

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> ResourcesConfig:
        g = self.gpus_per_worker
        if g > 1 and g != int(g):
            raise ValueError(
                f"`gpus_per_worker` above 1 must be a whole number, but got (gpus_per_worker={g})"
            )
        return self

    @model_validator(mode="after")
    def _packing_needs_gpus(self) -> ResourcesConfig:
        if self.pack_by_memory and self.gpus_per_worker <= 0:
            raise ValueError(
                "`pack_by_memory` packs trials on GPUs: set `gpus_per_worker` (the most a "
                f"worker may take, e.g. 1), but got (gpus_per_worker={self.gpus_per_worker})"
            )
        if self.pack_by_memory and (self.num_workers > 1 or self.gpus_per_worker > 1):
            # Two packed ranks of one trial could share a GPU (NCCL refuses that), and a
            # share over one GPU is no share.
            raise ValueError(
                "`pack_by_memory` packs one-worker trials of at most one GPU each, but got "
                f"(num_workers={self.num_workers}, gpus_per_worker={self.gpus_per_worker})"
            )
        return self


class TrialConfig(Block):
    """One fine-tune: what ``qa-ray train`` runs and what every sweep trial runs."""

    name: str = Field(
        "qa-ray-train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the run's name"
    )
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    output_dir: str = Field("outputs", description="where `qa-ray train` writes its results")
    constraints: list[Budget] = Field(
        default_factory=list,
        description="budgets, e.g. 'peak_memory_mb <= 22000': a trial that breaks one on a "
        "metric that only grows (peak memory, footprint, parameters) stops at that "
        "measurement, reported infeasible",
    )

    @model_validator(mode="after")
    def _windows_overlap(self) -> TrialConfig:
        check_windows(self.model, self.data)
        return self

    @model_validator(mode="after")
    def _sixteen_bits_compute_in_sixteen(self) -> TrialConfig:
        check_precision(self.model, self.train)
        return self


def parse_constraints(texts: list[str], task: str | None) -> list[Constraint]:
    """Parses ``metric <= number`` budgets on metrics the task reports (any metric when
    ``task`` is None: a config whose task is itself invalid).

    Raises:
        ValueError: every malformed constraint and every metric the task never reports.
    """
    from qa_ray.tasks import FACTS

    reported = [k for k in m.OBJECTIVES if not k.startswith("eval_") or k == m.EVAL_LATENCY_MS]
    reported += [m.eval_key(s) for s in FACTS[task].scores] if task in FACTS else []
    out, errors = [], []
    for text in texts:
        try:
            c = parse_constraint(text)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if task in FACTS and c.metric not in reported:
            errors.append(
                f"task {task!r} never reports {c.metric!r} (it reports {reported}), but got "
                f"{text!r}"
            )
        out.append(c)
    if errors:
        raise ValueError("; ".join(errors))
    return out


def check_precision(model: ModelConfig, train: TrainConfig) -> None:
    """16-bit weights need 16-bit compute: ``precision: fp32`` cannot hold with them."""
    if model.quantization_bits == 16 and train.precision == "fp32":
        raise ValueError(
            "`train.precision`: 16-bit weights compute in 16 bits (bf16 autocast), so "
            "precision fp32 cannot hold with them, but got (quantization_bits=16, "
            "precision='fp32'); use quantization_bits 32 for fp32"
        )


def check_windows(model: ModelConfig, data: DataConfig) -> None:
    """Extractive windows step by ``doc_stride``: it must stay under half a window."""
    if model.task == "extractive" and data.doc_stride >= data.max_seq_length // 2:
        raise ValueError(
            f"`data.doc_stride`: `doc_stride < max_seq_length / 2` must hold for extractive "
            f"windows, but got (doc_stride={data.doc_stride}, "
            f"max_seq_length={data.max_seq_length})"
        )
