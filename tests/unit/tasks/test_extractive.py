"""The extractive family: windows, labels, post-processing, SQuAD v2 scoring."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from qa_ray.config.trial import DataConfig
from qa_ray.data.examples import QAExample
from qa_ray.data.squad import load_examples
from qa_ray.tasks import extractive
from tests.helpers import ASSETS


@pytest.mark.slow
def test_labelled_spans_give_back_the_answer_on_all_squad_v1_dev(squad_v1_dev, tmp_path):
    """The check below on all 10,570 questions of SQuAD v1.1 dev (a minute of tokenizing)."""
    held, unaligned = _labelled_spans_give_back_the_answer(str(squad_v1_dev), tmp_path)
    assert held >= 10_000  # every question's answer is in at least one window
    assert unaligned <= 25, f"{unaligned} answers not token-aligned"


def test_labelled_spans_give_back_the_answer(tmp_path):
    held, unaligned = _labelled_spans_give_back_the_answer(
        str(ASSETS / "squad_v1_tiny.json"), tmp_path
    )
    assert held >= 90 and unaligned <= 2  # 90 questions; 2 answers end inside a token


def _labelled_spans_give_back_the_answer(path: str, tmp_path) -> tuple[int, int]:
    """For every training window that holds the answer, the labelled span's offsets give back
    the gold answer text. Where SQuAD's answer starts or ends inside a token (e.g. 'two' in
    'Westwood') no token span can be exact: there the span is the smallest token-aligned one
    that covers the answer. Returns (windows holding an answer, answers not token-aligned)."""
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    examples = load_examples(path)
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
    return held, held - exact


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


def test_batches_are_right_padded_whatever_the_tokenizers_padding_side(tmp_path):
    """Span labels count from the left: a left-padding tokenizer (decoders often ship one)
    must not shift the labelled tokens."""
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    tok.padding_side = "left"
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))[:6]
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    feats = extractive.train_features(ex, tok, cfg)
    rows = [feats[i] for i in range(len(feats))]
    batch = extractive.collator(tok)(rows)
    assert (batch["attention_mask"][:, 0] == 1).all()  # nothing padded on the left
    for row, ids, s, e in zip(
        rows, batch["input_ids"], batch["start_positions"], batch["end_positions"], strict=True
    ):
        assert ids[: len(row["input_ids"])].tolist() == list(row["input_ids"])
        assert ids[s : e + 1].tolist() == list(row["input_ids"])[s : e + 1]


def test_no_answer_position_is_the_cls_token_or_a_decoders_last_token(tmp_path):
    """A decoder's causal attention sees the window only from its last position: there its
    no-answer label goes; encoders keep CLS (position 0)."""
    ex = [e for e in load_examples(str(ASSETS / "squad_v2_tiny.json")) if not e.answers][:4]
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    wordpiece = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    bpe = AutoTokenizer.from_pretrained(ASSETS / "bpe")
    assert not extractive.no_answer_last(wordpiece) and extractive.no_answer_last(bpe)
    enc = extractive.train_features(ex, wordpiece, cfg)
    assert set(enc["start_positions"]) == set(enc["end_positions"]) == {0}
    dec = extractive.train_features(ex, bpe, cfg)
    lengths = [len(ids) - 1 for ids in dec["input_ids"]]
    assert dec["start_positions"] == dec["end_positions"] == lengths
    # postprocess reads the no-answer score at the same place
    q = ex[0]
    offsets = [[None, (0, 3), (4, 8), None]]
    s, e = np.array([0.0, 1.0, 0.0, 5.0]), np.array([0.0, 0.0, 1.0, 5.0])
    feats = _feats(offsets, [q.id])
    assert extractive.postprocess([q], feats, [s], [e], allow_no_answer=True) == {
        q.id: q.context[0:8]
    }
    assert extractive.postprocess([q], feats, [s], [e], allow_no_answer=True, null_last=True) == {
        q.id: ""
    }


def test_a_decoders_answer_ending_on_the_windows_last_context_token_is_not_no_answer(tmp_path):
    """Without a CLS token the no-answer position is an appended EOS, not the last context
    token: an answer ending there keeps its own label, and is found at evaluation while the
    no-answer score is read elsewhere; windows stay within ``max_seq_length``."""
    bpe = AutoTokenizer.from_pretrained(ASSETS / "bpe")
    ctx = "Denver Broncos won"
    ex = [QAExample("q", "T", ctx, "Who won?", ("won",), (15,)),
          QAExample("n", "T", ctx, "Who lost?", (), ())]  # fmt: skip
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    train = extractive.train_features(ex, bpe, cfg)
    ids = train[0]["input_ids"]
    assert ids[-1] == bpe.eos_token_id and len(ids) <= cfg.max_seq_length
    assert bpe.decode(ids[train[0]["start_positions"] : train[0]["end_positions"] + 1]) == " won"
    assert train[0]["end_positions"] == len(ids) - 2  # the last context token
    assert train[1]["start_positions"] == train[1]["end_positions"] == len(ids) - 1
    feats = extractive.eval_features(ex[:1], bpe, cfg)
    offsets = feats[0]["offset_mapping"]
    assert offsets[-1] is None and offsets[-2] is not None and len(offsets) == len(ids)
    n = len(ids)
    s, e = np.zeros(n), np.zeros(n)
    s[train[0]["start_positions"]] = e[n - 2] = 3.0  # the answer "won"
    s[n - 1] = e[n - 1] = 2.0  # no answer, lower
    meta = feats.select_columns(["example_id", "offset_mapping"])[:]
    preds, odds = extractive.postprocess_with_null_odds(
        ex[:1], meta, [s], [e], allow_no_answer=True, null_last=True
    )
    assert preds["q"].strip() == "won" and odds["q"] == pytest.approx(-2.0)
    s[n - 1] = e[n - 1] = 4.0
    preds, odds = extractive.postprocess_with_null_odds(
        ex[:1], meta, [s], [e], allow_no_answer=True, null_last=True
    )
    assert preds == {"q": ""} and odds["q"] == pytest.approx(2.0)
    long = [QAExample("l", "T", " ".join(["word"] * 400), "Who?", (), ())]
    for feats in (
        extractive.train_features(long, bpe, cfg),
        extractive.eval_features(long, bpe, cfg),
    ):
        assert len(feats) > 1 and all(len(r) <= cfg.max_seq_length for r in feats["input_ids"])
        assert {r[-1] for r in feats["input_ids"]} == {bpe.eos_token_id}


def test_squad_v2_scoring_is_decided_by_the_dataset_not_the_eval_slice(tmp_path):
    """An eval slice of a SQuAD 2.0 set that happens to hold only answerable questions still
    lets the empty answer win; ``data.squad_v2`` overrides."""
    from qa_ray.training.loop import _setup_data

    class _Session:
        world_rank, world_size = 0, 1

    from qa_ray.config.trial import TrialConfig

    cfg = TrialConfig.model_validate(
        {
            "model": {"name_or_path": str(ASSETS / "wordpiece")},
            "data": {"path": str(ASSETS / "squad_v2_tiny.json"), "cache_dir": str(tmp_path),
                     "max_seq_length": 128, "doc_stride": 32},
        }
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    resolved, *_ = _setup_data(cfg, extractive, tok, _Session())
    assert resolved.data.squad_v2 is True
    v1 = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"path": str(ASSETS / "squad_v1_tiny.json")})}
    )
    assert _setup_data(v1, extractive, tok, _Session())[0].data.squad_v2 is False
    forced = v1.model_copy(update={"data": v1.data.model_copy(update={"squad_v2": True})})
    assert _setup_data(forced, extractive, tok, _Session())[0].data.squad_v2 is True


def test_squad_v2_evaluation_reports_the_best_no_answer_thresholds(tiny_model_dir, tmp_path):
    """On SQuAD 2.0 the extractive family scores its null odds as the official script's
    no-answer probabilities (best_exact, best_f1 and their thresholds); not on v1.1."""
    import contextlib

    import torch

    from qa_ray.config.trial import ModelConfig
    from qa_ray.models.build import build_model

    path = str(tiny_model_dir("bert"))
    tok = AutoTokenizer.from_pretrained(path)
    model = build_model(ModelConfig(name_or_path=path), torch.device("cpu"))
    for name, v2 in (("squad_v2_tiny.json", True), ("squad_v1_tiny.json", False)):
        ex = load_examples(str(ASSETS / name))[:12]
        cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path),
                         squad_v2=v2)  # fmt: skip
        feats = extractive.eval_features(ex, tok, cfg)
        out = extractive.evaluate(model, ex, feats, tok, cfg, torch.device("cpu"), 4,
                                  contextlib.nullcontext)  # fmt: skip
        best = {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"}
        assert (best <= set(out.scores)) == v2
