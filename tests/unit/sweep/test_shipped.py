"""The shipped sweeps and spaces: found by name, and a relative space path not found here
falls back to the shipped space of that file name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qa_ray.errors import ConfigError
from qa_ray.sweep import shipped
from qa_ray.sweep.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[3]


def test_find_by_name_sweeps_first():
    assert shipped.find("quickstart") == shipped.ROOT / "sweeps" / "quickstart.yaml"
    assert shipped.find("quickstart.yaml").parent.name == "sweeps"
    assert shipped.find("search_spaces/quickstart").parent.name == "search_spaces"
    assert shipped.find("extractive_full_space").parent.name == "search_spaces"
    assert shipped.find("nope") is None
    assert [p.name for p in shipped.shipped("sweeps")] == sorted(
        p.name for p in (ROOT / "sweeps").glob("*.yaml")
    )


def test_shipped_space_by_file_name_only_for_relative_yaml_paths():
    assert shipped.shipped_space("search_spaces/quickstart.yaml").name == "quickstart.yaml"
    assert shipped.shipped_space("elsewhere/quickstart.yaml").name == "quickstart.yaml"
    assert shipped.shipped_space("/abs/quickstart.yaml") is None
    assert shipped.shipped_space("search_spaces/mine.yaml") is None


def test_description_is_the_first_sentence_of_the_opening_comment(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("# BERT-base on SQuAD 2.0 (hub; v2), full vs LoRA. Assumes: GPUs.\nname: x\n")
    assert shipped.description(path) == "BERT-base on SQuAD 2.0 (hub; v2), full vs LoRA"
    assert shipped.description(path, width=10) == "BERT-ba..."


def test_a_sweep_outside_the_repo_reads_the_shipped_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = yaml.safe_load(
        (ROOT / "sweeps" / "albert_base_squad_v1_full_lora_f1_memory.yaml").read_text()
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    cfg = load_sweep_config(tmp_path / "s.yaml")
    assert "quantization_bits" in cfg.space.params
    # a file there wins over the shipped one
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "extractive_full_space.yaml").write_text(
        "params: {learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}}\n"
    )
    assert sorted(load_sweep_config(tmp_path / "s.yaml").space.params) == ["learning_rate"]
    sweep["search"]["space"] = "search_spaces/mine.yaml"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(ConfigError, match="search-space file not found.*mine.yaml"):
        load_sweep_config(tmp_path / "s.yaml")
