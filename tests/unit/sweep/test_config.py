"""The sweep file's own rules, and every sweep, search space and trial file the repo ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa_ray.cli import main
from qa_ray.config.files import load_trial_config, load_yaml, validate_model
from qa_ray.errors import ConfigError
from qa_ray.search.space import SearchSpace
from qa_ray.sweep.config import load_sweep_config
from tests.helpers import ASSETS

ROOT = Path(__file__).resolve().parents[3]
# Staged models (models/...) are not here on a fresh machine: a local stand-in folder.
LOCAL = [f"model.name_or_path={ASSETS / 'wordpiece'}", f"data.path={ASSETS / 'squad_v1_tiny.json'}"]


def _shipped(folder: str, key: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).glob("*.yaml") if key in load_yaml(p))


@pytest.mark.parametrize(
    "path",
    _shipped("sweeps", "search") + _shipped("benchmarks", "search"),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_shipped_sweep_validates_and_dry_runs(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name repo-relative search-space paths
    text = path.read_text()
    assert text.startswith("#"), f"{path} must open with a comment"
    assert "# Run:" in text or "benchmarks" in str(path), f"{path} must say how to run it"
    raw = load_yaml(path)
    staged = raw["model"]["name_or_path"].startswith("models/")
    local = LOCAL if staged else []
    if (raw.get("train") or {}).get("distill"):  # a teacher the user trains first: a stand-in
        local = [*local, f"train.distill.teacher={ASSETS / 'wordpiece'}"]
    assert main(["validate", str(path), *local]) == 0, capsys.readouterr().err
    assert main(["sweep", str(path), "--dry-run", *local]) == 0, capsys.readouterr().err
    assert "resource plan" in capsys.readouterr().out


def test_there_are_shipped_sweeps():
    assert len(_shipped("sweeps", "search")) >= 4


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=str)
def test_every_shipped_search_space_validates(path):
    validate_model(SearchSpace, load_yaml(path), str(path))


@pytest.mark.parametrize("path", _shipped("benchmarks", "output_dir"), ids=lambda p: p.name)
def test_every_shipped_trial_file_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    staged = load_yaml(path)["model"]["name_or_path"].startswith("models/")
    load_trial_config(path, LOCAL if staged else [])


def test_mo_asha_on_steps_evaluates_at_the_rungs(monkeypatch):
    monkeypatch.chdir(ROOT)
    over = [*LOCAL, "search.scheduler={grace: 4, reduction_factor: 3}", "train.max_steps=40"]
    cfg = load_sweep_config("sweeps/quickstart.yaml", over)
    assert cfg.trial_config().train.eval_at_steps == [4, 12, 36]
    # an explicit evaluation schedule is left alone
    cfg = load_sweep_config("sweeps/quickstart.yaml", [*over, "train.eval_steps=5"])
    assert cfg.trial_config().train.eval_at_steps == []


def test_constraints_reach_every_trial(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_sweep_config(
        "sweeps/quickstart.yaml", [*LOCAL, 'constraints=["peak_memory_mb <= 3000"]']
    )
    assert cfg.trial_config().constraints == ["peak_memory_mb <= 3000"]
    with pytest.raises(ConfigError, match="never reports 'eval_loss'"):
        load_sweep_config("sweeps/quickstart.yaml", [*LOCAL, 'constraints=["eval_loss <= 2"]'])
