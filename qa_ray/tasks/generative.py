"""Generative QA with a causal LM (SQuAD v1.1 / v2.0): prompt -> answer, greedy decoding, EM/F1.

A task family (see :class:`qa_ray.tasks.TaskFamily`).

A training sequence is the prompt (:data:`PROMPT`, labels masked with -100, so the loss is on
the answer only) followed by the first gold answer and EOS. An unanswerable question (SQuAD 2.0)
is trained to answer ``data.no_answer_text``, and that answer is scored as the empty answer.
A context too long for ``max_seq_length`` is cut to a token window: around the answer when
training, its beginning when evaluating (SQuAD contexts rarely need it at 384+ tokens).
Evaluation decodes greedily up to ``data.max_answer_length`` new tokens and keeps the first
line of the generation.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

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
    "PROMPT",
    "QUALITATIVE_QUESTIONS",
    "SCORES",
    "collator",
    "context_window",
    "eval_features",
    "evaluate",
    "extract_answer",
    "greedy_texts",
    "load_train_eval",
    "loss",
    "outputs",
    "pad_rows",
    "train_features",
]

AUTO_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
FRESH_HEADS: tuple[str, ...] = ()  # the LM head is the checkpoint's own
QUALITATIVE_QUESTIONS = FACTS["generative"].qualitative_questions
SCORES = FACTS["generative"].scores
PROMPT = "Context: {context}\nQuestion: {question}\nAnswer:"
_IGNORE = -100
_MARGIN = 4  # tokens lost or gained where the context meets the template when re-tokenized


def context_window(
    tokenizer: Tokenizer, context: str, budget: int, answer: tuple[int, int] | None
) -> str:
    """``context``, or a window of at most ``budget`` of its tokens, holding the ``answer``
    character span (centred on it) when one is given, else the context's beginning."""
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    n = len(offsets)
    if n <= budget:
        return context
    first = 0
    if answer is not None:
        start_char, end_char = answer
        s = next((i for i, (_, end) in enumerate(offsets) if end > start_char), 0)
        e = next((i for i in range(n - 1, -1, -1) if offsets[i][0] < end_char), s)
        slack = max(0, budget - (e - s + 1))
        first = min(max(0, s - slack // 2), n - budget)
    last = first + budget - 1
    return context[offsets[first][0] : offsets[last][1]].strip()


def _prompt(
    tokenizer: Tokenizer,
    cfg: DataConfig,
    context: str,
    question: str,
    answer: tuple[int, int] | None,
    answer_tokens: int,
) -> str:
    fixed = len(tokenizer(PROMPT.format(context="", question=question.strip())).input_ids)
    budget = max(8, cfg.max_seq_length - fixed - answer_tokens - _MARGIN)
    return PROMPT.format(
        context=context_window(tokenizer, context, budget, answer), question=question.strip()
    )


def train_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """Prompt + answer + EOS, with the loss on the answer tokens only (cached)."""

    def build(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for i, question in enumerate(batch["question"]):
            answers = batch["answers"][i]
            answer = answers[0] if answers else cfg.no_answer_text
            span = None
            if answers:
                start = batch["answer_starts"][i][0]
                span = (start, start + len(answers[0]))
            target = tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids
            target = target[: cfg.max_answer_length] + [tokenizer.eos_token_id]
            text = _prompt(tokenizer, cfg, batch["context"][i], question, span, len(target))
            prompt = tokenizer(text).input_ids
            prompt = prompt[: cfg.max_seq_length - len(target)]
            out["input_ids"].append(prompt + target)
            out["attention_mask"].append([1] * (len(prompt) + len(target)))
            out["labels"].append([_IGNORE] * len(prompt) + target)
        return out

    key = {
        "kind": "generative-train",
        "prompt": PROMPT,
        "max_seq_length": cfg.max_seq_length,
        "max_answer_length": cfg.max_answer_length,
        "no_answer_text": cfg.no_answer_text,
    }
    return cached_features(examples, tokenizer, build, key, cfg.cache_dir)


def eval_features(examples: Sequence[QAExample], tokenizer: Tokenizer, cfg: DataConfig) -> Dataset:
    """The prompts, one per question, with ``example_id`` (cached)."""

    def build(batch):
        ids = [
            tokenizer(
                _prompt(tokenizer, cfg, context, question, None, cfg.max_answer_length)
            ).input_ids[: cfg.max_seq_length]
            for context, question in zip(batch["context"], batch["question"], strict=True)
        ]
        return {"input_ids": ids, "example_id": list(batch["id"])}

    key = {
        "kind": "generative-eval",
        "prompt": PROMPT,
        "max_seq_length": cfg.max_seq_length,
        "max_answer_length": cfg.max_answer_length,
    }
    return cached_features(examples, tokenizer, build, key, cfg.cache_dir)


def pad_rows(rows: Sequence, value: int, left: bool) -> torch.Tensor:
    """Pads token-id rows (lists or tensors) to the longest, on the left or the right."""
    rows = [r.tolist() if hasattr(r, "tolist") else list(r) for r in rows]
    width = max(len(r) for r in rows)
    return torch.tensor(
        [
            ([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r)))
            for r in rows
        ]
    )


def collator(tokenizer: Tokenizer) -> Collate:
    """Right-pads a training batch: pad id for inputs, 0 for the mask, -100 for labels."""

    def collate(rows):
        return {
            "input_ids": pad_rows(
                [r["input_ids"] for r in rows], tokenizer.pad_token_id, left=False
            ),
            "attention_mask": pad_rows([r["attention_mask"] for r in rows], 0, left=False),
            "labels": pad_rows([r["labels"] for r in rows], _IGNORE, left=False),
        }

    return collate


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (see :func:`outputs`)."""
    return outputs(model, batch)[0]


def outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean cross-entropy over the answer tokens, as ``model(**batch).loss``, but with logits
    computed only at the positions that predict an answer token (``logits_to_keep``): at a 49k to
    128k vocabulary, full-sequence logits dominate a small model's activation memory. Also
    those logits (rows: answer tokens), what a distilling student matches."""
    labels = batch["labels"]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != _IGNORE
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=predicts,
    ).logits
    rows = logits.reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(rows.float(), labels[:, 1:][predicts[:, :-1]]), [rows]


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def extract_answer(generated: str, no_answer_text: str) -> str:
    """The answer in a generation: its first line, stripped; ``no_answer_text`` -> ``""``."""
    answer = generated.strip().split("\n", 1)[0].strip()
    if _PUNCT.sub("", answer).strip().lower() == no_answer_text.lower():
        return ""
    return answer


@torch.no_grad()
def greedy_texts(
    model: Model,
    tokenizer: Tokenizer,
    rows: Sequence[list[int]],
    max_new_tokens: int,
    device: torch.device,
    autocast: Autocast,
) -> list[str]:
    """Greedy generations for a batch of token-id rows, decoded.

    A decoder-only model gets its prompts left-padded and the prompt cut from its output; an
    encoder-decoder (``config.is_encoder_decoder``) gets right-padded encoder inputs and its
    generation config's pad and EOS ids.
    """
    decoder_only = not model.config.is_encoder_decoder
    input_ids = pad_rows(rows, tokenizer.pad_token_id, left=decoder_only).to(device)
    mask = pad_rows([[1] * len(r) for r in rows], 0, left=decoder_only).to(device)
    special = (
        {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        if decoder_only
        else {}
    )
    # Causal-LM and seq2seq models generate (GenerationMixin, whose self type is narrower than
    # the models here as typed); without return_dict_in_generate, the output is the token ids.
    with autocast():
        out: torch.Tensor = cast(Any, model).generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **special,
        )
    if decoder_only:
        out = out[:, input_ids.shape[1] :]
    return tokenizer.batch_decode(out, skip_special_tokens=True)


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
    """Greedy generation for every question, answer extraction, official SQuAD scoring (also
    the seq2seq task's evaluation: :func:`greedy_texts` handles both model kinds)."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    columns = features[:]
    ids, example_ids = columns["input_ids"], columns["example_id"]
    # Similar lengths together: less padding per batch.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    preds: dict[str, str] = {}
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        texts = greedy_texts(
            model, tokenizer, [ids[i] for i in chunk], cfg.max_answer_length, device, autocast
        )
        for i, text in zip(chunk, texts, strict=True):
            preds[example_ids[i]] = extract_answer(text, cfg.no_answer_text)
    report = score(gold_questions(examples), preds)
    if was_training:
        model.train()
    latency = 1000.0 * (time.perf_counter() - t0) / max(1, len(examples))
    return EvalOutput(preds, report.scores, latency, report.per_question)
