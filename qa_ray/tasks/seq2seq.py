"""Seq2seq QA (T5 style) on SQuAD v1.1 / v2.0: ``question: ... context: ...`` -> answer.

A task family (see :class:`qa_ray.tasks.TaskFamily`). The encoder reads the question and a
context window (around the answer when training, the context's beginning when evaluating: see
:func:`qa_ray.tasks.generative.context_window`); the decoder is trained on the first gold answer,
or ``data.no_answer_text`` for an unanswerable question, which is scored as the empty answer.
Evaluation decodes greedily up to ``data.max_answer_length`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from qa_ray.data.examples import QAExample
from qa_ray.data.features import cached_features
from qa_ray.data.squad import load_train_eval

# Same right-padded batches and the same greedy-decode-and-score evaluation as the causal task.
from qa_ray.tasks import FACTS
from qa_ray.tasks.generative import collator, context_window, evaluate

if TYPE_CHECKING:
    from datasets import Dataset

    from qa_ray.config.trial import DataConfig
    from qa_ray.tasks import Tokenizer

__all__ = [
    "AUTO_CLASS",
    "FRESH_HEADS",
    "PEFT_TASK_TYPE",
    "PROMPT",
    "QUALITATIVE_QUESTIONS",
    "SCORES",
    "collator",
    "eval_features",
    "evaluate",
    "load_train_eval",
    "loss",
    "outputs",
    "train_features",
]

AUTO_CLASS = "AutoModelForSeq2SeqLM"
PEFT_TASK_TYPE = "SEQ_2_SEQ_LM"
FRESH_HEADS: tuple[str, ...] = ()
QUALITATIVE_QUESTIONS = FACTS["seq2seq"].qualitative_questions
SCORES = FACTS["seq2seq"].scores
PROMPT = "question: {question} context: {context}"
_MARGIN = 4


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (the model shifts ``labels`` into decoder
    inputs; padded label positions are -100)."""
    return outputs(model, batch)[0]


def outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss, and the decoder's logits at the answer tokens (what a student matches)."""
    out = model(**batch)
    return out.loss, [out.logits[batch["labels"] != -100]]


def _source(
    tokenizer: Tokenizer,
    cfg: DataConfig,
    context: str,
    question: str,
    answer: tuple[int, int] | None,
) -> list[int]:
    question = question.strip()
    fixed = len(tokenizer(PROMPT.format(question=question, context="")).input_ids)
    budget = max(8, cfg.max_seq_length - fixed - _MARGIN)
    text = PROMPT.format(
        question=question, context=context_window(tokenizer, context, budget, answer)
    )
    return tokenizer(text, truncation=True, max_length=cfg.max_seq_length).input_ids


def _key(cfg: DataConfig, kind: str) -> dict:
    return {
        "kind": kind,
        "prompt": PROMPT,
        "max_seq_length": cfg.max_seq_length,
        "max_answer_length": cfg.max_answer_length,
        "no_answer_text": cfg.no_answer_text,
    }


def train_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """Encoder input ids and decoder labels (the answer and EOS), cached."""

    def build(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for i, question in enumerate(batch["question"]):
            answers = batch["answers"][i]
            span = None
            if answers:
                start = batch["answer_starts"][i][0]
                span = (start, start + len(answers[0]))
            source = _source(tokenizer, cfg, batch["context"][i], question, span)
            answer = answers[0].strip() if answers else cfg.no_answer_text
            target = tokenizer(
                text_target=answer, truncation=True, max_length=cfg.max_answer_length + 1
            ).input_ids
            if target[-1] != tokenizer.eos_token_id:
                target.append(tokenizer.eos_token_id)
            out["input_ids"].append(source)
            out["attention_mask"].append([1] * len(source))
            out["labels"].append(target)
        return out

    return cached_features(examples, tokenizer, build, _key(cfg, "seq2seq-train"), cfg.cache_dir)


def eval_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """Encoder input ids, one per question, with ``example_id`` (cached)."""

    def build(batch):
        ids = [
            _source(tokenizer, cfg, context, question, None)
            for context, question in zip(batch["context"], batch["question"], strict=True)
        ]
        return {"input_ids": ids, "example_id": list(batch["id"])}

    return cached_features(examples, tokenizer, build, _key(cfg, "seq2seq-eval"), cfg.cache_dir)
