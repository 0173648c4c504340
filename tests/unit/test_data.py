import gzip
import json

import pytest

from qa_ray.cli import main
from qa_ray.data import DataError, load_examples, split_by_article
from tests.helpers import ASSETS


def test_official_flat_and_gzip_agree(tmp_path):
    official = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    flat = load_examples(str(ASSETS / "squad_flat_tiny.jsonl"))
    gz = tmp_path / "tiny.json.gz"
    gz.write_bytes(gzip.compress((ASSETS / "squad_v1_tiny.json").read_bytes()))
    assert official == flat == load_examples(str(gz))
    assert len(official) > 50 and not any(e.is_impossible for e in official)


def test_v2_unanswerable():
    ex = load_examples(str(ASSETS / "squad_v2_tiny.json"))
    assert any(e.is_impossible for e in ex) and any(not e.is_impossible for e in ex)


def _official(qas, context="Denver won the game."):
    return {
        "version": "1.1",
        "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}],
    }


def test_validation_names_file_record_and_field(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(
        json.dumps(
            _official(
                [
                    {
                        "id": "a",
                        "question": "Who?",
                        "answers": [{"text": "Denver", "answer_start": 3}],
                    },
                    {
                        "id": "a",
                        "question": "Who?",
                        "answers": [{"text": "Denver", "answer_start": 0}],
                    },
                    {"id": "c", "question": "", "answers": [{"text": "game", "answer_start": 15}]},
                ]
            )
        )
    )
    with pytest.raises(DataError) as e:
        load_examples(str(p))
    msg = str(e.value)
    assert str(p) in msg
    assert (
        "data[0].paragraphs[0].qas[0] (id 'a'): `answers.answer_start[0]` = 3 does not point at the answer 'Denver'"
        in msg
    )
    assert "qas[1] (id 'a'): duplicate `id`" in msg
    assert "qas[2] (id 'c'): `question` must be a non-empty string" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not JSON"),
        ('{"foo": 1}', "expected the official SQuAD format"),
        ('[{"id": "x", "context": "c", "question": "q", "answers": "nope"}]', "`answers` must be"),
        ("[1, 2]", "record 0: expected an object, but got 1"),
    ],
)
def test_wrong_schema(tmp_path, content, expected):
    p = tmp_path / "d.json"
    p.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_examples(str(p))


def test_split_by_article_is_deterministic_and_disjoint():
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    a_train, a_eval = split_by_article(ex, 0.5, seed=3)
    b_train, b_eval = split_by_article(ex, 0.5, seed=3)
    assert a_eval == b_eval and a_train == b_train
    assert not {e.title for e in a_train} & {e.title for e in a_eval}
    assert len(a_train) + len(a_eval) == len(ex)
    _, tail = split_by_article(ex, 0.25, seed=None)
    assert {e.title for e in tail} == {ex[-1].title}  # last article in file order


