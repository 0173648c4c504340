"""SQuAD v1.1 / v2.0 scoring, equivalent to the official evaluation scripts.

The scoring reproduces the official SQuAD v2.0 evaluation script (``evaluate-v2.0.py``) with
no no-answer probabilities: same answer normalization, same EM/F1 per question (max over the
non-empty gold answers, or the empty answer for unanswerable questions), same output keys, as
percentages. One deliberate difference: a question without a prediction scores 0 and stays in
``total`` (the official v2.0 script crashes on it instead).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official SQuAD)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> int:
    """1 if the normalized answers are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    """Token-overlap F1 of the normalized answers; if either is empty, 1 only if both are."""
    gold_toks, pred_toks = _tokens(gold), _tokens(pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class GoldQuestion:
    """A question to score: its id and gold answer texts (empty for unanswerable)."""

    id: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class ScoreReport:
    """The official scores plus bookkeeping the official script does not print."""

    scores: dict[str, float | int]
    missing: tuple[str, ...]
    unknown: tuple[str, ...]


def score(questions: Iterable[GoldQuestion], predictions: Mapping[str, str]) -> ScoreReport:
    """Scores predictions as the official SQuAD v2.0 script does (percentages).

    Args:
        questions: every question of the dataset with its gold answers.
        predictions: ``{question_id: answer_text}``; ``""`` means "no answer".

    Returns:
        The official keys (``exact``, ``f1``, ``total``, ``HasAns_*``, and ``NoAns_*`` when
        there are unanswerable questions), missing and unknown prediction ids.
    """
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_ans: list[str] = []
    no_ans: list[str] = []
    missing: list[str] = []
    known: set[str] = set()
    for q in questions:
        known.add(q.id)
        golds = [a for a in q.answers if normalize_answer(a)] or [""]
        (has_ans if q.answers else no_ans).append(q.id)
        if q.id not in predictions:
            missing.append(q.id)
            exact[q.id] = f1[q.id] = 0.0
            continue
        pred = predictions[q.id]
        exact[q.id] = float(max(exact_match(g, pred) for g in golds))
        f1[q.id] = max(f1_score(g, pred) for g in golds)

    def block(ids: list[str]) -> dict[str, float | int]:
        n = len(ids)
        return {
            "exact": 100.0 * sum(exact[i] for i in ids) / n if n else 0.0,
            "f1": 100.0 * sum(f1[i] for i in ids) / n if n else 0.0,
            "total": n,
        }

    out: dict[str, float | int] = dict(block(list(exact)))
    if has_ans:
        out.update({f"HasAns_{k}": v for k, v in block(has_ans).items()})
    if no_ans:
        out.update({f"NoAns_{k}": v for k, v in block(no_ans).items()})
    unknown = tuple(sorted(set(predictions) - known))
    return ScoreReport(scores=out, missing=tuple(missing), unknown=unknown)
