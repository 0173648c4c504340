import numpy as np
from conftest import ASSETS
from transformers import AutoTokenizer

from qa_ray.config import DataConfig
from qa_ray.data import QAExample, load_examples
from qa_ray.tasks import extractive


def test_labelled_spans_give_back_the_answer_on_all_squad_v1_dev(squad_v1_dev, tmp_path):
    """For every training window that holds the answer, the labelled span's offsets give back
    the gold answer text. Where SQuAD's answer starts or ends inside a token (e.g. 'two' in
    'Westwood') no token span can be exact: there the span is the smallest token-aligned one
    that covers the answer."""
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    examples = load_examples(str(squad_v1_dev))
    cfg = DataConfig(path="x", max_seq_length=256, doc_stride=64, cache_dir=str(tmp_path))
    feats = extractive.train_features(examples, tok, cfg)
    enc = tok(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=256,
        stride=64,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert len(enc["input_ids"]) == len(feats)
    held = exact = 0
    for i, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True)):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        off = enc["offset_mapping"][i]
        start, end = ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0])
        ctx = [j for j, sid in enumerate(enc.sequence_ids(i)) if sid == 1]
        in_window = off[ctx[0]][0] <= start and end <= off[ctx[-1]][1]
        if not in_window:
            assert s == e == 0
            continue
        held += 1
        got = ex.context[off[s][0] : off[e][1]]
        if got == ex.answers[0]:
            exact += 1
            continue
        # the answer boundary falls inside token s or e: covering and minimal
        assert off[s][0] <= start < off[s][1] and off[e][0] < end <= off[e][1], (ex.id, got)
        assert off[s][0] < start or end < off[e][1]
    assert held >= 10_000  # every question's answer is in at least one window
    assert held - exact <= 25, f"{held - exact} answers not token-aligned"


def test_feature_cache_is_reused(tmp_path):
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    a = extractive.train_features(ex, tok, cfg)
    assert len(list(tmp_path.iterdir())) == 1
    b = extractive.train_features(ex, tok, cfg)
    assert a.cache_files[0]["filename"] == b.cache_files[0]["filename"]
    extractive.train_features(ex, tok, cfg.model_copy(update={"doc_stride": 16}))
    assert len(list(tmp_path.iterdir())) == 2  # new lengths, new key


def test_drop_windows_missing_answer_keeps_answer_windows_and_unanswerable(tmp_path):
    """Dropping removes exactly the CLS-labelled windows of answerable questions; windows of
    unanswerable (v2.0) questions, and every window that holds its answer, stay."""
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    ex = load_examples(str(ASSETS / "squad_v2_tiny.json"))
    unanswerable = {e.id for e in ex if not e.answers}
    assert unanswerable and len(unanswerable) < len(ex)
    cfg = DataConfig(path="x", max_seq_length=64, doc_stride=16, cache_dir=str(tmp_path))
    kept_all = extractive.train_features(ex, tok, cfg)
    dropped = extractive.train_features(
        ex, tok, cfg.model_copy(update={"drop_windows_missing_answer": True})
    )
    assert len(list(tmp_path.iterdir())) == 2  # the flag is part of the cache key

    def labels(feats):
        return list(zip(feats["start_positions"], feats["end_positions"], strict=True))

    enc = tok(
        [e.question for e in ex],
        [e.context for e in ex],
        truncation="only_second",
        max_length=64,
        stride=16,
        return_overflowing_tokens=True,
    )
    owner = [ex[i].id for i in enc["overflow_to_sample_mapping"]]
    assert len(owner) == len(kept_all)
    missed = [
        i
        for i, (s, e) in enumerate(labels(kept_all))
        if (s, e) == (0, 0) and owner[i] not in unanswerable
    ]
    assert missed, "the fixture has windows that cut the answer away at this length"
    expected = [lab for i, lab in enumerate(labels(kept_all)) if i not in set(missed)]
    assert labels(dropped) == expected
    assert sum(lab == (0, 0) for lab in labels(dropped)) == sum(o in unanswerable for o in owner)


def _feats(offsets, ids):
    return {"example_id": ids, "offset_mapping": offsets}


def test_postprocess_best_span_over_windows_and_no_answer():
    ex = QAExample("q", "T", "Denver Broncos won", "Who?", ("Denver Broncos",), (0,))
    offsets = [[None, (0, 6), (7, 14), (15, 18)], [None, (7, 14), (15, 18), None]]
    s0 = np.array([0.0, 5.0, 1.0, 0.0])
    e0 = np.array([0.0, 0.0, 4.0, 0.0])
    s1 = np.array([9.0, 1.0, 0.0, 0.0])
    e1 = np.array([9.0, 0.0, 1.0, 0.0])
    preds = extractive.postprocess([ex], _feats(offsets, ["q", "q"]), [s0, s1], [e0, e1])
    assert preds == {"q": "Denver Broncos"}
    # SQuAD 2.0: the lowest null score over windows is 0 (window 0) < 9: still the span
    assert extractive.postprocess(
        [ex], _feats(offsets, ["q", "q"]), [s0, s1], [e0, e1], allow_no_answer=True
    ) == {"q": "Denver Broncos"}
    s0[0] = e0[0] = 6.0
    assert extractive.postprocess(
        [ex], _feats(offsets, ["q", "q"]), [s0, s1], [e0, e1], allow_no_answer=True
    ) == {"q": ""}
    assert extractive.postprocess(
        [ex], _feats(offsets, ["q", "q"]), [s0, s1], [e0, e1], max_answer_length=1
    ) == {"q": "Denver"}
