"""The resource plan: how many trials run at once, locally and on an autoscaling cluster."""

from pathlib import Path

import pytest

from qa_ray.config import ConfigError
from qa_ray.sweep import plan
from qa_ray.sweep_config import load_sweep_config

QUICKSTART = str(Path(__file__).resolve().parents[2] / "sweeps" / "quickstart.yaml")


def _cfg(*overrides: str):
    return load_sweep_config(QUICKSTART, list(overrides))


def test_local_concurrency_is_what_fits_capped_by_the_setting():
    assert (
        plan(_cfg("search.max_concurrent_trials=null"), {"CPU": 7.0})["max_concurrent_trials"] == 3
    )
    assert plan(_cfg("search.max_concurrent_trials=2"), {"CPU": 8.0})["max_concurrent_trials"] == 2
    assert plan(_cfg("search.max_concurrent_trials=5"), {"CPU": 4.0})["max_concurrent_trials"] == 2


def test_fractional_gpus_pack_several_trials_on_one_gpu():
    cfg = _cfg(
        "search.max_concurrent_trials=null",
        "resources.cpus_per_worker=1",
        "resources.gpus_per_worker=0.5",
    )
    p = plan(cfg, {"CPU": 16.0, "GPU": 1.0})
    assert p["per_trial"] == {"CPU": 1.0, "GPU": 0.5}
    assert p["max_concurrent_trials"] == 2


def test_a_trial_that_cannot_fit_locally_is_a_config_error():
    cfg = _cfg("resources.gpus_per_worker=1")
    with pytest.raises(ConfigError, match="resources"):
        plan(cfg, {"CPU": 2.0})


def test_an_autoscaling_cluster_is_not_judged_by_the_nodes_up_now():
    # A head without CPUs or GPUs: the autoscaler adds the nodes the trials wait for.
    cfg = _cfg("resources.gpus_per_worker=1", "search.max_concurrent_trials=4")
    p = plan(cfg, {}, elastic=True)
    assert p["max_concurrent_trials"] == 4
    # Unset: what fits now, at least one.
    assert (
        plan(_cfg("search.max_concurrent_trials=null"), {}, elastic=True)["max_concurrent_trials"]
        == 1
    )


def test_trial_line_shows_progress_scores_memory_and_time_left():
    from qa_ray.sweep import trial_line

    line = trial_line(
        "trial-1",
        {"step": 60, "planned_steps": 300, "train_loss": 1.2345, "eval_f1": 12.3,
         "eval_exact": 8.0, "peak_memory_mb": 620.4, "train_seconds": 120.0},
    )  # fmt: skip
    assert line == (
        "[qa-ray] trial-1 step 60/300 | loss 1.234 | F1 12.30 EM 8.00 | peak 620 MB | "
        "2.0 min trained, about 8.0 min left"
    )
    # a time budget that ends sooner wins
    budgeted = trial_line(
        "trial-2", {"step": 10, "planned_steps": 1000, "train_seconds": 60.0,
                    "time_budget_seconds": 180.0},
    )  # fmt: skip
    assert budgeted.endswith("1.0 min trained, about 2.0 min left")


# ---- out of memory is infeasible, other failures stay failures ---------------------------------


def _worker_group_error(failure: Exception):
    from ray.train import WorkerGroupError

    return WorkerGroupError("rank 0 failed", {0: failure})


def test_out_of_memory_is_found_in_a_failed_training_run():
    import ray.exceptions

    from qa_ray.sweep import out_of_memory
    from qa_ray.train import TrialOutOfMemory

    oom = TrialOutOfMemory(23456.0, "out of memory at 23456 MB peak (OutOfMemoryError: CUDA)")
    assert out_of_memory(_worker_group_error(oom)) == (23456.0, str(oom))
    # as Ray hands a worker's exception over: a RayTaskError that is also the original type
    wrapped = ray.exceptions.RayTaskError("train_fn", "Traceback ...", oom).as_instanceof_cause()
    assert out_of_memory(_worker_group_error(wrapped))[0] == 23456.0
    killed = ray.exceptions.OutOfMemoryError(
        "Task was killed due to the node running low on memory.\nMemory on the node was 30.1GB / 31.0GB"
    )
    assert out_of_memory(_worker_group_error(killed)) == (
        None,
        "out of memory: Task was killed due to the node running low on memory.",
    )
    chained = RuntimeError("step failed")
    chained.__cause__ = oom
    assert out_of_memory(_worker_group_error(chained))[0] == 23456.0


def test_other_failures_are_not_out_of_memory():
    from qa_ray.sweep import out_of_memory

    assert out_of_memory(_worker_group_error(ValueError("shape mismatch"))) is None
    assert out_of_memory(_worker_group_error(RuntimeError("NCCL timeout"))) is None


def test_every_report_reaches_tune_with_every_objective_key(monkeypatch):
    """Reports between evaluations (progress, checkpoints, a trial stopped over budget before
    it was scored) have no scores: they reach Tune with them as None (Tune refuses a result
    without the searcher's metrics)."""
    from ray.tune.integration import ray_train

    from qa_ray import metrics as m
    from qa_ray.sweep import _reports_to_tune

    sent = []
    monkeypatch.setattr(ray_train, "_in_tune_session", lambda: True)
    monkeypatch.setattr(ray_train.TuneReportCallback, "__init__", lambda self: None)
    monkeypatch.setattr(
        ray_train.TuneReportCallback,
        "after_report",
        lambda self, ctx, metrics, ckpt: sent.append(metrics[0]),
    )
    cb = _reports_to_tune((m.EVAL_F1, m.PEAK_MEMORY_MB))
    cb.after_report(None, [{m.STEP: 3, m.PEAK_MEMORY_MB: 900.0}], None)  # progress
    cb.after_report(None, [{m.STEP: 4, m.EVAL_F1: 1.0, m.PEAK_MEMORY_MB: 900.0}], None)
    cb.after_report(None, [{m.STEP: 0, m.PEAK_MEMORY_MB: 9e9, m.INFEASIBLE: 1.0}], None)
    assert [(r[m.STEP], r[m.EVAL_F1], r[m.PEAK_MEMORY_MB]) for r in sent] == [
        (3, None, 900.0),
        (4, 1.0, 900.0),
        (0, None, 9e9),
    ]


