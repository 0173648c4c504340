"""MLflow runs: credentials redacted, a teacher looked up by sweep and trial."""

import re

import pytest

from qa_ray.tracking.runs import redact_uri
from tests.unit.tracking.test_callback import _Trial


def test_credentials_are_redacted_from_uris():
    assert redact_uri("http://alice:s3cret@mlflow:5000/x") == "http://alice:***@mlflow:5000/x"
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert "s3cret" not in redact_uri("https://bob:s3cret@host")


def test_a_teacher_named_by_sweep_and_trial_is_that_trials_newest_checkpoint(tmp_path):
    """The callback tags each trial's run with the newest checkpoint Ray Train reported; a
    `sweep:SWEEP/TRIAL` teacher resolves to it, and every way it can be wrong says so."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    from qa_ray import metrics as m
    from qa_ray.config.trial import TrialConfig
    from qa_ray.errors import ConfigError
    from qa_ray.tracking.callback import MLflowSweepCallback
    from qa_ray.tracking.runs import resolve_teacher, start_parent_run

    assert m.CHECKPOINT_PATH == CHECKPOINT_PATH_KEY
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "teachers", "teach", params={}, artifacts={})
    cb = MLflowSweepCallback(uri, parent, ("step",))
    old, new = tmp_path / "checkpoint_000000", tmp_path / "checkpoint_000001"
    old.mkdir(), new.mkdir()
    cb.on_trial_result(0, [], _Trial("a_1", "trial-a"), {"step": 1, "checkpoint_path": str(old)})
    cb.on_trial_result(0, [], _Trial("a_1", "trial-a"), {"step": 2, "checkpoint_path": str(new)})
    cb.on_trial_result(0, [], _Trial("b_2", "trial-b"), {"step": 1})  # never checkpointed
    cb.on_trial_result(0, [], _Trial("c_3", "trial-c"), {"step": 1, "checkpoint_path": "/gone"})

    def student(teacher: str) -> TrialConfig:
        return TrialConfig.model_validate(
            {
                "model": {"name_or_path": "m"},
                "data": {"path": "d.json"},
                "train": {"distill": {"teacher": teacher}},
            }  # fmt: skip
        )

    resolved = resolve_teacher(student("sweep:teach/trial-a"), uri)
    assert resolved.train.distill.teacher == str(new)
    assert resolve_teacher(student(str(old)), uri).train.distill.teacher == str(old)
    for teacher, words in [
        ("sweep:teach/trial-z", "no such trial (its trials: trial-a, trial-b, trial-c)"),
        ("sweep:teach/trial-b", "recorded no checkpoint"),
        ("sweep:teach/trial-c", "'/gone' is not a folder on this machine"),
        ("sweep:other/trial-a", "no sweep parent run or run id 'other'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            resolve_teacher(student(teacher), uri)


def test_the_hypervolume_curve_has_one_reference_and_is_logged_again_when_it_must_change(
    tmp_path,
):
    """Points computed against different references were appended to one curve (a resume,
    an extension, a re-publish with --budgets)."""
    from mlflow.tracking import MlflowClient

    from qa_ray.metrics import HYPERVOLUME
    from qa_ray.tracking.runs import hypervolume_reference, log_hypervolume, start_parent_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "hv", "hv", params={}, artifacts={})

    def curve():
        history = MlflowClient(uri).get_metric_history(parent, HYPERVOLUME)
        newest = {}
        for h in sorted(history, key=lambda h: h.timestamp):
            newest[h.step] = h.value
        return newest, len(history)

    log_hypervolume(uri, parent, [1.0, 2.0], 1, (0.0, 2000.0))
    assert hypervolume_reference(uri, parent) == [0.0, 2000.0]
    log_hypervolume(uri, parent, [1.0, 2.0, 3.0], 2, (0.0, 2000.0))  # a resumed sweep's report
    assert curve() == ({1: 1.0, 2: 2.0, 3: 3.0}, 3)  # the new point only
    log_hypervolume(uri, parent, [0.5, 1.0, 1.5], 2, (0.0, 4000.0))  # the reference had to move
    assert hypervolume_reference(uri, parent) == [0.0, 4000.0]
    assert curve()[0] == {1: 0.5, 2: 1.0, 3: 1.5}  # every point against the new one


def test_a_configuration_not_launched_is_rejected_not_complete(tmp_path):
    from qa_ray.search.memory import Prediction
    from qa_ray.tracking.callback import MLflowSweepCallback
    from qa_ray.tracking.runs import start_parent_run, trial_records

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "rej", "rej", params={}, artifacts={})
    cb = MLflowSweepCallback(uri, parent, ("step",))
    cb.record_predicted_infeasible({"x": 1}, Prediction(5000.0, 100.0), "over 3000")
    (rec,) = trial_records(uri, parent)
    assert rec["status"] == "REJECTED"
