"""The resume logic on its own: stages, what a resume may change, the study's state."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from qa_ray.errors import ConfigError
from qa_ray.sweep import state as st
from qa_ray.sweep.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets"
LOCAL = [
    f"model.name_or_path={ASSETS / 'wordpiece'}",
    f"data.path={ASSETS / 'squad_v1_tiny.json'}",
]


def _cfg(tmp_path, *overrides: str):
    return load_sweep_config(
        str(ROOT / "sweeps" / "quickstart.yaml"),
        [*LOCAL, f"storage_path={tmp_path / 'runs'}", "name=s", *overrides],
    )


def test_a_local_sweep_keeps_its_state_beside_its_results_a_bucket_one_under_the_state_dir(
    tmp_path, monkeypatch
):
    cfg = _cfg(tmp_path)
    assert st.state_dir(cfg) == tmp_path / "runs" / "s" == Path(st.experiment_path(cfg))
    monkeypatch.setenv("QA_RAY_STATE_DIR", str(tmp_path / "heads"))
    bucket = cfg.model_copy(update={"storage_path": "s3://b/sweeps"})
    assert st.experiment_path(bucket) == "s3://b/sweeps/s"
    assert st.state_dir(bucket) == tmp_path / "heads" / "s"


def test_stages_a_new_sweep_one_a_resume_as_planned_an_extension_one_more(tmp_path):
    cfg = _cfg(tmp_path, "search.num_samples=4")
    (first,) = st.plan_stages(cfg, {}, st.experiment_path(cfg), resume=False)
    assert first == {"storage_path": str(tmp_path / "runs"), "name": "s", "num_samples": 4}
    saved = {"stages": [first]}
    assert st.plan_stages(cfg, json.loads(json.dumps(saved)), "x", resume=True) == [first]
    more = _cfg(tmp_path, "search.num_samples=7")
    stages = st.plan_stages(more, json.loads(json.dumps(saved)), "EXP", resume=True)
    assert stages[1] == {"storage_path": "EXP", "name": "extend-1", "num_samples": 3}
    assert st.stage_path(stages[1]) == "EXP/extend-1"


def _saved(tmp_path, cfg, **state):
    folder = st.state_dir(cfg)
    folder.mkdir(parents=True)
    body = {"config": cfg.model_dump(mode="json"), "tracking_uri": "sqlite:///m.db", **state}
    (folder / st.STATE_FILE).write_text(json.dumps(body))


def test_a_resume_may_raise_num_samples_and_nothing_else(tmp_path):
    cfg = _cfg(tmp_path, "search.num_samples=4")
    _saved(tmp_path, cfg, stages=[{"storage_path": "r", "name": "s", "num_samples": 4}])
    assert st.check_resume(_cfg(tmp_path, "search.num_samples=6"), "x", False) == "sqlite:///m.db"
    with pytest.raises(ConfigError) as e:
        st.check_resume(_cfg(tmp_path, "search.num_samples=2", "train.max_steps=3"), "x", False)
    text = "\n".join(e.value.errors)
    assert "`train.max_steps`" in text and "can be raised to extend the sweep, not lowered" in text
    with pytest.raises(ConfigError, match="keeps its store"):
        st.check_resume(cfg, "sqlite:///other.db", explicit_uri=True)


def test_no_state_no_resume(tmp_path):
    with pytest.raises(ConfigError, match="run the sweep without --resume"):
        st.check_resume(_cfg(tmp_path), "x", False)


def test_the_study_exists_once_created_and_is_closed_with_no_trial_left_running(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    assert not st.study_exists(folder, "s")
    study = optuna.create_study(study_name="s", storage=st.study_storage(folder))
    study.ask()
    done = study.ask()
    study.tell(done, 1.0)
    assert st.study_exists(folder, "s") and not st.study_exists(folder, "other")
    st.close_study(folder, "s")
    states = [
        t.state for t in optuna.load_study(study_name="s", storage=st.study_storage(folder)).trials
    ]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    st.close_study(folder, "never-created")  # nothing to close: no error


def test_a_storage_path_the_driver_cannot_write_is_refused_before_ray(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = _cfg(tmp_path).model_copy(update={"storage_path": str(tmp_path / "file" / "runs")})
    with pytest.raises(ConfigError, match="is not a folder"):
        st.check_storage_path(cfg, "sweep.yaml")
