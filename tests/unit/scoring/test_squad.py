"""SQuAD scoring against hand-checked values and the official script's keys."""

import pytest

from qa_ray.scoring.squad import GoldQuestion, exact_match, f1_score, normalize_answer, score


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  an   apple,  a pear ", "apple pear"),
        ("Theater", "theater"),  # 'the' only as a whole word
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_and_f1_hand_checked():
    assert exact_match("Denver Broncos", "the denver broncos.") == 1
    assert exact_match("Denver Broncos", "Broncos") == 0
    # gold 2 tokens, pred 1 token, 1 common: p=1, r=0.5 -> f1=2/3
    assert f1_score("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    # pred 3 tokens 'broncos beat panthers', gold 2 'denver broncos': p=1/3 r=1/2 -> 0.4
    assert f1_score("Denver Broncos", "Broncos beat Panthers") == pytest.approx(0.4)
    assert f1_score("", "") == 1.0 and f1_score("a", "") == 1.0  # 'a' normalizes to empty
    assert f1_score("Denver", "") == 0.0


def test_score_v2_keys_and_values():
    qs = [
        GoldQuestion("q1", ("Denver Broncos", "The Broncos")),  # several golds: max
        GoldQuestion("q2", ("Santa Clara",)),
        GoldQuestion("q3", ()),  # unanswerable
        GoldQuestion("q4", ()),
    ]
    preds = {"q1": "Broncos", "q2": "Santa Clara, California", "q3": "", "q4": "Levi's"}
    s = score(qs, preds).scores
    assert list(s) == [
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
    ]
    # q1: EM 1 (vs 'The Broncos'); q2: EM 0, F1 p=2/3 r=1 -> 0.8; q3: 1; q4: 0
    assert s["HasAns_exact"] == pytest.approx(50.0)
    assert s["HasAns_f1"] == pytest.approx(100 * (1 + 0.8) / 2)
    assert s["NoAns_exact"] == pytest.approx(50.0)
    assert s["exact"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
    assert s["total"] == 4 and s["HasAns_total"] == 2 and s["NoAns_total"] == 2


def test_score_missing_counts_zero_and_unknown_ignored():
    qs = [GoldQuestion("a", ("x",)), GoldQuestion("b", ("y",))]
    r = score(qs, {"a": "x", "zzz": "y"})
    assert r.scores["exact"] == 50.0 and r.scores["total"] == 2
    assert r.missing == ("b",) and r.unknown == ("zzz",)
    assert "NoAns_total" not in r.scores
