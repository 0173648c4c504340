"""The error breakdown of QA predictions: every bucket on hand-made predictions."""

from __future__ import annotations

import json

import pytest

from qa_ray import metrics as m
from qa_ray.scoring.breakdown import (
    breakdown_metrics,
    breakdown_table,
    error_breakdown,
    question_word,
    table_html,
)
from qa_ray.scoring.squad import GoldQuestion, score

# id: (question, gold answers, prediction or None for missing)
CASES = {
    "exact": ("Who won Super Bowl 50?", ("Denver Broncos", "The Broncos"), "the broncos!"),
    "inside": ("Where was it played?", ("Levi's Stadium in Santa Clara",), "Santa Clara"),
    "around": ("When was it?", ("February 7",), "on February 7, 2016"),
    "other": ("How many points?", ("24 to 10",), "10 points"),
    "none": ("What colour?", ("gold",), "silver"),
    "empty": ("Which team lost?", ("Carolina Panthers",), ""),
    "missing": ("Why gold?", ("the 50th",), None),
    "abstained": ("In what year did Tesla die on Mars?", (), ""),
    "answered": ("How much did Mars pay?", (), "a lot"),
    "unpredicted": ("Whom did Mars thank?", (), None),
}


def _breakdown():
    questions = [GoldQuestion(i, golds) for i, (_, golds, _) in CASES.items()]
    preds = {i: p for i, (_, _, p) in CASES.items() if p is not None}
    texts = {i: q for i, (q, _, _) in CASES.items()}
    return questions, preds, error_breakdown(questions, preds, texts)


@pytest.mark.parametrize(
    "question, word",
    [
        ("How many points?", "how many"),
        ("how  much did it cost", "how much"),
        ("How did it end?", "how"),
        ("In what year?", "what"),
        ("Whom did they thank?", "who"),
        ("Whose idea was it?", "whose"),
        ("Name the team.", "other"),
        ("Whatever happened?", "other"),  # words, not prefixes
    ],
)
def test_question_word(question, word):
    assert question_word(question) == word


def test_every_bucket_on_hand_made_predictions():
    questions, preds, b = _breakdown()
    assert b["total"] == 10
    assert b["answerable"] == {
        "total": 7, "exact": 1, "partial_inside": 1, "partial_around": 1, "partial_other": 1,
        "no_overlap": 1, "answered_empty": 1, "missing": 1,
    }  # fmt: skip
    assert b["unanswerable"] == {"total": 3, "abstained": 1, "answered": 1, "missing": 1}
    # answered answerable: exact 1 vs 1 ("broncos", best gold "The Broncos"), inside 2 vs 5,
    # around 3 vs 2 ("on february 7 2016"), other 2 vs 3, none 1 vs 1 (normalized tokens)
    assert b["length"] == {
        "answered": 5,
        "mean_predicted_tokens": pytest.approx((1 + 2 + 4 + 2 + 1) / 5),
        "mean_reference_tokens": pytest.approx((1 + 5 + 2 + 3 + 1) / 5),
        "longer": 1, "shorter": 2, "same": 2,
    }  # fmt: skip
    words = b["by_question_word"]
    assert set(words) == {"who", "where", "when", "how many", "what", "which", "why",
                          "how much"}  # fmt: skip
    assert words["who"] == {"total": 2, "exact": 50.0, "f1": 50.0}  # exact; unpredicted 0
    assert words["what"]["total"] == 2 and words["what"]["f1"] == pytest.approx(50.0)
    # other: "10 points" vs "24 to 10": p = 1/2, r = 1/3 -> F1 0.4
    assert words["how many"]["f1"] == pytest.approx(40.0)
    # the same normalization and per-question F1 as the official scorer
    official = score(questions, preds).scores["f1"]
    pooled = sum(w["f1"] * w["total"] for w in words.values()) / b["total"]
    assert pooled == pytest.approx(official)
    json.dumps(b)  # an artifact


def test_metrics_and_side_by_side_table():
    _, _, b = _breakdown()
    got = breakdown_metrics(b)
    assert got == pytest.approx({
        m.ERRORS_PARTIAL: 100 * 3 / 7,
        m.ERRORS_NO_OVERLAP: 100 / 7,
        m.ERRORS_ANSWERABLE_EMPTY: 100 / 7,
        m.ERRORS_UNANSWERABLE_ANSWERED: 100 / 3,
        m.ERRORS_LENGTH_DIFF: (10 - 12) / 5,
    })  # fmt: skip
    v1 = error_breakdown([GoldQuestion("a", ("x",))], {"a": "x"}, {"a": "What?"})
    assert m.ERRORS_UNANSWERABLE_ANSWERED not in breakdown_metrics(v1)
    table = breakdown_table([("trial-a", b), ("trial-b", v1)])
    assert table["columns"] == ["bucket", "trial-a", "trial-b"]
    rows = {r[0]: r[1:] for r in table["data"]}
    assert rows["answerable: partial_around"] == [1, 0]
    assert rows["unanswerable: answered"] == [1, ""]  # v1.1: no unanswerable questions
    assert rows["F1: what"] == [50.0, 100.0] and rows["questions: what"] == [2, 1]
    assert rows["F1: why"] == [0.0, ""]
    assert "<td>answerable: no_overlap</td>" in table_html(table, "errors")
