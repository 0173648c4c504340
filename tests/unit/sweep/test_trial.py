"""The Tune trial function: out of memory found in a failed run, reports to Tune, the Train run it builds."""

from tests.unit.sweep.test_resources import _cfg

# ---- out of memory is infeasible, other failures stay failures ---------------------------------


def _worker_group_error(failure: Exception):
    from ray.train import WorkerGroupError

    return WorkerGroupError("rank 0 failed", {0: failure})


def test_out_of_memory_is_found_in_a_failed_training_run():
    import ray.exceptions

    from qa_ray.sweep.trial import out_of_memory
    from qa_ray.training.memory import TrialOutOfMemory

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
    from qa_ray.sweep.trial import out_of_memory

    assert out_of_memory(_worker_group_error(ValueError("shape mismatch"))) is None
    assert out_of_memory(_worker_group_error(RuntimeError("NCCL timeout"))) is None


def test_every_report_reaches_tune_with_every_objective_key(monkeypatch):
    """Reports between evaluations (progress, checkpoints, a trial stopped over budget before
    it was scored) have no scores: they reach Tune with them as None (Tune refuses a result
    without the searcher's metrics)."""
    from ray.tune.integration import ray_train

    from qa_ray import metrics as m
    from qa_ray.sweep.trial import _reports_to_tune

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


class _FakeTrainer:
    env: dict = {}

    def __init__(self, *args, **kwargs):
        pass

    def fit(self):
        import os

        _FakeTrainer.env = dict(os.environ)


def _outside_tune(monkeypatch, trainer) -> None:
    """What run_trial needs of Tune and Ray Train, without them: ``trainer`` as TorchTrainer,
    a trial context, and a plain callback for the reports."""
    import ray.train.torch
    from ray import tune

    from qa_ray.sweep import trial as sweep

    class _Ctx:
        def get_experiment_name(self):
            return "exp"

        def get_trial_name(self):
            return "trial-1"

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", trainer)
    monkeypatch.setattr(tune, "get_context", lambda: _Ctx())
    monkeypatch.setattr(sweep, "_reports_to_tune", lambda objectives: ray.train.UserCallback())


def test_the_train_controller_polls_its_workers_twice_a_second_unless_told_otherwise(
    monkeypatch,
):
    """Ray Train's controller copies RAY_TRAIN_* variables from the process calling fit():
    the trial function sets the poll interval there, and leaves one the user set alone."""

    from qa_ray.sweep.trial import run_trial

    _outside_tune(monkeypatch, _FakeTrainer)
    base = _cfg().trial_config().model_dump()
    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    run_trial({}, base, "/tmp/unused", ("eval_f1",))
    assert _FakeTrainer.env[name] == "0.5"
    monkeypatch.setenv(name, "3")
    run_trial({}, base, "/tmp/unused", ("eval_f1",))
    assert _FakeTrainer.env[name] == "3"


def test_a_trial_runs_no_ray_data_actor_when_it_passes_no_datasets():
    """Ray Train V2 gives every run a datasets callback, which starts a Ray Data
    DatasetManager actor (a process of its own) whether or not the run has datasets. A trial
    reads its own data, so its trainer leaves that callback out, and keeps it when given
    datasets. The first assertion fails once Ray stops adding it: then the override can go."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from qa_ray.sweep.trial import _trainer_class

    def names(trainer):
        return [type(c) for c in trainer._create_default_callbacks()]

    run = RunConfig(storage_path="/tmp/unused")
    ray_own = names(TorchTrainer(lambda: None, run_config=run))
    assert DatasetsCallback in ray_own
    ours = names(_trainer_class()(lambda: None, run_config=run))
    assert ours == [c for c in ray_own if c is not DatasetsCallback]
    with_data = _trainer_class()(lambda: None, run_config=run, datasets={"train": [1]})
    assert DatasetsCallback in names(with_data)


def test_a_packed_trial_asks_for_its_request_and_its_workers_cap_themselves(monkeypatch):
    """The sampled config's memory request becomes each worker's Ray resources (memory and the
    share of the cluster's largest GPU) and the cap the loop sets (resources.gpu_memory_mb); a
    loop told to stay on the CPU while holding GPUs gets gloo, as NCCL needs CUDA tensors."""

    from qa_ray.sweep.trial import run_trial

    seen = {}

    class Trainer:
        def __init__(self, loop, **kwargs):
            seen.update(kwargs)

        def fit(self):
            pass

    _outside_tune(monkeypatch, Trainer)
    base = (
        _cfg("resources.gpus_per_worker=1", "resources.pack_by_memory=true", "train.device=cpu")
        .trial_config()
        .model_dump()
    )
    run_trial({"memory_request_mb": 6000.0}, base, "/tmp/unused", ("eval_f1",), device_mb=23028.0)
    assert seen["scaling_config"].resources_per_worker == {
        "CPU": 2.0, "GPU": 0.2606, "gpu_memory_mb": 6000.0,
    }  # fmt: skip
    assert seen["train_loop_config"]["resources"]["gpu_memory_mb"] == 6000.0
    assert seen["torch_config"].backend == "gloo"
    # not packed: the fixed share, no cap, and Ray's own backend choice
    base = _cfg("resources.gpus_per_worker=0.5").trial_config().model_dump()
    run_trial({"memory_request_mb": 6000.0}, base, "/tmp/unused", ("eval_f1",), device_mb=23028.0)
    assert seen["scaling_config"].resources_per_worker == {"CPU": 2.0, "GPU": 0.5}
    assert seen["train_loop_config"]["resources"]["gpu_memory_mb"] is None
    assert seen["torch_config"] is None


def test_a_folder_of_the_jobs_working_dir_is_found_on_this_nodes_copy(tmp_path, monkeypatch):
    """A submitted job's driver resolves ``models/bert`` in its node's copy of the working dir;
    a worker on another node reads the same package where its own node unpacked it."""
    import sys

    from qa_ray.sweep.trial import _paths_on_this_node

    here = tmp_path / "node2" / "working_dir_files" / "_ray_pkg_ab12"
    (here / "models" / "bert").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(here)])
    head = "/tmp/ray/session_head/runtime_resources/working_dir_files/_ray_pkg_ab12/models/bert"
    elsewhere = "/nowhere/_ray_pkg_ffff/models/bert"
    config = {"model": {"name_or_path": head}, "data": {"path": str(tmp_path), "eval_path": None}}
    moved = _paths_on_this_node(config)
    assert moved["model"]["name_or_path"] == str(here / "models" / "bert")
    assert moved["data"]["path"] == str(tmp_path) and config["model"]["name_or_path"] == head
    relative = _paths_on_this_node({"model": {"name_or_path": "models/bert"}})  # a model axis
    assert relative["model"]["name_or_path"] == str(here / "models" / "bert")
    other = _paths_on_this_node({"model": {"name_or_path": elsewhere}})
    assert other["model"]["name_or_path"] == elsewhere  # no such package here: left as it is
