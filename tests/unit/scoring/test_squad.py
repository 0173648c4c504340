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


def test_every_questions_scores_as_the_main_scores_count_them():
    qs = [GoldQuestion("a", ("the cat",)), GoldQuestion("b", ("y",)), GoldQuestion("c", ())]
    r = score(qs, {"a": "cat sat", "c": "x"}, na_probs={"a": 0.1, "c": 0.9}, na_prob_thresh=0.5)
    assert list(r.per_question) == ["a", "b", "c"]  # the dataset's order
    assert r.per_question["a"] == (0.0, pytest.approx(2 * 0.5 * 1.0 / 1.5))
    assert r.per_question["b"] == (0.0, 0.0)  # missing
    assert r.per_question["c"] == (1.0, 1.0)  # abstains above the threshold: right
    n = len(qs)
    assert r.scores["f1"] == pytest.approx(100 * sum(f for _, f in r.per_question.values()) / n)
    assert r.scores["exact"] == pytest.approx(100 * sum(e for e, _ in r.per_question.values()) / n)


def test_score_missing_counts_zero_and_unknown_ignored():
    qs = [GoldQuestion("a", ("x",)), GoldQuestion("b", ("y",))]
    r = score(qs, {"a": "x", "zzz": "y"})
    assert r.scores["exact"] == 50.0 and r.scores["total"] == 2
    assert r.missing == ("b",) and r.unknown == ("zzz",)
    assert "NoAns_total" not in r.scores


def _reference_best(questions, predictions, na_probs):
    """The official v2.0 script's best threshold, by its documented behaviour and by brute
    force: at cut k the k questions of lowest no-answer probability (stable order) answer
    with their prediction and the others abstain (the empty answer); each question's two
    scores come from :func:`score` on that question alone. The first strictly best cut wins;
    its threshold is the probability of its last answering question (0.0 for the cut 0).
    As the script, an answered unanswerable question counts 0 for any non-empty answer text,
    even one that normalizes to empty ("a", a dash), which :func:`score` itself scores 1.
    Percentages, as :func:`score`."""
    import numpy as np

    order = sorted(na_probs, key=lambda q: na_probs[q])
    by_id = {q.id: q for q in questions}
    out = {}
    for name in ("exact", "f1"):
        answered = np.array([
            score([by_id[q]], {q: predictions[q]}).scores[name]
            if by_id[q].answers or not predictions[q] else 0.0
            for q in order
        ])  # fmt: skip
        abstained = np.array([score([by_id[q]], {q: ""}).scores[name] for q in order])
        totals = np.concatenate([[0.0], np.cumsum(answered)]) + np.concatenate(
            [np.cumsum(abstained[::-1])[::-1], [0.0]]
        )
        k = int(np.argmax(totals))  # the first maximum
        out[f"best_{name}"] = totals[k] / len(order)
        out[f"best_{name}_thresh"] = 0.0 if k == 0 else na_probs[order[k - 1]]
    return out


def test_best_threshold_hand_checked():
    qs = [GoldQuestion("a", ("x y",)), GoldQuestion("b", ()), GoldQuestion("c", ("z",)),
          GoldQuestion("d", ())]  # fmt: skip
    preds = {"a": "x", "b": "w", "c": "z", "d": ""}
    na = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9}
    s = score(qs, preds, na).scores
    # all abstain: b, d right = 2; a answers: +2/3 (F1) or +0 (EM); b answers: -1; c: +1; d: 0
    # EM running 2, 2, 1, 2, 2: best 2 first at 0.0; F1 running 2, 2.67, 1.67, 2.67, 2.67
    assert s["best_exact"] == pytest.approx(50.0) and s["best_exact_thresh"] == 0.0
    assert s["best_f1"] == pytest.approx(100 * (2 + 2 / 3) / 4) and s["best_f1_thresh"] == 0.1
    assert s["exact"] == pytest.approx(50.0)  # without na_prob_thresh, predictions as they are
    # the official --na-prob-thresh: a (0.1) and b, c, d above 0.05 abstain
    assert score(qs, preds, na, na_prob_thresh=0.05).scores["exact"] == pytest.approx(50.0)
    assert score(qs, preds, na, na_prob_thresh=0.25).scores["f1"] == pytest.approx(
        100 * (2 / 3 + 0 + 0 + 1) / 4  # a, b answer (b wrongly); c, d abstain
    )
    for name in ("exact", "f1"):  # scoring at the best threshold gives the best score
        at = score(qs, preds, na, na_prob_thresh=s[f"best_{name}_thresh"]).scores
        assert at[name] == pytest.approx(s[f"best_{name}"])
    with pytest.raises(ValueError, match="1 predicted question"):
        score(qs, preds, {"a": 0.1, "b": 0.2, "c": 0.3})


def test_best_threshold_equals_the_official_algorithm_on_squad_v2_dev(squad_v2_dev):
    """Predictions over all 11,873 dev questions, as a model would give them (gold answers,
    answers cut short or running long, wrong spans, empty answers) with no-answer
    probabilities that favour empty answers (clamped to [0, 1]: hundreds of ties): best_exact /
    best_f1 and their thresholds equal the brute-force reference."""
    import random

    from qa_ray.data.squad import gold_questions, load_examples

    examples = load_examples(str(squad_v2_dev))
    rng = random.Random(0)
    preds, na = {}, {}
    for e in examples:
        words = e.context.split()
        i = rng.randrange(len(words))
        wrong = " ".join(words[i : i + rng.randint(1, 4)])
        r = rng.random()
        if e.answers:
            gold = e.answers[0]
            pred = [gold, gold.split()[0], f"{gold} {wrong}", wrong, ""][min(4, int(r * 5))]
        else:
            pred = "" if r < 0.5 else wrong
        preds[e.id] = pred
        na[e.id] = min(1.0, max(0.0, rng.gauss(0.7 if not pred else 0.4, 0.2)))
    questions = gold_questions(examples)
    s = score(questions, preds, na).scores
    want = _reference_best(questions, preds, na)
    for k, v in want.items():
        assert s[k] == pytest.approx(v, abs=1e-9), k
    assert s["best_f1"] > s["f1"]  # these probabilities carry information
    assert sum(1 for e in examples if not e.answers and preds[e.id] and not
               normalize_answer(preds[e.id])) > 0  # the quirk above is exercised  # fmt: skip
