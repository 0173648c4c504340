import re

import pytest

from qa_ray.tracking import failure_reason, redact_uri


def test_failure_reason_is_the_exceptions_own_first_line():
    hub = """Traceback (most recent call last):
  File "x.py", line 3, in <module>
    load()
ray.exceptions.RayTaskError(TrainingFailedError): ray::_run_trial() (pid=1)
  File "y.py", line 9, in load
OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them.
Check your internet connection or see how to run the library in offline mode at 'https://x'.
"""
    assert failure_reason(hub) == (
        "OSError: We couldn't connect to 'https://huggingface.co' to load the files, and "
        "couldn't find them."
    )
    sampled = (
        "ValueError: sampled configuration is invalid: `model.lora.r`: Input should be "
        "greater than 0, but got 0\n"
    )
    assert failure_reason(sampled) == sampled.strip()
    assert failure_reason("") == "unknown error"
    assert failure_reason("something odd\nlast words") == "last words"


def test_credentials_are_redacted_from_uris():
    assert redact_uri("http://alice:s3cret@mlflow:5000/x") == "http://alice:***@mlflow:5000/x"
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert "s3cret" not in redact_uri("https://bob:s3cret@host")


def test_a_trial_that_starts_over_on_resume_writes_no_second_history(tmp_path):
    """The resumed sweep's callback (a new one, as Tune unpickles it) finds the child run and
    skips the steps it already holds."""
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from qa_ray.tracking import MLflowSweepCallback, child_runs, start_parent_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "t", "s", params={}, artifacts={})
    trial = SimpleNamespace(trial_id="abc_00001", trial_name="trial-1", config={"lr": 0.1})
    first = MLflowSweepCallback(uri, parent, ("step", "train_loss"))
    resumed = pickle.loads(pickle.dumps(first))
    for step in (60, 120):
        first.on_trial_result(0, [], trial, {"step": step, "train_loss": 1.0 / step})
    resumed = pickle.loads(pickle.dumps(resumed))
    for step in (60, 120, 180):  # started over without a checkpoint
        resumed.on_trial_result(0, [], trial, {"step": step, "train_loss": 2.0 / step})
    (run,) = child_runs(uri, parent)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")
    assert [(h.step, h.value) for h in history] == [(60, 1 / 60), (120, 1 / 120), (180, 2 / 180)]


class _Trial:
    def __init__(self, trial_id: str, name: str):
        self.trial_id, self.trial_name, self.config = trial_id, name, {}

    def __str__(self):
        return self.trial_name


def test_a_teacher_named_by_sweep_and_trial_is_that_trials_newest_checkpoint(tmp_path):
    """The callback tags each trial's run with the newest checkpoint Ray Train reported; a
    `sweep:SWEEP/TRIAL` teacher resolves to it, and every way it can be wrong says so."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    from qa_ray import metrics as m
    from qa_ray.config import ConfigError, TrialConfig
    from qa_ray.tracking import MLflowSweepCallback, resolve_teacher, start_parent_run

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
