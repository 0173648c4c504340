"""Seq2seq QA (T5 style) on SQuAD v1.1 / v2.0: ``question: ... context: ...`` -> answer.

Same module shape as :mod:`qa_ray.tasks.extractive`. The encoder reads the question and a
context window (around the answer when training, the context's beginning when evaluating: see
:func:`qa_ray.tasks.generative.context_window`); the decoder is trained on the first gold answer,
or ``data.no_answer_text`` for an unanswerable question, which is scored as the empty answer.
Evaluation decodes greedily up to ``data.max_answer_length`` tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from qa_ray.config import DataConfig
from qa_ray.data import QAExample, cached_features, gold_questions
from qa_ray.metrics import score
from qa_ray.tasks.extractive import EvalOutput
from qa_ray.tasks.generative import context_window, extract_answer, pad_rows

__all__ = ["AUTO_CLASS", "PROMPT", "collator", "eval_features", "evaluate", "train_features"]

AUTO_CLASS = "AutoModelForSeq2SeqLM"
PROMPT = "question: {question} context: {context}"
_IGNORE = -100
_MARGIN = 4


def _source(tokenizer, cfg: DataConfig, context: str, question: str, answer) -> list[int]:
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


def train_features(examples: Sequence[QAExample], tokenizer, cfg: DataConfig):
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


def eval_features(examples: Sequence[QAExample], tokenizer, cfg: DataConfig):
    """Encoder input ids, one per question, with ``example_id`` (cached)."""

    def build(batch):
        ids = [
            _source(tokenizer, cfg, context, question, None)
            for context, question in zip(batch["context"], batch["question"], strict=True)
        ]
        return {"input_ids": ids, "example_id": list(batch["id"])}

    return cached_features(examples, tokenizer, build, _key(cfg, "seq2seq-eval"), cfg.cache_dir)


def collator(tokenizer):
    """Right-pads encoder inputs (pad id, mask 0) and labels (-100)."""

    def collate(rows):
        return {
            "input_ids": pad_rows([r["input_ids"] for r in rows], tokenizer.pad_token_id, False),
            "attention_mask": pad_rows([r["attention_mask"] for r in rows], 0, False),
            "labels": pad_rows([r["labels"] for r in rows], _IGNORE, False),
        }

    return collate


@torch.no_grad()
def evaluate(model, examples, features, tokenizer, cfg: DataConfig, device, batch_size, autocast):
    """Greedy decoding for every question, answer extraction, official SQuAD scoring."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    columns = features[:]
    ids, example_ids = columns["input_ids"], columns["example_id"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    preds: dict[str, str] = {}
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        input_ids = pad_rows([ids[i] for i in chunk], tokenizer.pad_token_id, False).to(device)
        mask = pad_rows([[1] * len(ids[i]) for i in chunk], 0, False).to(device)
        with autocast():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=cfg.max_answer_length,
                do_sample=False,
            )
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            preds[example_ids[i]] = extract_answer(text, cfg.no_answer_text)
    report = score(gold_questions(examples), preds)
    if was_training:
        model.train()
    latency = 1000.0 * (time.perf_counter() - t0) / max(1, len(examples))
    return EvalOutput(preds, report.scores, latency)
