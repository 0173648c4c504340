"""Extractive QA (SQuAD v1.1 / v2.0): span labels from offsets, n-best post-processing, EM/F1.

A task family (see :class:`qa_ray.tasks.TaskFamily`): a span head on an encoder (BERT, ALBERT,
MiniLM) or a decoder (Llama).

Windows: a long context is cut into windows of ``max_seq_length`` tokens that overlap by
``doc_stride`` tokens (question first, then the context window). A training window whose
context does not hold the whole answer, like every window of an unanswerable question, is
labelled with the no-answer position, unless ``data.drop_windows_missing_answer`` drops such
windows of answerable questions from training.

The no-answer position is the first token (CLS) when the tokenizer starts sequences with a CLS
token (encoders, whose attention sees the whole window from there), else the window's last
token: a decoder's causal attention lets only the last position see the question and context.
That last token is one appended to every window (EOS, within ``max_seq_length``), never a
context token, so an answer ending at the window's last context token is not confused with
"no answer" (in the labels or at evaluation).
Sequences are always right-padded, so positions index the same tokens in every batch.
Whether the empty answer may win at evaluation (SQuAD 2.0) is ``data.squad_v2``, or, unset,
whether the dataset (train or eval) has an unanswerable question.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qa_ray.data.examples import QAExample
from qa_ray.data.features import cached_features
from qa_ray.data.squad import gold_questions, load_train_eval
from qa_ray.scoring.squad import score
from qa_ray.tasks import FACTS, EvalOutput

if TYPE_CHECKING:
    from datasets import Dataset

    from qa_ray.config.trial import DataConfig
    from qa_ray.tasks import Autocast, Collate, Model, Tokenizer

__all__ = [
    "AUTO_CLASS",
    "FRESH_HEADS",
    "PEFT_TASK_TYPE",
    "QUALITATIVE_QUESTIONS",
    "SCORES",
    "collator",
    "eval_features",
    "evaluate",
    "load_train_eval",
    "loss",
    "outputs",
    "no_answer_last",
    "postprocess",
    "postprocess_with_null_odds",
    "train_features",
]

AUTO_CLASS = "AutoModelForQuestionAnswering"
PEFT_TASK_TYPE = "QUESTION_ANS"
FRESH_HEADS = ("qa_outputs",)
QUALITATIVE_QUESTIONS = FACTS["extractive"].qualitative_questions
SCORES = FACTS["extractive"].scores


def no_answer_last(tokenizer: Tokenizer) -> bool:
    """True when the no-answer position is a window's last token (no leading CLS token)."""
    return tokenizer.cls_token_id is None


def outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The span loss the model computes from ``start_positions`` / ``end_positions``, and the
    start and end logits (rows: windows, columns: positions) a distilling student matches."""
    out = model(**batch)
    return out.loss, [out.start_logits, out.end_logits]


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The span loss the model computes from ``start_positions`` / ``end_positions``."""
    return outputs(model, batch)[0]


def _tokenize(tokenizer: Tokenizer, batch: dict[str, list], cfg: DataConfig) -> Any:
    # without a CLS token, one position is kept for the no-answer token (_append_null_token)
    reserve = 1 if no_answer_last(tokenizer) else 0
    return tokenizer(
        [q.lstrip() for q in batch["question"]],
        batch["context"],
        truncation="only_second",
        max_length=cfg.max_seq_length - reserve,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
        padding_side="right",
    )


def _null_token_id(tokenizer: Tokenizer) -> int:
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("a span head without a CLS token needs an EOS, SEP or pad token")


def _append_null_token(enc: Any, tokenizer: Tokenizer) -> None:
    """Ends every window with the no-answer token (no CLS token: the window's last position,
    outside the context: no offset, not a span start or end)."""
    null = _null_token_id(tokenizer)
    for i in range(len(enc["input_ids"])):
        enc["input_ids"][i] = [*enc["input_ids"][i], null]
        enc["attention_mask"][i] = [*enc["attention_mask"][i], 1]
        if "token_type_ids" in enc:
            enc["token_type_ids"][i] = [*enc["token_type_ids"][i], 0]
        enc["offset_mapping"][i] = [*enc["offset_mapping"][i], None]