class _Tty:
    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


class _Trial:
    def __init__(self, name, status="RUNNING", last_result=None):
        self.name, self.status, self.last_result = name, status, last_result or {}

    def __str__(self):
        return self.name


def test_the_live_line_follows_progress_on_a_terminal_and_gives_way_to_evaluations():
    from qa_ray import metrics as m
    from qa_ray.sweep import ProgressCallback
    from qa_ray.sweep_config import Objective

    objectives = [
        Objective(metric=m.EVAL_F1, mode="max"),
        Objective(metric=m.PEAK_MEMORY_MB, mode="min"),
    ]
    progress = {m.STEP: 10, m.PLANNED_STEPS: 40, m.TRAIN_LOSS: 2.5, m.EVAL_F1: None,
                m.PEAK_MEMORY_MB: 900.0, m.TRAIN_SECONDS: 60.0}  # fmt: skip
    evaluated = {**progress, m.STEP: 20, m.EVAL_F1: 33.0, m.TRAIN_SECONDS: 120.0}
    a, b = _Trial("trial-a"), _Trial("trial-b")

    term = _Tty(True)
    cb = ProgressCallback(objectives, 2, stream=term)
    cb.on_trial_result(0, [a, b], a, progress)
    cb.on_trial_result(0, [a, b], b, {**progress, m.STEP: 5})
    assert term.text.endswith(
        "\r\x1b[K[qa-ray] running: trial-a 10/40 loss 2.50 900 MB 3.0 min left || "
        "trial-b 5/40 loss 2.50 900 MB 7.0 min left"
    )
    term.text = ""
    cb.on_trial_result(0, [a, b], a, evaluated)  # a permanent line; the live line is redrawn
    line, live = term.text.split("\n")
    assert line.startswith("\r\x1b[K[qa-ray] trial-a step 20/40 | loss 2.500 | F1 33.00")
    assert live == "[qa-ray] running: trial-b 5/40 loss 2.50 900 MB 7.0 min left"

    logs = _Tty(False)  # CI logs, a pipe: no live line, the evaluations only
    cb = ProgressCallback(objectives, 2, stream=logs)
    cb.on_trial_result(0, [a], a, progress)
    cb.on_trial_result(0, [a], a, evaluated)
    assert logs.text.count("\n") == 1 and "running:" not in logs.text and "\r" not in logs.text


def test_trial_actors_are_reused_only_when_no_scheduler_stops_trials():
    """A trial stopped early is still inside TorchTrainer.fit(): only killing its actor ends
    that run, so with a scheduler each trial gets a fresh actor."""
    from qa_ray.scheduler import MOASHA
    from qa_ray.sweep import _tune_config

    p = plan(_cfg(), {"CPU": 2.0})
    assert _tune_config(None, None, 3, p).reuse_actors is True
    scheduler = MOASHA([("eval_f1", "max"), ("peak_memory_mb", "min")], grace=2)
    assert _tune_config(None, scheduler, 3, p).reuse_actors is False


class _FakeTrainer:
    env: dict = {}

    def __init__(self, *args, **kwargs):
        pass

    def fit(self):
        import os

        _FakeTrainer.env = dict(os.environ)


def test_the_train_controller_polls_its_workers_twice_a_second_unless_told_otherwise(
    monkeypatch,
):
    """Ray Train's controller copies RAY_TRAIN_* variables from the process calling fit():
    the trial function sets the poll interval there, and leaves one the user set alone."""
    import ray.train.torch
    from ray import tune

    from qa_ray import sweep
    from qa_ray.sweep import _run_trial

    class _Ctx:
        def get_experiment_name(self):
            return "exp"

        def get_trial_name(self):
            return "trial-1"

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", _FakeTrainer)
    monkeypatch.setattr(tune, "get_context", lambda: _Ctx())
    monkeypatch.setattr(sweep, "_reports_to_tune", lambda objectives: ray.train.UserCallback())
    base = _cfg().trial_config().model_dump()
    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    _run_trial({}, base, "/tmp/unused", ("eval_f1",))
    assert _FakeTrainer.env[name] == "0.5"
    monkeypatch.setenv(name, "3")
    _run_trial({}, base, "/tmp/unused", ("eval_f1",))
    assert _FakeTrainer.env[name] == "3"


def test_a_trial_runs_no_ray_data_actor_when_it_passes_no_datasets():
    """Ray Train V2 gives every run a datasets callback, which starts a Ray Data
    DatasetManager actor (a process of its own) whether or not the run has datasets. A trial
    reads its own data, so its trainer leaves that callback out, and keeps it when given
    datasets. The first assertion fails once Ray stops adding it: then the override can go."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from qa_ray.sweep import _trainer_class

    def names(trainer):
        return [type(c) for c in trainer._create_default_callbacks()]

    run = RunConfig(storage_path="/tmp/unused")
    ray_own = names(TorchTrainer(lambda: None, run_config=run))
    assert DatasetsCallback in ray_own
    ours = names(_trainer_class()(lambda: None, run_config=run))
    assert ours == [c for c in ray_own if c is not DatasetsCallback]
    with_data = _trainer_class()(lambda: None, run_config=run, datasets={"train": [1]})
    assert DatasetsCallback in names(with_data)
