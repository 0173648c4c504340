"""The Tune trial function: one Ray Train run of the sampled configuration.

``TuneReportCallback`` passes the workers' reports to Tune; an out-of-memory that ends the
Train run is reported as an infeasible result, not a failure, so the sampler learns the region.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

from qa_ray import metrics as m
from qa_ray.config.files import validate_model
from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError
from qa_ray.search.space import apply_params
from qa_ray.sweep.resources import GPU_MEMORY_RESOURCE, worker_resources

logger = logging.getLogger(__name__)


def _reports_to_tune(objectives: tuple[str, ...]):
    """Ray Tune's ``TuneReportCallback``, for every report of the loop.

    Only evaluations carry the scores; the reports between them (progress every
    ``train.progress_seconds``, checkpoints, a trial stopped over budget before it was ever
    scored) go to Tune with the objectives they lack as None: Tune refuses a result without
    the searcher's metrics, and None tells everyone downstream "not measured here" (MO-ASHA
    does not rank it, the searcher and MLflow skip it, the console shows it on the live line).
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [{**{k: None for k in objectives}, **metrics[0]}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ReportsToTune()


def out_of_memory(exc: BaseException) -> tuple[float | None, str] | None:
    """``(peak MB or None, reason)`` when a failed Ray Train run ran out of memory: a worker's
    :class:`~qa_ray.training.memory.TrialOutOfMemory` (CUDA or the CPU allocator, with the memory it
    held), or Ray's memory monitor killing a worker (``ray.exceptions.OutOfMemoryError``).
    Anything else: None."""
    import ray.exceptions

    from qa_ray.training.memory import TrialOutOfMemory

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TrialOutOfMemory):
            return e.peak_memory_mb, str(e)
        if isinstance(e, ray.exceptions.OutOfMemoryError):
            return None, f"out of memory: {str(e).strip().splitlines()[0]}"
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        todo += list(getattr(e, "worker_failures", {}).values())
    return None


# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default): a report reaches Tune, and a finished run is noticed, up to that much later. A poll
# is one small RPC per worker; at half a second a trial ends about 2 s sooner. The controller
# takes these variables from the process that calls fit(); one set by the user wins.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# Tune's switch for the loggers it adds unless given (CSV, JSON, TensorBoard).
TUNE_AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def _trainer_class():
    """Ray's ``TorchTrainer``, less the Ray Data ``DatasetManager`` actor Train V2 starts for
    every run with or without Ray Datasets: a trial passes none (each worker reads its own
    data), and that actor is a process importing Ray Data beside the worker's set-up (about half
    a second of a trial's start in probes on 2 cores). With datasets, nothing is dropped."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class Trainer(TorchTrainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


def on_worker(
    config: dict[str, Any], *, tracking_uri: str | None = None, run_id: str | None = None
):
    """The loop on a Ray Train worker: the job's local folders found on this node, and with
    ``run_id``, MLflow's system metrics logged into the trial's run from rank 0 while it
    trains (:mod:`qa_ray.tracking.system`)."""
    import ray.train

    from qa_ray.tracking.system import start_system_metrics, stop_system_metrics
    from qa_ray.training.loop import train_loop_per_worker

    config = _paths_on_this_node(config)
    rank0 = ray.train.get_context().get_world_rank() == 0
    monitor = start_system_metrics(tracking_uri, run_id) if rank0 and tracking_uri else None
    try:
        return train_loop_per_worker(config)
    finally:
        stop_system_metrics(monitor)


# The folders of a config that may lie in a submitted job's working dir (qa-ray submit).
_PATH_FIELDS = (("model", "name_or_path"), ("data", "path"), ("data", "eval_path"))


def _paths_on_this_node(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each path into the job's working dir as the driver's node unpacked it
    (``.../_ray_pkg_HASH/models/bert``, resolved there) moved to this node's copy of the same
    package, which Ray puts on the worker's ``sys.path``; other paths are left as they are."""
    import copy
    import sys

    out = copy.deepcopy(config)
    packages = [e for e in (os.getcwd(), *sys.path) if "_ray_pkg_" in os.path.basename(e)]
    for block, key in _PATH_FIELDS:
        path = (out.get(block) or {}).get(key)
        if not isinstance(path, str) or not path or os.path.exists(path):
            continue
        if os.path.isabs(path):
            if "/_ray_pkg_" not in path:
                continue
            package, _, tail = path.partition("/_ray_pkg_")[2].partition("/")
            found = [os.path.join(e, tail) for e in packages
                     if os.path.basename(e.rstrip("/")) == f"_ray_pkg_{package}"]  # fmt: skip
        else:  # a sampled value as the sweep file names it (the `model` axis), relative
            found = [os.path.join(e, path) for e in packages]
        here = next((f for f in found if os.path.exists(f)), None)
        if here is not None:
            out[block][key] = here
    return out


