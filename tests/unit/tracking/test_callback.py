"""The MLflow sweep callback: failure reasons, and a resumed trial's history."""

from qa_ray.tracking.callback import failure_reason


def test_failure_reason_is_the_exceptions_own_first_line():
    hub = """Traceback (most recent call last):
  File "x.py", line 3, in <module>
    load()
ray.exceptions.RayTaskError(TrainingFailedError): ray::run_trial() (pid=1)
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


def test_a_trial_that_starts_over_on_resume_writes_no_second_history(tmp_path):
    """The resumed sweep's callback (a new one, as Tune unpickles it) finds the child run and
    skips the steps it already holds."""
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from qa_ray.tracking.callback import MLflowSweepCallback
    from qa_ray.tracking.runs import child_runs, start_parent_run

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


def test_every_child_run_logs_its_predicted_peak_and_measurements_refine_the_model(
    tmp_path, tiny_model_dir
):
    """Each child run gets the prediction made when it starts; a trial's measured peak (not
    an infeasible one's) calibrates the predictions of the trials after it, and a trial of an
    already measured memory key is predicted as that measurement."""
    from types import SimpleNamespace

    from qa_ray import metrics as m
    from qa_ray.search.memory import MemoryModel
    from qa_ray.tracking.callback import MLflowSweepCallback
    from qa_ray.tracking.runs import child_runs, start_parent_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "t", "s", params={}, artifacts={})
    base = {
        "model": {"name_or_path": str(tiny_model_dir("bert")), "finetune": "full"},
        "data": {"max_seq_length": 128},
        "train": {"per_device_batch_size": 8, "learning_rate": 1e-4},
    }
    memory = MemoryModel("cpu")
    callback = MLflowSweepCallback(uri, parent, ("step",), base_config=base, memory=memory)

    def trial(i, **config):
        return SimpleNamespace(trial_id=f"t_{i}", trial_name=f"trial-{i}", config=config)

    a, b, c = trial(1, learning_rate=1e-3), trial(2, learning_rate=1e-5), trial(3)
    oom = trial(4, per_device_batch_size=64)
    prior = memory.predict(base).peak_mb
    callback.on_trial_start(0, [], a)
    a.last_result = {m.PEAK_MEMORY_MB: 3000.0, m.STEP: 2}
    callback.on_trial_complete(0, [], a)
    oom_before = memory.predict({**base, "train": {**base["train"], "per_device_batch_size": 64}})
    callback.on_trial_start(0, [], oom)
    oom.last_result = {m.PEAK_MEMORY_MB: 99_999.0, m.INFEASIBLE: 1.0, m.INFEASIBLE_REASON: "oom"}
    callback.on_trial_complete(0, [], oom)
    early = trial(5, per_device_batch_size=32)  # stopped after eval_on_start: no training
    callback.on_trial_start(0, [], early)
    early.last_result = {m.PEAK_MEMORY_MB: 700.0, m.STEP: 0}
    callback.on_trial_complete(0, [], early)
    callback.on_trial_start(0, [], b)  # same memory key as a: a's measurement
    callback.on_trial_start(0, [], c)
    # the infeasible trial's peak and the untrained one's are lower bounds of their own keys:
    # no fit row (only a's), and the infeasible key needs at least what it held
    assert memory.n == 1
    again = memory.predict({**base, "train": {**base["train"], "per_device_batch_size": 64}})
    assert again.at_least_mb == 99_999.0 and again.peak_mb >= 99_999.0
    assert again.fits(20_000.0) is False

    logged = {r.info.run_name: r.data.metrics for r in child_runs(uri, parent)}
    assert logged["trial-1"][m.PREDICTED_PEAK_MEMORY_MB] == prior
    assert logged["trial-2"][m.PREDICTED_PEAK_MEMORY_MB] == 3000.0
    assert logged["trial-3"][m.PREDICTED_PEAK_MEMORY_MB] == 3000.0
    assert logged["trial-4"][m.PREDICTED_PEAK_MEMORY_MB] == oom_before.peak_mb
    assert (
        logged["trial-2"][m.PREDICTED_PEAK_MEMORY_SD_MB]
        < logged["trial-1"][m.PREDICTED_PEAK_MEMORY_SD_MB]
    )


def test_a_gpu_trials_run_says_how_its_peak_counted_the_cuda_context(tmp_path):
    """The loop reports ``memory_context_source`` (nvml_process, measured or default) on a
    GPU; the trial's run keeps it as a param."""
    from types import SimpleNamespace

    from qa_ray import metrics as m
    from qa_ray.tracking.callback import MLflowSweepCallback
    from qa_ray.tracking.runs import child_runs, start_parent_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "t", "s", params={}, artifacts={})
    callback = MLflowSweepCallback(uri, parent, ("step",))
    gpu = SimpleNamespace(trial_id="t_1", trial_name="gpu", config={})
    cpu = SimpleNamespace(trial_id="t_2", trial_name="cpu", config={})
    gpu.last_result = {m.PEAK_MEMORY_MB: 3686.0, m.STEP: 4, m.MEMORY_CONTEXT_SOURCE: "default"}
    cpu.last_result = {m.PEAK_MEMORY_MB: 900.0, m.STEP: 4}
    for trial in (gpu, cpu):
        callback.on_trial_start(0, [], trial)
        callback.on_trial_complete(0, [], trial)
    params = {r.info.run_name: r.data.params for r in child_runs(uri, parent)}
    assert params["gpu"][m.MEMORY_CONTEXT_SOURCE] == "default"
    assert m.MEMORY_CONTEXT_SOURCE not in params["cpu"]