def _key(cfg: DataConfig, kind: str, **extra: Any) -> dict:
    return {
        "kind": kind,
        "max_seq_length": cfg.max_seq_length,
        "doc_stride": cfg.doc_stride,
        **extra,
    }


def train_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """Training windows with ``start_positions``/``end_positions`` token labels (cached)."""
    last = no_answer_last(tokenizer)

    def build(batch):
        enc = _tokenize(tokenizer, batch, cfg)
        sample_map = enc.pop("overflow_to_sample_mapping")
        starts, ends, keep = [], [], []
        for i, offsets in enumerate(enc["offset_mapping"]):
            ex = sample_map[i]
            seq_ids = enc.sequence_ids(i)
            answers = batch["answers"][ex]
            no_answer = len(offsets) if last else 0  # the appended token (see below)
            if not answers:  # unanswerable
                starts.append(no_answer)
                ends.append(no_answer)
                keep.append(i)
                continue
            start_char = batch["answer_starts"][ex][0]
            end_char = start_char + len(answers[0])
            ctx_first = seq_ids.index(1)
            ctx_last = len(seq_ids) - 1 - seq_ids[::-1].index(1)
            if offsets[ctx_first][0] > start_char or offsets[ctx_last][1] < end_char:
                if not cfg.drop_windows_missing_answer:
                    starts.append(no_answer)  # this window misses (part of) the answer
                    ends.append(no_answer)
                    keep.append(i)
                continue
            s = ctx_first
            while s <= ctx_last and offsets[s][1] <= start_char:
                s += 1
            e = ctx_last
            while e >= ctx_first and offsets[e][0] >= end_char:
                e -= 1
            starts.append(s)
            ends.append(e)
            keep.append(i)
        if last:
            _append_null_token(enc, tokenizer)
        enc.pop("offset_mapping")
        out = {k: [v[i] for i in keep] for k, v in enc.items()}
        out["start_positions"] = starts
        out["end_positions"] = ends
        return out

    key = _key(cfg, "extractive-train", drop_missing=cfg.drop_windows_missing_answer)
    return cached_features(examples, tokenizer, build, key, cfg.cache_dir)


def eval_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """Evaluation windows with ``example_id`` and context-only ``offset_mapping`` (cached)."""

    def build(batch):
        enc = _tokenize(tokenizer, batch, cfg)
        sample_map = enc.pop("overflow_to_sample_mapping")
        enc["example_id"] = [batch["id"][s] for s in sample_map]
        enc["offset_mapping"] = [
            [o if sid == 1 else None for o, sid in zip(offsets, enc.sequence_ids(i), strict=True)]
            for i, offsets in enumerate(enc["offset_mapping"])
        ]
        if no_answer_last(tokenizer):
            _append_null_token(enc, tokenizer)
        return enc

    return cached_features(examples, tokenizer, build, _key(cfg, "extractive-eval"), cfg.cache_dir)


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def collator(tokenizer: Tokenizer) -> Collate:
    """Right-pads a batch of features to its longest window (dynamic padding), whatever the
    tokenizer's own padding side: the span labels and the no-answer position count from the
    left."""

    def collate(rows):
        keep = [
            {k: v for k, v in r.items() if k in _MODEL_INPUTS or k.endswith("_positions")}
            for r in rows
        ]
        return tokenizer.pad(keep, padding="longest", return_tensors="pt", padding_side="right")

    return collate