def test_score_cli_and_bad_predictions(tmp_path, capsys):
    ex = load_examples(str(ASSETS / "squad_v2_tiny.json"))
    preds = {e.id: (e.answers[0] if e.answers else "") for e in ex[1:]}
    preds["unknown-id"] = "x"
    p = tmp_path / "p.json"
    p.write_text(json.dumps(preds))
    assert main(["score", str(ASSETS / "squad_v2_tiny.json"), str(p)]) == 0
    out, err = capsys.readouterr()
    scores = json.loads(out)
    n = len(ex)
    assert scores["total"] == n and scores["exact"] == pytest.approx(100 * (n - 1) / n)
    assert "1 question(s) have no prediction" in err and "unknown question ids" in err
    p.write_text("[1, 2]")
    assert main(["score", str(ASSETS / "squad_v2_tiny.json"), str(p)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_alpaca_records_load_with_and_without_input(tmp_path):
    from qa_ray.data import load_instructions

    records = load_instructions(str(ASSETS / "alpaca_tiny.json"))
    assert len(records) == 48
    assert (
        records[0].instruction == "Give three tips for staying healthy." and records[0].input == ""
    )
    assert any(r.input for r in records)
    gz = tmp_path / "a.json.gz"  # gzipped, and JSON lines with `input` absent
    gz.write_bytes(gzip.compress(json.dumps([{"instruction": "Hi", "output": "Hello"}]).encode()))
    assert load_instructions(str(gz))[0].input == ""
    lines = tmp_path / "a.jsonl"
    lines.write_text(
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": null, "output": "d"}\n'
    )
    assert [r.output for r in load_instructions(str(lines))] == ["b", "d"]


def test_alpaca_validation_names_file_record_and_field(tmp_path):
    from qa_ray.data import load_instructions

    p = tmp_path / "bad.json"
    p.write_text(
        json.dumps(
            [
                {"instruction": "ok", "input": "", "output": "fine"},
                {"instruction": "no output", "input": ""},
                {"instruction": "", "input": 3, "output": "x"},
                "not a record",
            ]
        )
    )
    with pytest.raises(DataError) as e:
        load_instructions(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: 4 errors")
    assert "record 1: `output` must be a string, but got None" in msg
    assert "record 2: `instruction` must be a non-empty string, but got ''" in msg
    assert "record 2: `input` must be a string (or absent), but got 3" in msg
    assert "record 3: expected an object" in msg
    # An empty output (the Alpaca release has 28) is skipped, not an error.
    p.write_text(
        json.dumps([{"instruction": "a", "output": ""}, {"instruction": "b", "output": "c"}])
    )
    assert [r.id for r in load_instructions(str(p))] == ["1"]
    p.write_text(json.dumps({"instruction": "a dict, not a list"}))
    with pytest.raises(DataError, match="expected a list of {instruction, input, output}"):
        load_instructions(str(p))


def test_alpaca_split_is_seeded_disjoint_and_capped():
    from qa_ray.config import DataConfig
    from qa_ray.data import load_instruction_train_eval

    cfg = DataConfig(path=str(ASSETS / "alpaca_tiny.json"), eval_fraction=0.25, split_seed=1)
    train, held = load_instruction_train_eval(cfg)
    assert (len(train), len(held)) == (36, 12)
    assert not {r.id for r in train} & {r.id for r in held}
    assert load_instruction_train_eval(cfg) == (train, held)
    other = load_instruction_train_eval(cfg.model_copy(update={"split_seed": 2}))[1]
    assert {r.id for r in other} != {r.id for r in held}
    capped = cfg.model_copy(update={"max_train_examples": 5, "max_eval_examples": 3})
    assert [len(x) for x in load_instruction_train_eval(capped)] == [5, 3]


@pytest.mark.parametrize("task, fixture", [("instruction", "alpaca"), ("extractive", "squad")])
def test_a_sweep_over_a_bad_local_data_file_exits_2_before_ray_starts(
    tmp_path, capsys, task, fixture
):
    """The driver loads local data before any cluster work: a bad record is exit code 2."""
    import ray
    import yaml

    bad = tmp_path / "bad.json"
    if fixture == "alpaca":
        bad.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]))
        expected = "record 1: `output` must be a string, but got None"
    else:
        data = json.loads((ASSETS / "squad_v1_tiny.json").read_text())
        data["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = -4
        bad.write_text(json.dumps(data))
        expected = "data[1].paragraphs[0].qas[0]"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "bad-data",
                "model": {"name_or_path": "some/model", "task": task},
                "data": {"path": str(bad)},
                "search": {
                    "space": {
                        "params": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}
                    }
                },
                "storage_path": str(tmp_path / "runs"),
                "objectives": [
                    {"metric": "eval_loss" if task == "instruction" else "eval_f1", "mode": "max"}
                ],
            }
        )
    )
    for command in ("validate", "sweep"):
        assert main([command, str(sweep)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and expected in err, err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_feature_cache_key_covers_tokenizer_properties_that_change_features():
    """Two tokenizers that differ only in their EOS/BOS ids or truncation side make different
    features, so they must not share a cache entry."""
    from transformers import AutoTokenizer

    from qa_ray.data import tokenizer_fingerprint

    base = AutoTokenizer.from_pretrained(ASSETS / "bpe")
    seen = {tokenizer_fingerprint(base)}
    for change in (
        {"eos_token": "<pad>"},
        {"bos_token": "</s>"},
        {"truncation_side": "left"},
        {"padding_side": "left" if base.padding_side == "right" else "right"},
    ):
        tok = AutoTokenizer.from_pretrained(ASSETS / "bpe")
        for k, v in change.items():
            setattr(tok, k, v)
        fp = tokenizer_fingerprint(tok)
        assert fp not in seen, change
        seen.add(fp)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(ASSETS / "bpe")) in seen


def test_data_fingerprint_is_the_field_values_so_existing_caches_still_hit():
    """The examples' cache key hashes each example's field values in order (what
    ``dataclasses.astuple`` gives, without its deep copy): caches written before still hit,
    and any field change misses."""
    import dataclasses
    import hashlib

    from qa_ray.data import _fingerprint

    examples = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    before = hashlib.sha256()
    for e in examples:
        before.update(json.dumps(dataclasses.astuple(e)).encode())
    assert _fingerprint(examples) == before.hexdigest()
    changed = [dataclasses.replace(examples[0], answer_starts=(0,)), *examples[1:]]
    assert _fingerprint(changed) != _fingerprint(examples)
    assert _fingerprint([]) == hashlib.sha256().hexdigest()


def test_tokenizing_never_hashes_the_build_function(tmp_path, monkeypatch):
    """datasets hashes a map function with dill unless given a fingerprint, and dill's scan of
    its globals disassembles its bytecode (about 900 lines in a Ray worker's log)."""
    from datasets import fingerprint
    from transformers import AutoTokenizer

    from qa_ray.config import DataConfig
    from qa_ray.data import load_examples
    from qa_ray.tasks import extractive

    real, hashed = fingerprint.Hasher.hash, []

    def hash_no_functions(cls, value):  # (datasets swallows any error raised in here)
        if callable(value):
            hashed.append(value)
        return real(value)

    monkeypatch.setattr(fingerprint.Hasher, "hash", classmethod(hash_no_functions))
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    assert len(extractive.train_features(ex, tok, cfg)) > 0
    assert len(extractive.eval_features(ex, tok, cfg)) > 0
    assert hashed == []
