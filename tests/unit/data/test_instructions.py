"""Alpaca loading: records, validation messages, the seeded split."""

import gzip
import json

import pytest

from qa_ray.data.examples import DataError
from tests.helpers import ASSETS


def test_alpaca_records_load_with_and_without_input(tmp_path):
    from qa_ray.data.instructions import load_instructions

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
    from qa_ray.data.instructions import load_instructions

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
    from qa_ray.config.trial import DataConfig
    from qa_ray.data.instructions import load_instruction_train_eval

    cfg = DataConfig(path=str(ASSETS / "alpaca_tiny.json"), eval_fraction=0.25, split_seed=1)
    train, held = load_instruction_train_eval(cfg)
    assert (len(train), len(held)) == (36, 12)
    assert not {r.id for r in train} & {r.id for r in held}
    assert load_instruction_train_eval(cfg) == (train, held)
    other = load_instruction_train_eval(cfg.model_copy(update={"split_seed": 2}))[1]
    assert {r.id for r in other} != {r.id for r in held}
    capped = cfg.model_copy(update={"max_train_examples": 5, "max_eval_examples": 3})
    assert [len(x) for x in load_instruction_train_eval(capped)] == [5, 3]