def postprocess(
    examples: Sequence[QAExample],
    features: Dataset,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best_size: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    null_last: bool = False,
) -> dict[str, str]:
    """Turns window logits into one answer text per question.

    For each question the best span over all of its windows wins (start + end logit, end not
    before start, at most ``max_answer_length`` tokens, inside the context). With
    ``allow_no_answer`` (SQuAD 2.0) the empty answer wins when the lowest no-answer score of
    the question's windows (start + end logit at the no-answer position: the first token, or
    the last with ``null_last``) beats the best span.
    """
    return postprocess_with_null_odds(
        examples, features, start_logits, end_logits, n_best_size, max_answer_length,
        allow_no_answer, null_last,
    )[0]  # fmt: skip


def postprocess_with_null_odds(
    examples: Sequence[QAExample],
    features: Dataset,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best_size: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    null_last: bool = False,
) -> tuple[dict[str, str], dict[str, float]]:
    """:func:`postprocess`'s answers, and each question's null odds: its no-answer score
    minus its best span's (``inf`` without a valid span), the no-answer probability the
    official v2.0 script's best threshold is searched over (as BERT's ``null_odds.json``).
    The empty answer wins exactly where the odds exceed 0."""
    by_example = collections.defaultdict(list)
    for i, ex_id in enumerate(features["example_id"]):
        by_example[ex_id].append(i)
    offsets_all = features["offset_mapping"]
    predictions: dict[str, str] = {}
    null_odds: dict[str, float] = {}
    for ex in examples:
        best_text, best_score = "", -np.inf
        null_score = np.inf
        for i in by_example.get(ex.id, ()):
            s_log, e_log, offsets = start_logits[i], end_logits[i], offsets_all[i]
            null = len(s_log) - 1 if null_last else 0
            null_score = min(null_score, float(s_log[null] + e_log[null]))
            top_s = np.argsort(s_log)[::-1][:n_best_size]
            top_e = np.argsort(e_log)[::-1][:n_best_size]
            for s in top_s:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in top_e:
                    if (
                        e >= len(offsets)
                        or offsets[e] is None
                        or e < s
                        or e - s + 1 > max_answer_length
                    ):
                        continue
                    sc = float(s_log[s] + e_log[e])
                    if sc > best_score:
                        best_score = sc
                        best_text = ex.context[offsets[s][0] : offsets[e][1]]
        null_odds[ex.id] = null_score - best_score if best_score > -np.inf else np.inf
        if allow_no_answer and null_score > best_score:
            best_text = ""
        predictions[ex.id] = best_text
    return predictions, null_odds


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
    """Runs the model over the eval windows, post-processes and scores (official SQuAD; with
    the no-answer option, also ``best_exact`` / ``best_f1`` and their thresholds over the null
    odds, see :func:`postprocess_with_null_odds`)."""
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    inputs = features.select_columns([c for c in _MODEL_INPUTS if c in features.column_names])
    loader = DataLoader(inputs, batch_size=batch_size, collate_fn=collator(tokenizer))
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = model(**batch)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        s = out.start_logits.float().cpu().numpy()
        e = out.end_logits.float().cpu().numpy()
        starts.extend(s[j, :n] for j, n in enumerate(lengths))
        ends.extend(e[j, :n] for j, n in enumerate(lengths))
    meta = features.select_columns(["example_id", "offset_mapping"])[:]
    allow_no_answer = cfg.squad_v2
    if allow_no_answer is None:  # not resolved by the loop: what these examples show
        allow_no_answer = any(ex.is_impossible for ex in examples)
    preds, null_odds = postprocess_with_null_odds(
        examples,
        meta,
        starts,
        ends,
        cfg.n_best_size,
        cfg.max_answer_length,
        allow_no_answer,
        null_last=no_answer_last(tokenizer),
    )
    # SQuAD 2.0: also the official best no-answer threshold over the null odds
    report = score(gold_questions(examples), preds, null_odds if allow_no_answer else None)
    if was_training:
        model.train()
    latency = 1000.0 * (time.perf_counter() - t0) / max(1, len(examples))
    return EvalOutput(preds, report.scores, latency, report.per_question)
