"""Instruction tuning (Alpaca) with a causal LM: held-out loss and perplexity, plus answers.

A task family (see :class:`qa_ray.tasks.TaskFamily`) with its own data: ``{instruction, input,
output}`` records (Alpaca), not SQuAD questions, loaded and validated here.

A sequence is the Alpaca prompt (:data:`PROMPT_WITH_INPUT` or :data:`PROMPT_NO_INPUT`; labels
masked with -100) followed by the response and EOS, cut at ``data.max_seq_length`` tokens; a
record whose prompt alone fills that length has no response token left to learn and is dropped
(counted in the log). Evaluation reports the mean cross-entropy per response token over the
held-out records (``eval_loss``) and ``eval_perplexity = exp(eval_loss)``, and answers
:data:`QUALITATIVE_QUESTIONS` greedily (up to ``data.max_answer_length`` new tokens) so a team
can compare the trials' models side by side (see :mod:`qa_ray.tracking`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from qa_ray.data.examples import InstructionExample
from qa_ray.data.features import cached_features
from qa_ray.data.instructions import load_instruction_train_eval as load_train_eval
from qa_ray.tasks import FACTS, EvalOutput
from qa_ray.tasks.generative import collator, greedy_texts, loss, outputs

if TYPE_CHECKING:
    from datasets import Dataset

    from qa_ray.config.trial import DataConfig
    from qa_ray.tasks import Autocast, Model, Tokenizer

__all__ = [
    "AUTO_CLASS",
    "FRESH_HEADS",
    "PEFT_TASK_TYPE",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "QUALITATIVE_QUESTIONS",
    "SCORES",
    "answer",
    "collator",
    "eval_features",
    "evaluate",
    "load_train_eval",
    "loss",
    "outputs",
    "prompt",
    "train_features",
]

logger = logging.getLogger(__name__)

AUTO_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
FRESH_HEADS: tuple[str, ...] = ()
SCORES = FACTS["instruction"].scores
# The Stanford Alpaca templates.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
QUALITATIVE_QUESTIONS = FACTS["instruction"].qualitative_questions
_IGNORE = -100


def prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt for an instruction (and its optional input)."""
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction.strip(), input=input.strip())
    return PROMPT_NO_INPUT.format(instruction=instruction.strip())


def _key(cfg: DataConfig, kind: str) -> dict:
    return {
        "kind": kind,
        "prompt": [PROMPT_WITH_INPUT, PROMPT_NO_INPUT],
        "max_seq_length": cfg.max_seq_length,
    }


def train_features(
    examples: Sequence[InstructionExample], tokenizer: Tokenizer, cfg: DataConfig
) -> Dataset:
    """Prompt + response + EOS, cut at ``max_seq_length``, loss on the response only (cached)."""

    def build(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for instruction, inp, output in zip(
            batch["instruction"], batch["input"], batch["output"], strict=True
        ):
            ids = tokenizer(prompt(instruction, inp)).input_ids
            if len(ids) >= cfg.max_seq_length:
                continue  # no room for a single response token
            target = tokenizer(output.strip(), add_special_tokens=False).input_ids
            target = (target + [tokenizer.eos_token_id])[: cfg.max_seq_length - len(ids)]
            out["input_ids"].append(ids + target)
            out["attention_mask"].append([1] * (len(ids) + len(target)))
            out["labels"].append([_IGNORE] * len(ids) + target)
        return out

    feats = cached_features(examples, tokenizer, build, _key(cfg, "instruction"), cfg.cache_dir)
    if len(feats) < len(examples):
        logger.info(
            "instruction: %d of %d records dropped (prompt alone fills max_seq_length=%d)",
            len(examples) - len(feats),
            len(examples),
            cfg.max_seq_length,
        )
    if not len(feats):
        raise ValueError(
            f"`data.max_seq_length` = {cfg.max_seq_length}: every prompt fills it, so no record "
            "has a response token to learn or score; raise it"
        )
    return feats


def eval_features(
    examples: Sequence[InstructionExample], tokenizer: Tokenizer, cfg: DataConfig
) -> Dataset:
    """The held-out records as training sequences: their response tokens are scored."""
    return train_features(examples, tokenizer, cfg)


def answer(
    model: Model,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    max_new_tokens: int,
    device: torch.device,
    autocast: Autocast,
) -> list[str]:
    """Greedy answers to ``questions`` (as instructions without input), one batch."""
    rows = [tokenizer(prompt(q)).input_ids for q in questions]
    texts = greedy_texts(model, tokenizer, rows, max_new_tokens, device, autocast)
    return [t.strip() for t in texts]


@torch.no_grad()
def evaluate(
    model: Model,
    examples: Sequence[Any],
    features: Dataset,
    tokenizer: Tokenizer,
    cfg: DataConfig,
    device: torch.device,
    batch_size: int,
    autocast: Autocast,
) -> EvalOutput:
    """Held-out loss per response token and perplexity; answers to the qualitative questions.

    Returns:
        :class:`EvalOutput` with ``scores`` ``{"loss", "perplexity"}`` and ``predictions``
        ``{question: answer}`` for :data:`QUALITATIVE_QUESTIONS`.
    """
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    collate = collator(tokenizer)
    total, tokens = 0.0, 0
    for b in range(0, len(features), batch_size):
        batch = collate([features[i] for i in range(b, min(b + batch_size, len(features)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != _IGNORE).sum())
        with autocast():
            total += float(loss(model, batch)) * n  # token-weighted, not a mean of batch means
        tokens += n
    latency = 1000.0 * (time.perf_counter() - t0) / max(1, len(features))
    mean = total / max(1, tokens)
    answers = answer(
        model, tokenizer, QUALITATIVE_QUESTIONS, cfg.max_answer_length, device, autocast
    )
    if was_training:
        model.train()
    scores = {"loss": mean, "perplexity": math.exp(min(mean, 700.0))}
    return EvalOutput(dict(zip(QUALITATIVE_QUESTIONS, answers, strict=True)), scores, latency)