def test_a_resumed_sweep_learns_every_peak_the_sweep_measured_so_far(tmp_path, tiny_model_dir):
    """An extension (or any resume) started a new memory model: configurations proven over
    budget were launched again. The runs keep what each peak taught; a new model learns it."""
    from types import SimpleNamespace

    from qa_ray import metrics as m
    from qa_ray.search.memory import MemoryModel
    from qa_ray.tracking.callback import MLflowSweepCallback, learn_memory
    from qa_ray.tracking.runs import start_parent_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = start_parent_run(uri, "t", "s", params={}, artifacts={})
    base = {
        "model": {"name_or_path": str(tiny_model_dir("bert")), "finetune": "full"},
        "data": {"max_seq_length": 128},
        "train": {"per_device_batch_size": 8, "learning_rate": 1e-4},
    }
    first = MemoryModel("cpu")
    callback = MLflowSweepCallback(uri, parent, ("step",), base_config=base, memory=first)
    results = [
        ({"learning_rate": 1e-3}, {m.PEAK_MEMORY_MB: 3000.0, m.STEP: 2}),
        ({"per_device_batch_size": 16}, {m.PEAK_MEMORY_MB: 4100.0, m.STEP: 2}),
        ({"per_device_batch_size": 64}, {m.PEAK_MEMORY_MB: 9000.0, m.INFEASIBLE: 1.0}),
        ({"per_device_batch_size": 32}, {m.PEAK_MEMORY_MB: 700.0, m.STEP: 0}),
    ]
    for i, (config, final) in enumerate(results):
        t = SimpleNamespace(trial_id=f"t_{i}", trial_name=f"trial-{i}", config=config)
        callback.on_trial_start(0, [], t)
        t.last_result = final
        callback.on_trial_complete(0, [], t)
    resumed = MemoryModel("cpu")
    assert learn_memory(uri, parent, base, resumed) == 4
    assert (resumed.n, resumed.at_least) == (first.n, first.at_least)
    for batch in (4, 8, 16, 32, 64):
        config = {**base, "train": {**base["train"], "per_device_batch_size": batch}}
        assert resumed.predict(config) == first.predict(config)
    over = {**base, "train": {**base["train"], "per_device_batch_size": 64}}
    assert resumed.predict(over).fits(8000.0) is False  # known over budget: not launched again