def run_trial(
    config: dict[str, Any],
    base: dict[str, Any],
    storage_path: str,
    objectives: tuple[str, ...],
    device_mb: float | None = None,
    tracking: tuple[str, str] | None = None,
) -> None:
    """One Tune trial: a Ray Train run of the sampled configuration.

    With ``tracking`` (the MLflow URI and the sweep's parent run id), rank 0 logs the
    machine's system metrics into the trial's child run while it trains.

    Packed (``resources.pack_by_memory``), each worker asks for the config's memory request
    (:data:`~qa_ray.metrics.MEMORY_REQUEST_MB`, set by the searcher) and that share of the
    cluster's largest GPU (``device_mb``; by default read from the nodes up when the trial
    starts, so an autoscaled cluster's later GPU nodes count), and caps itself there
    (``resources.gpu_memory_mb``).
    """
    for name, value in TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from qa_ray.tracking.system import trial_run_id

    ctx = tune.get_context()
    merged = apply_params(base, config)
    try:
        trial_cfg = validate_model(TrialConfig, merged, "sampled configuration")
    except ConfigError as exc:  # one line, so it is the failure's printed reason
        raise ValueError(f"sampled configuration is invalid: {'; '.join(exc.errors)}") from None
    r = trial_cfg.resources
    from ray.train import TrainingFailedError
    from ray.train.torch import TorchConfig

    request = config.get(m.MEMORY_REQUEST_MB) if r.pack_by_memory else None
    if request is not None and device_mb is None:
        import ray

        from qa_ray.sweep.resources import device_memory_mb

        device_mb = device_memory_mb(ray.nodes())
        if device_mb is None:  # no GPU node up yet (an autoscaler adds one for this trial)
            logger.warning(
                "no node offers %s yet: this trial asks for %s GPU, not by memory",
                GPU_MEMORY_RESOURCE,
                r.gpus_per_worker,
            )
    per_worker = worker_resources(r.cpus_per_worker, r.gpus_per_worker, request, device_mb)
    if (asked := per_worker.get(GPU_MEMORY_RESOURCE)) is not None:
        r = r.model_copy(update={"gpu_memory_mb": asked})
        trial_cfg = trial_cfg.model_copy(update={"resources": r})
    loop: Any = on_worker
    if tracking is not None and (run_id := trial_run_id(*tracking, ctx.get_trial_id())):
        loop = partial(on_worker, tracking_uri=tracking[0], run_id=run_id)
    trainer = _trainer_class()(
        loop,
        train_loop_config=trial_cfg.model_dump(),
        # GPUs reserved but the loop told to stay on the CPU (train.device: cpu): gloo, as
        # NCCL serves CUDA tensors only.
        torch_config=TorchConfig(backend="gloo") if trial_cfg.train.device == "cpu" else None,
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=f"{ctx.get_experiment_name()}-train-{ctx.get_trial_name()}",
            storage_path=storage_path,
            callbacks=[_reports_to_tune(objectives)],
            checkpoint_config=CheckpointConfig(num_to_keep=trial_cfg.train.checkpoints_to_keep),
            # A lost worker (preemption, dead node, OOM kill) restarts the worker group, which
            # resumes from the trial's last checkpoint (ray.train.get_checkpoint in the loop).
            failure_config=FailureConfig(max_failures=r.max_failures),
        ),
    )
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        oom = out_of_memory(exc)
        if oom is None:
            raise  # once the restarts are used up: the trial is FAILED
        # Out of memory is an answer, not an error: the trial is infeasible with what it
        # held, so the sampler learns the region (a FAILED trial teaches it nothing).
        peak, reason = oom
        tune.report(
            {
                **{k: None for k in objectives},
                m.INFEASIBLE: 1.0,
                m.INFEASIBLE_REASON: reason,
                **({m.PEAK_MEMORY_MB: peak} if peak is not None else {}),
            }
        )
