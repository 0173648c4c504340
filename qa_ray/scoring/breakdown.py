"""An error breakdown of QA predictions: how each answer is wrong, computed as the official
SQuAD scorer sees answers (:func:`qa_ray.metrics.normalize_answer`, per-question EM/F1 as max
over the gold answers).

An answerable question answered with text falls in one overlap bucket, against its best gold
answer (highest F1, the first on ties) in normalized tokens:

* ``exact``: equal to a gold answer;
* ``partial_inside``: a contiguous part of the gold answer (too short);
* ``partial_around``: holds the gold answer and more (too long);
* ``partial_other``: shares tokens with it, neither inside nor around;
* ``no_overlap``: shares no token.

An answerable question answered with the empty answer is ``answered_empty`` (SQuAD 2.0: a wrong
abstention), without a prediction ``missing``. An unanswerable question is ``abstained``
(right) or ``answered``. Lengths (normalized tokens) compare each answered answerable
question's prediction with its best gold answer. F1 and EM by question word (what, who, when,
how many, ...: the first question word in the question) cover every question.
"""

from __future__ import annotations

import collections
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from qa_ray import metrics as m
from qa_ray.scoring.squad import GoldQuestion, exact_match, f1_score, normalize_answer

__all__ = [
    "OVERLAP_BUCKETS",
    "QUESTION_WORDS",
    "breakdown_metrics",
    "dumps",
    "breakdown_table",
    "error_breakdown",
    "question_word",
    "table_html",
]

OVERLAP_BUCKETS = ("exact", "partial_inside", "partial_around", "partial_other", "no_overlap")
# Multi-word forms first: "how many" is not "how".
QUESTION_WORDS = (
    "how many", "how much", "how long", "how old", "how", "what", "which", "whom", "whose",
    "who", "when", "where", "why",
)  # fmt: skip
_WORD = re.compile(r"\b(" + "|".join(w.replace(" ", r"\s+") for w in QUESTION_WORDS) + r")\b")


def question_word(question: str) -> str:
    """The question's first question word (``how many`` before ``how``), else ``other``."""
    found = _WORD.search(question.lower())
    if not found:
        return "other"
    return "who" if found.group(1) == "whom" else " ".join(found.group(1).split())


def _contains(outer: list[str], inner: list[str]) -> bool:
    n = len(inner)
    return any(outer[i : i + n] == inner for i in range(len(outer) - n + 1))


def _overlap(gold: str, pred: str) -> str:
    if exact_match(gold, pred):
        return "exact"
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if f1_score(gold, pred) == 0.0:
        return "no_overlap"
    if _contains(g, p):
        return "partial_inside"
    if _contains(p, g):
        return "partial_around"
    return "partial_other"


