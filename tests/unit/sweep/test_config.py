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


def _sweep_file(tmp_path, **blocks) -> Path:
    import yaml

    data = {
        "name": "t",
        "model": {"name_or_path": str(ASSETS / "wordpiece")},
        "data": {"path": str(ASSETS / "squad_v1_tiny.json"), "max_seq_length": 128,
                 "doc_stride": 32},
        "search": {"space": {"params": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}},
    }  # fmt: skip
    for name, value in blocks.items():
        data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_stage_reports_at_once(tmp_path, monkeypatch):
    """A misspelt key, a missing model folder, a bad axis entry, an axis that breaks a rule
    with the sweep's fields and a bad constraint: one report holds them all."""
    monkeypatch.chdir(tmp_path)
    path = _sweep_file(
        tmp_path,
        model={"name_or_path": "./no-model"},
        train={"learnig_rate": 1e-4, "warmup_steps": 5},
        search={"space": {"params": {
            "dropout": {"type": "float", "low": 0.5, "high": 0.1},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.0},
        }}},
        constraints=["peak_memory_mb <= 8000", "memory < lots"],
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    errors = info.value.errors
    expected = [
        "`train.learnig_rate`: unknown key (value 0.0001); did you mean `learning_rate`?",
        "`search.space.params.dropout`: `low <= high` must hold, but got (low=0.5, high=0.1)",
        "`constraints[1]`: a constraint must look like 'metric <= number'",
        "`search.space`: `params.warmup_ratio`: a trial sampled at (warmup_ratio=0.0) is "
        "invalid: `train`: set `warmup_ratio` or `warmup_steps`, not both",
        "`model.name_or_path`: no such file or folder, but got './no-model'",
    ]
    assert len(errors) == len(expected), errors
    for words in expected:
        assert any(e.startswith(words) for e in errors), (words, errors)
    assert info.value.source == str(path)


def test_a_space_file_is_named_beside_the_sweeps_own_errors(tmp_path):
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {
        "lora_r": {"type": "int", "low": 8, "high": 2},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
    }}))  # fmt: skip
    path = _sweep_file(tmp_path, train={"warmup_steps": 5}, search={"space": str(space)},
                       data={"doc_strid": 3})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    errors = info.value.errors
    assert errors[0].startswith("`data.doc_strid`: unknown key") and "`doc_stride`" in errors[0]
    assert any(e.startswith(f"{space}: `params.lora_r`: `low <= high` must hold") for e in errors)
    assert any(e.startswith(f"{space}: `params.lr`: unknown axis") for e in errors)
    assert sum("`params.warmup_ratio`: a trial sampled at" in e for e in errors) == 2
    assert len(errors) == 5, errors


def test_constraint_flags_are_named_by_the_flag_and_added_to_the_files(tmp_path):
    path = _sweep_file(tmp_path, constraints=["peak_memory_mb <= 8000"])
    cfg = load_sweep_config(path, constraints=["eval_latency_ms_per_example <= 50"])
    assert cfg.constraints == ["peak_memory_mb <= 8000", "eval_latency_ms_per_example <= 50"]
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path, constraints=["vram <= 8000", "peak_memory_mb = 1"])
    first, second = info.value.errors
    assert first.startswith("`--constraint`: task 'extractive' never reports 'vram'")
    assert first.endswith("but got 'vram <= 8000'")
    assert second.startswith("`--constraint`: a constraint must look like")
    assert "(top level)" not in str(info.value)


def test_a_trial_file_is_not_a_sweep_file(tmp_path):
    import yaml

    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "m"}, "data": {"path": "d"}}))
    with pytest.raises(ConfigError, match=r"this is a trial file .*: run `qa-ray train "):
        load_sweep_config(path)


def test_mo_asha_refuses_memory_awares_fields_and_each_default_stays_one():
    from pydantic import ValidationError

    from qa_ray.sweep.config import MEMORY_AWARE_ONLY, RACE_ONLY, SchedulerConfig

    with pytest.raises(ValidationError, match=r"\(`noise_floor`, `warmup`\) are ignored by "
                       r"type 'mo_asha'.*but got \(noise_floor=2.0, warmup=5.0\)"):  # fmt: skip
        SchedulerConfig(grace=3, noise_floor=2.0, warmup=5.0)
    for name in MEMORY_AWARE_ONLY:  # every field named is memory_aware's (warmup the race's too)
        assert SchedulerConfig.model_fields[name].description.startswith("memory_aware")
    for name in RACE_ONLY:
        assert "race" in SchedulerConfig.model_fields[name].description.split(":")[0]
    aware = SchedulerConfig(type="memory_aware", grace=3, noise_floor=2.0, warmup=5.0)
    assert (aware.noise_floor, aware.memory_slack) == (2.0, 0.0)
    # a dump (a sweep's resume state, its curve table) holds every default and loads again
    dumped = SchedulerConfig(grace=3).model_dump()
    assert SchedulerConfig(**dumped) == SchedulerConfig(grace=3)
