"""SQuAD loading: formats, validation messages, splits, the score command."""

import gzip
import json

import pytest

from qa_ray.cli import main
from qa_ray.data.examples import DataError
from qa_ray.data.squad import gold_questions, load_examples, split_by_article
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


def test_score_cli_with_no_answer_probabilities(tmp_path, capsys):
    """``--na-prob FILE`` adds the official best thresholds; ``--na-prob-thresh`` (default 1.0,
    the official one) makes questions above it abstain in exact/f1; a file missing a predicted
    question or holding a non-number is bad input naming it."""
    from qa_ray.scoring.squad import score

    data = str(ASSETS / "squad_v2_tiny.json")
    ex = load_examples(data)
    preds = {e.id: ((e.answers or ("",))[0] if i % 3 else "wrong") for i, e in enumerate(ex)}
    na = {e.id: (0.9 if e.is_impossible else 0.2) + i / 1000 for i, e in enumerate(ex)}
    p, n = tmp_path / "p.json", tmp_path / "na.json"
    p.write_text(json.dumps(preds))
    n.write_text(json.dumps(na))
    golds = gold_questions(ex)
    for extra, thresh in (([], 1.0), (["--na-prob-thresh", "0.5"], 0.5)):
        assert main(["score", data, str(p), "--na-prob", str(n), *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out == pytest.approx(score(golds, preds, na, thresh).scores)
        assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(out)
    assert out["exact"] != score(golds, preds).scores["exact"]  # 0.5: unanswerables abstain
    n.write_text(json.dumps({**{k: v for k, v in na.items() if k != ex[0].id}, ex[1].id: "x"}))
    assert main(["score", data, str(p), "--na-prob", str(n)]) == 2
    err = capsys.readouterr().err
    assert str(n) in err and ex[0].id in err and "no no-answer probability" in err
    assert f"`{ex[1].id}`: probability must be a number" in err


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
