"""The sweep driver: :func:`run_sweep` from a validated config to the published report.

    qa-ray sweep sweeps/quickstart.yaml

Each Tune trial is a function trainable (:mod:`.trial`) that builds one Ray Train
``TorchTrainer`` (Train V2) running :func:`qa_ray.training.loop.train_loop_per_worker`.
``OptunaSearch`` searches the objectives with its study in sqlite next to the Ray results, so
it outlives the driver and optuna-dashboard can read it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from qa_ray import live, storage
from qa_ray import metrics as m
from qa_ray.config.trial import parse_constraints
from qa_ray.errors import ConfigError
from qa_ray.search.memory import MemoryModel
from qa_ray.sweep.bucket import BucketState, BucketStateCallback
from qa_ray.sweep.console import STOP_REASONS, Interrupts, ProgressCallback, tune_console
from qa_ray.sweep.resources import cluster_notes, credentials_stay_in_the_driver, init_ray, plan
from qa_ray.sweep.state import (
    STATE_FILE,
    close_study,
    experiment_path,
    plan_stages,
    stage_path,
    state_dir,
    study_exists,
    study_storage,
)
from qa_ray.sweep.trial import TUNE_AUTO_LOGGERS_OFF, run_trial
from qa_ray.sweep.tuner import DefineByRun, build_sampler, early_stopping, tune_config
from qa_ray.sweep.watchdog import LeakedPlacementGroups
from qa_ray.tracking.callback import MLflowSweepCallback, failure_reason, learn_memory
from qa_ray.tracking.runs import (
    finish_parent_run,
    kill_running_children,
    open_experiment,
    redact_uri,
    start_parent_run,
)

if TYPE_CHECKING:
    from qa_ray.sweep.config import SweepConfig

__all__ = ["SweepResult", "run_sweep"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """How a sweep ended: its trials (status COMPLETE; PRUNED, stopped early by the scheduler;
    INFEASIBLE, over a budget or out of memory; FAILED; or STOPPED, in flight when the sweep
    was interrupted; the failure or infeasibility reason, the sampled config, the final
    metrics) and the signal that interrupted it, if any."""

    parent_run_id: str
    trials: list[dict[str, Any]]
    interrupted_by: int | None = None


def run_sweep(
    cfg: SweepConfig,
    tracking_uri: str,
    *,
    address: str | None = None,
    resume: bool = False,
    resolved_yaml: str = "",
    verbose: bool = False,
) -> SweepResult:
    """Runs (or resumes, or extends) a sweep and records it in MLflow.

    Args:
        cfg: the validated sweep config (see :func:`qa_ray.sweep.config.load_sweep_config`).
        tracking_uri: the MLflow tracking URI (on resume: see :func:`check_resume`).
        address: an existing Ray cluster; ``None`` starts Ray embedded.
        resume: continue the sweep stored under ``storage_path/name``; finished trials are
            not rerun and their MLflow runs are reused; a larger ``search.num_samples`` runs
            the extra trials on the same Optuna study and parent run.
        resolved_yaml: the resolved sweep config text, logged on the parent run.
        verbose: also show the Ray workers' output and Tune's own console here.

    Returns:
        Every trial's outcome, and the signal that interrupted the sweep, if one did.
    """
    from ray import tune

    storage.s3_endpoint_to_environment()
    exp_path = experiment_path(cfg)
    local = state_dir(cfg)
    bucket = BucketState.of(cfg, local)
    # Started: Tune wrote its experiment, or at least the sweep its state and parent run (a
    # driver killed before Tune's first snapshot). Either is resumed, never started again
    # beside a parent run left RUNNING.
    started = tune.Tuner.can_restore(exp_path) or (
        bucket.holds_state() if bucket is not None else (local / STATE_FILE).is_file()
    )
    if resume and not started:
        raise ConfigError(
            "--resume",
            [f"no sweep to resume at {exp_path} (storage_path/name); run it without --resume"],
        )
    if not resume and started:
        raise ConfigError(
            "storage_path",
            [
                f"a sweep named {cfg.name!r} already exists at {exp_path}: pass --resume to "
                "continue it, or choose another `name` (nothing there was touched)"
            ],
        )
    if bucket is not None:
        bucket.acquire()  # before any Ray work: a second driver on this sweep is refused
        if resume:
            bucket.pull()
    try:
        return _run(
            _Sweep(cfg, tracking_uri, local, bucket, address=address, verbose=verbose),
            resume,
            resolved_yaml,
        )
    finally:
        if bucket is not None:
            bucket.release()


@dataclass
class _Sweep:
    """What every stage of one driver run shares."""

    cfg: SweepConfig
    tracking_uri: str
    local: Path  # the state folder on this head
    bucket: BucketState | None
    address: str | None = None
    verbose: bool = False
    parent_id: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    # The sweep this process drives: what the searcher, scheduler and callbacks Tune
    # restores rejoin (this head's state folder, one memory model, the study's mirror).
    driver: live.Driver | None = None


def _run(sweep: _Sweep, resume: bool, resolved_yaml: str) -> SweepResult:
    from ray import tune

    cfg, tracking_uri, local, bucket = sweep.cfg, sweep.tracking_uri, sweep.local, sweep.bucket
    exp_path = experiment_path(cfg)
    state_path = local / STATE_FILE
    if bucket is not None and not resume and local.is_dir() and any(local.iterdir()):
        # A new sweep on a bucket (none of this name is there) and a state folder left on this
        # machine by an older one of the same name: its parent run and study are not this
        # sweep's. Kept aside, not reused and not deleted.
        aside = local.with_name(f"{local.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        local.rename(aside)
        print(f"[qa-ray] note: an older sweep state of this name moved to {aside}", flush=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    stages = plan_stages(cfg, state, exp_path, resume)
    # The MLflow store is opened (a new one migrates its schema, about 2 s) while Ray starts.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qa-ray-mlflow") as pool:
        store = pool.submit(open_experiment, tracking_uri, cfg.tracking.experiment_name)
        cluster = init_ray(sweep.address, sweep.verbose)
        store.result()
    nodes = None
    if cfg.resources.pack_by_memory:  # GPUs of different sizes: refused before any trial
        import ray

        nodes = ray.nodes()
    p = sweep.plan = plan(cfg, cluster, elastic=sweep.address is not None, nodes=nodes)
    local.mkdir(parents=True, exist_ok=True)
    objectives = [(o.metric, o.mode) for o in cfg.objectives]
    parent_id = start_parent_run(
        tracking_uri,
        cfg.tracking.experiment_name,
        cfg.name,
        params={
            "model": cfg.model.name_or_path,
            "task": cfg.model.task,
            "data": cfg.data.path,
            "objectives": objectives,
            "constraints": json.dumps(cfg.constraints),
            "scheduler": json.dumps(
                cfg.search.scheduler.model_dump() if cfg.search.scheduler else None
            ),
            "sampler": cfg.search.sampler,
            "num_samples": stages[0]["num_samples"],
            "max_concurrent_trials": p["max_concurrent_trials"],
            "workers_per_trial": cfg.resources.num_workers,
            "storage_path": exp_path,
        },
        artifacts={
            "sweep_config.yaml": resolved_yaml or yaml.safe_dump(cfg.model_dump(mode="json")),
            "search_space.yaml": yaml.safe_dump(cfg.space.model_dump(mode="json")),
        },
        run_id=state.get("parent_run_id"),
    )
    state.update(
        {
            "parent_run_id": parent_id,
            "tracking_uri": tracking_uri,
            "name": cfg.name,
            "stages": stages,
            "config": cfg.model_dump(mode="json"),
        }
    )
    state_path.write_text(json.dumps(state, indent=2))
    if bucket is not None:
        bucket.push()
    print(
        f"[qa-ray] sweep {cfg.name}: MLflow parent run {parent_id} at {redact_uri(tracking_uri)}",
        flush=True,
    )
    print(f"[qa-ray] plan: {json.dumps(p)}", flush=True)
    if len(stages) > 1 and not tune.Tuner.can_restore(stage_path(stages[-1])):
        print(
            f"[qa-ray] extending the sweep by {stages[-1]['num_samples']} trials "
            f"(same Optuna study, same parent run)",
            flush=True,
        )
    sweep.parent_id = parent_id
    memory = MemoryModel("cuda" if cfg.resources.gpus_per_worker > 0 else "cpu")
    if resume:  # what the sweep's trials taught it so far (an extension too)
        learned = learn_memory(tracking_uri, parent_id, cfg.trial_config().model_dump(), memory)
        if learned:
            print(
                f"[qa-ray] memory model: {learned} peaks of this sweep's trials taken", flush=True
            )
    sweep.driver = live.Driver(
        state_dir=local,
        memory=memory,
        on_study_change=bucket.push if bucket is not None else None,
    )
    if sweep.address:
        for note in cluster_notes(cfg, exp_path):
            print(f"[qa-ray] note: {note}", flush=True)

    status, results = "FAILED", []
    with (
        Interrupts() as interrupts,
        credentials_stay_in_the_driver(),
        tune_console(sweep.verbose),
        live.driving(sweep.driver),
    ):
        try:
            for i, stage in enumerate(stages):
                if interrupts.signal is not None:  # between stages: the next one never starts
                    break
                if i > 0:
                    print(
                        f"[qa-ray] stage {i + 1} of {len(stages)} ({stage['name']}): "
                        f"{stage['num_samples']} more trials",
                        flush=True,
                    )
                try:
                    grid = _fit(sweep, stage, i)
                finally:
                    interrupts.tune_loop_ended()
                # Each result with its trial's status (ResultGrid lists results in the order
                # of its analysis' trials; the status is not public on a Result in Ray 2.60).
                trials_of = grid._experiment_analysis.trials
                results += list(zip(grid, [t.status for t in trials_of], strict=True))
        except KeyboardInterrupt:
            if interrupts.signal is None:
                raise  # not ours
            # Our signal before Tune's loop of a stage started: no trial of it ran.
        except BaseException:  # Tune raised, or the cluster was lost: the sweep ended here
            _end_failed(tracking_uri, parent_id)
            raise
        status = "KILLED" if interrupts.signal is not None else "FINISHED"
        if status == "KILLED":
            kill_running_children(tracking_uri, parent_id)
    trials = [_outcome(r, tune_status) for r, tune_status in results]
    if status == "FINISHED":
        close_study(local, cfg.name)
        # Every trial Tune knows has ended: a run still RUNNING belongs to a trial sampled
        # after Tune's last snapshot and lost with a driver (its Optuna trial is FAIL too).
        if lost := kill_running_children(tracking_uri, parent_id, status="FAILED"):
            print(
                f"[qa-ray] note: {lost} trial run(s) lost with an earlier driver, before Tune "
                "recorded them, ended FAILED",
                flush=True,
            )
        if not any(t["status"] == "COMPLETE" for t in trials):
            status = "FAILED"  # no trial completed: the sweep found nothing
    if bucket is not None:
        bucket.push()
    finish_parent_run(tracking_uri, parent_id, status)
    return SweepResult(parent_id, trials, interrupts.signal)


def _end_failed(tracking_uri: str, parent_id: str) -> None:
    """A sweep that raised: the trial runs it left RUNNING and its parent run end FAILED (the
    Optuna trials stay RUNNING: ``--resume`` reruns their trials and tells them)."""
    try:
        kill_running_children(tracking_uri, parent_id, status="FAILED")
        finish_parent_run(tracking_uri, parent_id, "FAILED")
    except Exception:  # the store unreachable too: the sweep's own error is the one to see
        logger.exception("could not mark the sweep's MLflow runs FAILED")


def _outcome(r, tune_status: str) -> dict[str, Any]:
    error = None
    metrics = r.metrics or {}
    if r.error or tune_status == "ERROR":
        status, error = "FAILED", failure_reason(str(r.error))
    elif not metrics:
        status = "STOPPED"  # ended before its first report (a sweep interrupted at its start)
    elif tune_status == "TERMINATED" and metrics.get(m.INFEASIBLE):
        status, error = "INFEASIBLE", metrics.get(m.INFEASIBLE_REASON)
    elif tune_status == "TERMINATED" and metrics.get(m.STOPPED_EARLY_AT) is not None:
        status = "PRUNED"
    elif tune_status == "TERMINATED":
        status = "COMPLETE"
    else:
        status = "STOPPED"  # interrupted in flight (PENDING, RUNNING, PAUSED)
    return {
        "status": status,
        "error": error,
        "config": dict(r.config or {}),
        **({k: v for k, v in metrics.items() if isinstance(v, int | float)}),
    }


def _fit(sweep: _Sweep, stage: dict, index: int):
    from ray import tune

    from qa_ray.search.schedulers.mo_asha import EarlyStopMarks
    from qa_ray.search.searcher import BudgetAwareOptunaSearch, MemoryAdmission

    cfg, local, bucket, p = sweep.cfg, sweep.local, sweep.bucket, sweep.plan
    assert sweep.driver is not None
    exp_path = experiment_path(cfg)
    base = cfg.trial_config().model_dump()
    # The trial function only drives its TorchTrainer; the workers hold the CPUs/GPUs. Ray
    # needs a non-empty bundle, so the driver asks for a token amount of memory (1 byte).
    trainable = tune.with_resources(
        partial(
            run_trial,
            base=base,
            storage_path=f"{exp_path}/train",
            objectives=tuple(o.metric for o in cfg.objectives),
            # The trial's MLflow run, for the system metrics its rank 0 logs there.
            tracking=(sweep.tracking_uri, sweep.parent_id),
        ),
        {"memory": 1},
    )
    path = stage_path(stage)
    # Tune's result.json and progress.csv per trial, as Tune writes them by default, but not
    # its TensorBoard files (MLflow holds the curves): tensorboardX imports torch, which the
    # driver never needs otherwise (a second and a half of the sweep's start on 2 cores), and
    # warns of every result field that is not a number. A restored stage too.
    os.environ.setdefault(TUNE_AUTO_LOGGERS_OFF, "1")
    if tune.Tuner.can_restore(path):
        # Tune restores the callbacks and searcher it pickled: the same MLflow store and
        # parent run (check_resume refuses another), the same study.
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
        return tuner.fit()
    constraints = parse_constraints(cfg.constraints, cfg.model.task)
    scheduler = early_stopping(cfg, local)
    # One memory model per sweep: the callback logs each child's prediction and calibrates it
    # with the measured peaks; the searcher keeps configs predicted over a budget from running.
    memory = sweep.driver.memory
    tracker = MLflowSweepCallback(
        sweep.tracking_uri, sweep.parent_id, m.CURVES, base_config=base, memory=memory
    )
    admission = MemoryAdmission(
        memory,
        base,
        on_rejected=tracker.record_predicted_infeasible,
        pack_margin=cfg.resources.memory_margin if cfg.resources.pack_by_memory else None,
        enforce=cfg.search.memory_admission,
    )
    callbacks = [
        tune.logger.CSVLoggerCallback(),
        tune.logger.JsonLoggerCallback(),
        *([EarlyStopMarks(scheduler.time_attr)] if scheduler else []),
        tracker,
        ProgressCallback(
            cfg.objectives,
            stage["num_samples"],
            stop_reason=STOP_REASONS[
                cfg.search.scheduler.type if cfg.search.scheduler else "mo_asha"
            ],
        ),
        *([BucketStateCallback(bucket)] if bucket is not None else []),
        LeakedPlacementGroups(),
    ]
    searcher = BudgetAwareOptunaSearch(
        constraints=constraints,
        admission=admission,
        space=DefineByRun(cfg.space, cfg.trial_config()),
        metric=[o.metric for o in cfg.objectives],
        mode=[o.mode for o in cfg.objectives],
        sampler=build_sampler(cfg),
        # The first stage evaluates the initial points (enqueued once: a first stage started
        # again after its driver died finds them in the study); an extension continues it.
        points_to_evaluate=(
            [dict(pt) for pt in cfg.search.initial_points] or None
            if index == 0 and not study_exists(local, cfg.name)
            else None
        ),
        study_name=cfg.name,
        storage=study_storage(local),
        stage=stage["name"],
    )
    if bucket is not None:
        bucket.push()  # the study exists: the bucket holds it before any trial is asked
    tuner = tune.Tuner(
        trainable,
        tune_config=tune_config(searcher, scheduler, stage["num_samples"], p),
        run_config=tune.RunConfig(
            name=stage["name"],
            storage_path=stage["storage_path"],
            callbacks=callbacks,
            verbose=0,
        ),
    )
    return tuner.fit()
