"""SQuAD v1.1 / v2.0 scoring, equivalent to the official evaluation scripts.

The scoring reproduces the official SQuAD v2.0 evaluation script (``evaluate-v2.0.py``): same
answer normalization, same EM/F1 per question (max over the non-empty gold answers, or the
empty answer for unanswerable questions), same output keys, as percentages. Given no-answer
probabilities (any score that grows with "unanswerable"), also as the official script: the
main scores abstain where the probability exceeds ``na_prob_thresh``, and ``best_exact`` /
``best_f1`` are the scores at the best threshold (``best_*_thresh``) over the probabilities.
One deliberate difference: a question without a prediction scores 0 at every threshold and
stays in ``total`` (the official v2.0 script crashes on it instead).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
    """The official scores plus bookkeeping the official script does not print.

    ``per_question`` holds every question's ``(exact, f1)`` (0 to 1) as the main scores
    counted it (abstentions applied), in the dataset's order: what a paired comparison of two
    models evaluated on the same questions needs."""

    scores: dict[str, float | int]
    missing: tuple[str, ...]
    unknown: tuple[str, ...]
    per_question: dict[str, tuple[float, float]] = field(default_factory=dict)


def best_threshold(
    raw: Mapping[str, float],
    has_answer: Mapping[str, bool],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float],
) -> tuple[float, float]:
    """The best score over no-answer thresholds, and that threshold (``find_best_thresh`` of
    the official v2.0 script).

    At a threshold ``t`` a question whose no-answer probability exceeds ``t`` abstains (the
    empty answer: 1 if unanswerable, else 0); the others keep their prediction's score. The
    sweep starts with every question abstaining (threshold 0.0), then lets the questions
    answer one by one in increasing probability (ties in the order of ``na_probs``); the
    first best running score wins, at the probability of the question that reached it.

    Args:
        raw: every question's score (exact or F1, 0 to 1) for its prediction.
        has_answer: every question's answerability.
        predictions: ``{question id: answer}``; a question without one scores 0 throughout.
        na_probs: no-answer probabilities (or scores) by question id; ids not in ``raw`` are
            ignored.

    Returns:
        ``(100 * best score / len(raw), threshold)``.
    """
    swept = [q for q in sorted(na_probs, key=na_probs.__getitem__) if q in raw and q in predictions]
    running = float(sum(1 for q in predictions if q in raw and not has_answer[q]))
    best, thresh = running, 0.0
    for q in swept:
        if has_answer[q]:
            running += raw[q]  # abstaining scored 0
        elif predictions[q]:
            running -= 1.0  # abstaining scored 1, a non-empty answer 0
        if running > best:
            best, thresh = running, float(na_probs[q])
    return 100.0 * best / len(raw) if raw else 0.0, thresh


def score(
    questions: Iterable[GoldQuestion],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float | None = None,
) -> ScoreReport:
    """Scores predictions as the official SQuAD v2.0 script does (percentages).

    Args:
        questions: every question of the dataset with its gold answers.
        predictions: ``{question_id: answer_text}``; ``""`` means "no answer".
        na_probs: ``{question_id: no-answer probability}`` for every predicted question (the
            official ``--na-prob-file``): adds ``best_exact``, ``best_exact_thresh``,
            ``best_f1`` and ``best_f1_thresh`` (:func:`best_threshold`).
        na_prob_thresh: with ``na_probs``, a question whose probability exceeds it abstains
            in the main scores (the official ``--na-prob-thresh``, 1.0 there by default);
            ``None`` scores the predictions as they are.

    Returns:
        The official keys (``exact``, ``f1``, ``total``, ``HasAns_*``, ``NoAns_*`` when there
        are unanswerable questions, ``best_*`` with ``na_probs``), missing and unknown
        prediction ids.

    Raises:
        ValueError: ``na_probs`` lacks a predicted question of the dataset.
    """
    questions = list(questions)
    raw_exact: dict[str, float] = {}
    raw_f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    missing: list[str] = []
    for q in questions:
        golds = [a for a in q.answers if normalize_answer(a)] or [""]
        has_answer[q.id] = bool(q.answers)
        if q.id not in predictions:
            missing.append(q.id)
            raw_exact[q.id] = raw_f1[q.id] = 0.0
            continue
        pred = predictions[q.id]
        raw_exact[q.id] = float(max(exact_match(g, pred) for g in golds))
        raw_f1[q.id] = max(f1_score(g, pred) for g in golds)
    if na_probs is not None:
        lacking = [q for q in raw_exact if q in predictions and q not in na_probs]
        if lacking:
            raise ValueError(
                f"no-answer probabilities: {len(lacking)} predicted question(s) have none "
                f"(first: {lacking[0]})"
            )
    exact, f1 = raw_exact, raw_f1
    if na_probs is not None and na_prob_thresh is not None:
        abstains = {q for q in predictions if q in raw_exact and na_probs[q] > na_prob_thresh}
        exact = {q: float(not has_answer[q]) if q in abstains else v for q, v in exact.items()}
        f1 = {q: float(not has_answer[q]) if q in abstains else v for q, v in f1.items()}

    def block(ids: list[str]) -> dict[str, float | int]:
        n = len(ids)
        return {
            "exact": 100.0 * sum(exact[i] for i in ids) / n if n else 0.0,
            "f1": 100.0 * sum(f1[i] for i in ids) / n if n else 0.0,
            "total": n,
        }

    has_ans = [q for q, has in has_answer.items() if has]
    no_ans = [q for q, has in has_answer.items() if not has]
    out: dict[str, float | int] = dict(block(list(exact)))
    if has_ans:
        out.update({f"HasAns_{k}": v for k, v in block(has_ans).items()})
    if no_ans:
        out.update({f"NoAns_{k}": v for k, v in block(no_ans).items()})
    if na_probs is not None:
        for name, raw in (("exact", raw_exact), ("f1", raw_f1)):
            best, thresh = best_threshold(raw, has_answer, predictions, na_probs)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
    unknown = tuple(sorted(set(predictions) - set(raw_exact)))
    per_question = {q: (exact[q], f1[q]) for q in exact}
    return ScoreReport(out, tuple(missing), unknown, per_question)
