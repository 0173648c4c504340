"""Missing local paths: named with their field and value, and, for the files the shipped sweeps
name, how to get them."""

from __future__ import annotations

import pytest

from qa_ray.config.paths import check_local_paths
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError


def _errors(model: str, data: str) -> list[str]:
    cfg = TrialConfig(model={"name_or_path": model}, data={"path": data})
    with pytest.raises(ConfigError) as info:
        check_local_paths(cfg, "s.yaml")
    return info.value.errors


def test_a_missing_squad_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (err,) = _errors("google-bert/bert-base-uncased", "squad/dev-v2.0.json")
    assert err.startswith("`data.path`: no such file or folder, but got 'squad/dev-v2.0.json'")
    assert "It is SQuAD 2.0 dev" in err
    assert (
        "`mkdir -p squad && curl -fL https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json -o squad/dev-v2.0.json`"
        in err
    )
    assert "data.path=rajpurkar/squad_v2 data.split=validation" in err
    assert "get_data.sh" not in err  # it writes data/squad/NAME.json.gz only
    (err,) = _errors("google-bert/bert-base-uncased", "data/squad/dev-v1.1.json.gz")
    assert "`bash scripts/get_data.sh`" in err and "| gzip > data/squad/dev-v1.1.json.gz" in err


def test_an_unstaged_model_says_how_to_stage_it_and_hub_ids_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.json").write_text("{}")
    (err,) = _errors("models/all-MiniLM-L6-v2", "d.json")
    assert err.startswith("`model.name_or_path`: no such file or folder")
    assert "`bash scripts/stage_minilm.sh models`" in err
    # the hub's own id of that model is not a local path
    check_local_paths(
        TrialConfig(model={"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
                    data={"path": "d.json"}), "s.yaml")  # fmt: skip


def test_other_missing_files_get_no_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (err,) = _errors("google-bert/bert-base-uncased", "./mine.json")
    assert err.endswith(f"(relative paths are resolved from the current directory, {tmp_path})")