def error_breakdown(
    questions: Iterable[GoldQuestion],
    predictions: Mapping[str, str],
    question_texts: Mapping[str, str],
) -> dict[str, Any]:
    """The breakdown of ``predictions`` (a JSON-ready dict, counts and percentages).

    Args:
        questions: every scored question with its gold answers (empty: unanswerable).
        predictions: ``{question id: answer}``; ``""`` is the empty answer.
        question_texts: ``{question id: question}``, for the question words.

    Returns:
        ``{"total", "answerable": {total, <overlap buckets>, answered_empty, missing},
        "unanswerable": {total, abstained, answered, missing}, "length": {answered,
        mean_predicted_tokens, mean_reference_tokens, longer, shorter, same},
        "by_question_word": {word: {total, exact, f1}}}`` (EM/F1 as percentages).
    """
    ans = dict.fromkeys(("total", *OVERLAP_BUCKETS, "answered_empty", "missing"), 0)
    unans = dict.fromkeys(("total", "abstained", "answered", "missing"), 0)
    pred_len: list[int] = []
    ref_len: list[int] = []
    by_word: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    total = 0
    for q in questions:
        total += 1
        golds = [a for a in q.answers if normalize_answer(a)] or [""]
        pred = predictions.get(q.id)
        em = float(max(exact_match(g, pred) for g in golds)) if pred is not None else 0.0
        f1 = max(f1_score(g, pred) for g in golds) if pred is not None else 0.0
        by_word[question_word(question_texts.get(q.id, ""))].append((em, f1))
        if not q.answers:
            unans["total"] += 1
            if pred is None:
                unans["missing"] += 1
            else:
                unans["answered" if normalize_answer(pred) else "abstained"] += 1
            continue
        ans["total"] += 1
        if pred is None:
            ans["missing"] += 1
        elif not normalize_answer(pred):
            ans["answered_empty"] += 1
        else:
            best = max(golds, key=lambda g: f1_score(g, pred))  # the first on ties
            ans[_overlap(best, pred)] += 1
            pred_len.append(len(normalize_answer(pred).split()))
            ref_len.append(len(normalize_answer(best).split()))
    n = len(pred_len)
    length = {
        "answered": n,
        "mean_predicted_tokens": sum(pred_len) / n if n else 0.0,
        "mean_reference_tokens": sum(ref_len) / n if n else 0.0,
        "longer": sum(p > r for p, r in zip(pred_len, ref_len, strict=True)),
        "shorter": sum(p < r for p, r in zip(pred_len, ref_len, strict=True)),
        "same": sum(p == r for p, r in zip(pred_len, ref_len, strict=True)),
    }
    words = {
        w: {
            "total": len(v),
            "exact": 100.0 * sum(e for e, _ in v) / len(v),
            "f1": 100.0 * sum(f for _, f in v) / len(v),
        }
        for w, v in sorted(by_word.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    }
    return {
        "total": total,
        "answerable": ans,
        "unanswerable": unans,
        "length": length,
        "by_question_word": words,
    }


def breakdown_metrics(breakdown: Mapping[str, Any]) -> dict[str, float]:
    """The breakdown's few numbers a trial reports: overlap shares of the answerable
    questions, the mean length difference of answered ones, and on SQuAD 2.0 the share of
    unanswerable questions answered (percentages of their group)."""
    a, u = breakdown["answerable"], breakdown["unanswerable"]
    out: dict[str, float] = {}
    if a["total"]:
        partial = a["partial_inside"] + a["partial_around"] + a["partial_other"]
        out[m.ERRORS_PARTIAL] = 100.0 * partial / a["total"]
        out[m.ERRORS_NO_OVERLAP] = 100.0 * a["no_overlap"] / a["total"]
        out[m.ERRORS_ANSWERABLE_EMPTY] = 100.0 * a["answered_empty"] / a["total"]
    if breakdown["length"]["answered"]:
        lengths = breakdown["length"]
        out[m.ERRORS_LENGTH_DIFF] = (
            lengths["mean_predicted_tokens"] - lengths["mean_reference_tokens"]
        )
    if u["total"]:
        out[m.ERRORS_UNANSWERABLE_ANSWERED] = 100.0 * u["answered"] / u["total"]
    return out


def _rows(breakdown: Mapping[str, Any]) -> dict[str, Any]:
    a, u, lengths = breakdown["answerable"], breakdown["unanswerable"], breakdown["length"]
    rows: dict[str, Any] = {"questions": breakdown["total"]}
    rows.update({f"answerable: {k}": v for k, v in a.items()})
    if u["total"]:
        rows.update({f"unanswerable: {k}": v for k, v in u.items()})
    rows["mean predicted tokens"] = round(lengths["mean_predicted_tokens"], 2)
    rows["mean reference tokens"] = round(lengths["mean_reference_tokens"], 2)
    rows.update({f"predicted {k}": lengths[k] for k in ("longer", "shorter", "same")})
    for w, s in breakdown["by_question_word"].items():
        rows[f"F1: {w}"] = round(s["f1"], 2)
        rows[f"questions: {w}"] = s["total"]
    return rows


def breakdown_table(named: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, list]:
    """Breakdowns side by side: ``{"columns": ["bucket", name, ...], "data": [[bucket,
    value, ...], ...]}`` (a bucket one trial lacks, say a question word, is ``""``)."""
    per = [_rows(b) for _, b in named]
    buckets = list(dict.fromkeys(k for rows in per for k in rows))
    return {
        "columns": ["bucket", *(name for name, _ in named)],
        "data": [[k, *(rows.get(k, "") for rows in per)] for k in buckets],
    }


def table_html(table: Mapping[str, list], title: str) -> str:
    """A side-by-side table as a small HTML page."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table["data"]
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#f3f3f3}</style>"
        f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"
    )


def dumps(breakdown: Mapping[str, Any]) -> str:
    """The breakdown as the JSON text a trial reports and logs."""
    return json.dumps(breakdown, indent=2)
