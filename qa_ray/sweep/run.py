"""The sweep: a validated :class:`SweepConfig` translated into Ray Tune, Optuna and MLflow objects.

    qa-ray sweep sweeps/quickstart.yaml

Each Tune trial is a function trainable that builds one Ray Train ``TorchTrainer`` (Train V2)
running :func:`qa_ray.train.train_loop_per_worker`; ``TuneReportCallback`` passes the workers'
reports to Tune. ``OptunaSearch`` searches the objectives (lists of metric/mode) with its study
in sqlite next to the Ray results, so it outlives the driver and optuna-dashboard can read it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from qa_ray import metrics as m
from qa_ray.config import (
    ConfigError,
    TrialConfig,
    config_differences,
    parse_constraints,
    validate_model,
)
from qa_ray.search_space import apply_params, grid_size, suggest
from qa_ray.sweep_config import SweepConfig
from qa_ray.tracking import (
    MLflowSweepCallback,
    failure_reason,
    finish_parent_run,
    kill_running_children,
    open_experiment,
    redact_uri,
    start_parent_run,
    trial_error_text,
)

__all__ = ["SweepResult", "check_resume", "plan", "run_sweep"]

logger = logging.getLogger(__name__)

STATE_FILE = "qa_ray_sweep.json"


@dataclass(frozen=True)
class SweepResult:
    """How a sweep ended: its trials (status COMPLETE; PRUNED, stopped early by the scheduler;
    INFEASIBLE, over a budget or out of memory; FAILED; or STOPPED, in flight when the sweep
    was interrupted; the failure or infeasibility reason, the sampled config, the final
    metrics) and the signal that interrupted it, if any."""

    parent_run_id: str
    trials: list[dict[str, Any]]
    interrupted_by: int | None = None


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``: storage Ray reads through pyarrow, not a local folder."""
    return "://" in path


def _under(storage_path: str, name: str) -> str:
    """``storage_path/name`` for a folder or a URI."""
    if is_uri(storage_path):
        return f"{storage_path.rstrip('/')}/{name}"
    return str(Path(storage_path) / name)


def experiment_path(cfg: SweepConfig) -> str:
    """Where Ray Tune keeps this sweep's results: ``storage_path/name`` (a folder or a URI)."""
    return _under(cfg.storage_path, cfg.name)


def state_dir(cfg: SweepConfig) -> Path:
    """The driver's own files (the Optuna study, the MLflow parent run id), kept locally.

    Beside the Ray results for a local ``storage_path``. For bucket storage they stay on the
    machine that runs the driver (the head node for submitted sweeps), under
    ``$QA_RAY_STATE_DIR`` (default ``~/.cache/qa_ray/sweeps``), so ``--resume`` there finds them.
    """
    if not is_uri(cfg.storage_path):
        return Path(experiment_path(cfg))
    root = os.environ.get("QA_RAY_STATE_DIR", "~/.cache/qa_ray/sweeps")
    return Path(root).expanduser() / cfg.name


def plan(
    cfg: SweepConfig, cluster: dict[str, float] | None = None, *, elastic: bool = False
) -> dict[str, Any]:
    """The resource plan: per-trial resources and how many trials run at once.

    Args:
        cluster: the CPUs and GPUs Ray has now; ``None`` when unknown (``--dry-run``).
        elastic: a cluster joined by address, whose autoscaler may add nodes: what it has now
            neither caps an explicit ``max_concurrent_trials`` nor rules a trial out. Without
            one, as many trials run at once as fit now (at least one): set it to let the
            autoscaler add nodes for more.
    """
    r = cfg.resources
    per_trial = {"CPU": r.num_workers * r.cpus_per_worker, "GPU": r.num_workers * r.gpus_per_worker}
    fit = None
    if cluster is not None:
        fits = [cluster.get(k, 0) // v for k, v in per_trial.items() if v > 0]
        fit = int(min(fits)) if fits else None
        if fit == 0 and not elastic:
            raise ConfigError(
                "resources",
                [
                    f"one trial needs {per_trial} but this machine has "
                    f"{ {k: cluster.get(k, 0) for k in per_trial} }"
                ],
            )
    if cfg.search.max_concurrent_trials:
        concurrent = cfg.search.max_concurrent_trials
        if fit and not elastic:
            concurrent = min(concurrent, fit)
    else:
        concurrent = fit or 1
    return {
        "per_trial": per_trial,
        "workers_per_trial": r.num_workers,
        "cluster": cluster,
        "elastic": elastic,
        "max_concurrent_trials": concurrent,
        "num_samples": cfg.search.num_samples,
        "distinct_configurations": grid_size(cfg.space),
    }


def _sampler(cfg: SweepConfig):
    """The Optuna sampler; TPE and NSGA-II learn the budgets (and out-of-memory regions)
    from the constraint values :class:`~qa_ray.searcher.BudgetAwareOptunaSearch` sets."""
    import optuna

    s = cfg.search
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True)


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
    :class:`~qa_ray.train.TrialOutOfMemory` (CUDA or the CPU allocator, with the memory it
    held), or Ray's memory monitor killing a worker (``ray.exceptions.OutOfMemoryError``).
    Anything else: None."""
    import ray.exceptions

    from qa_ray.train import TrialOutOfMemory

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


def _run_trial(
    config: dict[str, Any], base: dict[str, Any], storage_path: str, objectives: tuple[str, ...]
) -> None:
    """One Tune trial: a Ray Train run of the sampled configuration."""
    for name, value in TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from qa_ray.train import train_loop_per_worker

    ctx = tune.get_context()
    merged = apply_params(base, config)
    try:
        trial_cfg = validate_model(TrialConfig, merged, "sampled configuration")
    except ConfigError as exc:  # one line, so it is the failure's printed reason
        raise ValueError(f"sampled configuration is invalid: {'; '.join(exc.errors)}") from None
    r = trial_cfg.resources
    from ray.train import TrainingFailedError

    trainer = _trainer_class()(
        train_loop_per_worker,
        train_loop_config=trial_cfg.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker={"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker},
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


class _Progress:
    """Prints one line per finished trial: counts and the best value of each objective."""

    def __init__(self, objectives, total: int):
        self.objectives = objectives
        self.total = total
        self.started = time.monotonic()

    def line(self, trials, finished=None, failed_now=False) -> str:
        # Tune calls back before it updates the finishing trial's status: count it here.
        def status(t):
            if t is finished:
                return "ERROR" if failed_now else "TERMINATED"
            return t.status

        ended = [t for t in trials if status(t) == "TERMINATED"]
        infeasible = [t for t in ended if (t.last_result or {}).get(m.INFEASIBLE)]
        pruned = [
            t
            for t in ended
            if t not in infeasible and (t.last_result or {}).get(m.STOPPED_EARLY_AT) is not None
        ]
        done = [t for t in ended if t not in infeasible and t not in pruned]
        failed = [t for t in trials if status(t) == "ERROR"]
        running = [t for t in trials if status(t) == "RUNNING"]
        best = []
        for o in self.objectives:
            vals = [t.last_result.get(o.metric) for t in done if t.last_result]
            vals = [v for v in vals if isinstance(v, int | float)]
            if vals:
                best.append(
                    f"{o.metric} {'max' if o.mode == 'max' else 'min'} {(max if o.mode == 'max' else min)(vals):.2f}"
                )
        mins = (time.monotonic() - self.started) / 60
        return (
            f"[qa-ray] {len(done)}/{self.total} done, {len(running)} running, {len(failed)} failed"
            + (f", {len(pruned)} stopped early" if pruned else "")
            + (f", {len(infeasible)} infeasible" if infeasible else "")
            + f" | best: {', '.join(best) or '-'} | {mins:.1f} min"
        )


class ProgressCallback(Callback):
    """The sweep's console: a line per evaluation of a running trial (step, losses, scores,
    peak memory, elapsed and the time left by its step or time budget), one whenever a trial
    ends (complete, stopped early, infeasible or failed), and on a terminal one live line
    that the reports between evaluations keep current (every running trial's step, loss, peak
    memory and time left), rewritten in place and cleared before any other line."""

    def __init__(self, objectives, total: int, stream=None):
        self.progress = _Progress(objectives, total)
        self.objectives = [o.metric for o in objectives]
        self.stream = stream
        self.live: dict[str, str] = {}  # running trial -> its latest progress, short

    @property
    def out(self):
        return self.stream or sys.stdout

    def _print(self, line: str) -> None:
        tty = self.out.isatty()
        if tty and self.live:
            self.out.write("\r\033[K")  # the live line gives way
        self.out.write(line + "\n")
        if tty and self.live:
            self.out.write(self._live_line())
        self.out.flush()

    def _live_line(self) -> str:
        width = shutil.get_terminal_size((120, 20)).columns - 1
        return ("[qa-ray] running: " + " || ".join(self.live.values()))[:width]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if all(isinstance(result.get(k), int | float) for k in self.objectives):  # evaluated
            self.live.pop(str(trial), None)
            self._print(trial_line(str(trial), result))
            return
        if result.get(m.INFEASIBLE):
            return  # said when the trial completes
        self.live[str(trial)] = trial_line(str(trial), result, short=True)
        if self.out.isatty():
            self.out.write("\r\033[K" + self._live_line())
            self.out.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.live.pop(str(trial), None)
        last = trial.last_result or {}
        if last.get(m.INFEASIBLE):
            self._print(f"[qa-ray] trial {trial} INFEASIBLE: {last.get(m.INFEASIBLE_REASON)}")
        elif last.get(m.STOPPED_EARLY_AT) is not None:
            self._print(
                f"[qa-ray] trial {trial} stopped early at {last[m.STOPPED_EARLY_AT]:g} "
                "(MO-ASHA: not among the best at its rung)"
            )
        self._print(self.progress.line(trials, finished=trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.live.pop(str(trial), None)
        reason = failure_reason(trial_error_text(trial))
        self._print(f"[qa-ray] trial {trial} FAILED: {reason}")
        self._print(self.progress.line(trials, finished=trial, failed_now=True))


def trial_line(name: str, r: dict[str, Any], short: bool = False) -> str:
    """``[qa-ray] trial-1a2b step 60/300 | loss 1.23 | F1 12.3 EM 8.0 | peak 620 MB | 0.8 min,
    about 3.1 min left``: the left time from the step budget, or the time budget if sooner.
    ``short``: ``trial-1a2b 60/300 loss 1.23 620 MB 3.1 min left``, for the live line."""
    step, seconds = r.get(m.STEP, 0), r.get(m.TRAIN_SECONDS, 0.0)
    total = r.get(m.PLANNED_STEPS)
    parts = [f"step {step}" + (f"/{total}" if total else "")]
    if isinstance(r.get(m.TRAIN_LOSS), float):
        parts.append(f"loss {r[m.TRAIN_LOSS]:.3f}")
    scores = [
        f"{m.LABELS[k]} {r[k]:.2f}"
        for k in (m.EVAL_F1, m.EVAL_EXACT, m.EVAL_LOSS)
        if isinstance(r.get(k), float)
    ]
    if scores:
        parts.append(" ".join(scores))
    if isinstance(r.get(m.PEAK_MEMORY_MB), float):
        parts.append(f"peak {r[m.PEAK_MEMORY_MB]:.0f} MB")
    left = []
    if total and step:
        left.append(seconds * (total - step) / step)
    if r.get(m.TIME_BUDGET_SECONDS):
        left.append(max(0.0, r[m.TIME_BUDGET_SECONDS] - seconds))
    if short:
        bits = [name, f"{step}" + (f"/{total}" if total else "")]
        if isinstance(r.get(m.TRAIN_LOSS), float):
            bits.append(f"loss {r[m.TRAIN_LOSS]:.2f}")
        if isinstance(r.get(m.PEAK_MEMORY_MB), float):
            bits.append(f"{r[m.PEAK_MEMORY_MB]:.0f} MB")
        if left:
            bits.append(f"{min(left) / 60:.1f} min left")
        return " ".join(bits)
    timing = f"{seconds / 60:.1f} min trained"
    if left:
        timing += f", about {min(left) / 60:.1f} min left"
    return f"[qa-ray] {name} " + " | ".join(parts + [timing])


class DefineByRun:
    """The Optuna define-by-run space (a picklable callable, saved with the searcher)."""

    def __init__(self, space, base: TrialConfig):
        self.space, self.base = space, base

    def __call__(self, trial):
        return suggest(trial, self.space, self.base)


def _trial_name(trial) -> str:
    return f"trial-{trial.trial_id.split('_')[-1]}"


def init_ray(address: str | None, verbose: bool = False) -> dict[str, float]:
    """Joins ``address`` or starts Ray embedded with what this machine has; returns resources.

    Workers' own output (weight-loading reports, library warnings, per-step logs) goes to
    Ray's session logs, and to this console only when ``verbose``.
    """
    import ray

    if not ray.is_initialized():
        if address:
            ctx = ray.init(address=address, log_to_driver=verbose)
        else:
            # Ray counts the GPUs itself (CUDA_VISIBLE_DEVICES honoured): importing torch here
            # for torch.cuda.device_count() would cost the driver a second and a half.
            # With the dashboard (on 127.0.0.1): Ray Train's placement-group cleaner polls the
            # State API it serves, and warns every few seconds without it.
            ctx = ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=verbose,
            )
        if not verbose:
            logs = Path(ctx.address_info["session_dir"]) / "logs"
            print(f"[qa-ray] worker logs: {logs} (`qa-ray -v sweep ...` shows them)", flush=True)
    return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def _cluster_notes(cfg: SweepConfig, exp_path: str) -> list[str]:
    """What to change for a sweep on a (multi-node, autoscaling) cluster to go as expected."""
    import ray

    notes = []
    if not cfg.search.max_concurrent_trials:
        notes.append(
            "search.max_concurrent_trials is unset: trials run as many at once as fit on the "
            "nodes up now; set it to let the autoscaler add nodes for more"
        )
    if not is_uri(exp_path) and sum(n["Alive"] for n in ray.nodes()) > 1:
        notes.append(
            f"storage_path {exp_path} is a local folder on a multi-node cluster: checkpoints "
            "written on worker nodes need storage every node reaches (s3://..., gs://..., NFS)"
        )
    return notes


class _Interrupts:
    """SIGINT and SIGTERM stop a sweep the same way: the trials in flight are stopped and the
    state saved (Ray Tune's own graceful stop, reached through SIGUSR1, which Tune always
    handles), and the signal is remembered so the caller can say how the sweep ended. A second
    signal exits at once. Tune's own SIGINT handler is switched off (it cannot tell SIGINT from
    the end of a sweep, and leaves SIGTERM, what ``ray job stop`` and a preempted head send, to
    kill the driver outright)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, sig: int, frame) -> None:
        name = signal.Signals(sig).name
        if self.signal is not None:
            print(f"[qa-ray] {name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        self.signal = sig
        print(
            f"[qa-ray] {name}: stopping the trials in flight and saving the sweep's state "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's run loop is listening
            os.kill(os.getpid(), signal.SIGUSR1)
        else:  # not inside Tune's loop yet
            raise KeyboardInterrupt


# Ray Tune 2.60 copies these from the driver's environment into every trial actor's
# runtime_env (tune/execution/class_cache.py), and Ray's runtime_env_agent logs each runtime_env
# at INFO: the secret key ends up in the session logs of every node. Trial actors of a local
# sweep inherit the driver's environment anyway (Ray's processes start from it); on a cluster,
# nodes use their own credentials (cluster.yaml: the instance profile).
_CREDENTIALS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
)


@contextlib.contextmanager
def _credentials_stay_in_the_driver():
    from ray.tune.execution import class_cache

    saved = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = set(saved) - _CREDENTIALS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = saved


def _stages(cfg: SweepConfig, state: dict, exp_path: str, resume: bool) -> list[dict]:
    """The Tune experiments that make up the sweep: the first, then one per extension
    (``--resume search.num_samples=N`` with N above what was planned)."""
    first = {"storage_path": cfg.storage_path, "name": cfg.name}
    if not resume:
        return [{**first, "num_samples": cfg.search.num_samples}]
    stages = state.get("stages") or [{**first, "num_samples": cfg.search.num_samples}]
    planned = sum(s["num_samples"] for s in stages)
    if cfg.search.num_samples > planned:
        stages.append(
            {
                "storage_path": exp_path,
                "name": f"extend-{len(stages)}",
                "num_samples": cfg.search.num_samples - planned,
            }
        )
    return stages


def _stage_path(stage: dict) -> str:
    return _under(stage["storage_path"], stage["name"])


# Settings a resumed sweep may change: more trials, and where it reads and writes.
_RESUME_MAY_CHANGE = {"search.num_samples", "tracking.tracking_uri"}


def check_resume(cfg: SweepConfig, tracking_uri: str, explicit_uri: bool) -> str:
    """Checks that ``--resume`` continues the sweep as it was started; returns the tracking
    URI to use (the sweep's own).

    Raises:
        ConfigError: no sweep state to resume, another tracking URI, fewer trials than planned,
            or changed trial or search settings (each named, with both values).
    """
    state_path = state_dir(cfg) / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(
            "--resume", [f"no sweep state at {state_path}: run the sweep without --resume"]
        )
    state = json.loads(state_path.read_text())
    stored_uri = state.get("tracking_uri")
    if explicit_uri and stored_uri and tracking_uri != stored_uri:
        raise ConfigError(
            "--resume",
            [
                f"`tracking.tracking_uri`: the sweep is tracked at {redact_uri(stored_uri)!r}, "
                f"but got {redact_uri(tracking_uri)!r} (a resumed sweep keeps its store: drop "
                "the option or pass the same URI)"
            ],
        )
    errors = []
    if "config" in state:
        errors = config_differences(
            state["config"],
            cfg.model_dump(mode="json"),
            was="the sweep ran with",
            may_change=_RESUME_MAY_CHANGE,
        )
    planned = sum(s["num_samples"] for s in state.get("stages", [])) or None
    if planned and cfg.search.num_samples < planned:
        errors.append(
            f"`search.num_samples`: the sweep planned {planned} trials, but got "
            f"{cfg.search.num_samples} (it can be raised to extend the sweep, not lowered)"
        )
    if errors:
        raise ConfigError("--resume", errors)
    return stored_uri or tracking_uri


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
        cfg: the validated sweep config (see :func:`qa_ray.sweep_config.load_sweep_config`).
        tracking_uri: the MLflow tracking URI (on resume: see :func:`check_resume`).
        address: an existing Ray cluster; ``None`` starts Ray embedded.
        resume: continue the sweep stored under ``storage_path/name``; finished trials are
            not rerun and their MLflow runs are reused; a larger ``search.num_samples`` runs
            the extra trials on the same Optuna study and parent run.
        resolved_yaml: the resolved sweep config text, logged on the parent run.
        verbose: also show the Ray workers' output on this console.

    Returns:
        Every trial's outcome, and the signal that interrupted the sweep, if one did.
    """
    from ray import tune

    exp_path = experiment_path(cfg)
    local = state_dir(cfg)
    state_path = local / STATE_FILE
    restorable = tune.Tuner.can_restore(exp_path)
    if resume and not restorable:
        raise ConfigError(
            "--resume",
            [f"no sweep to resume at {exp_path} (storage_path/name); run it without --resume"],
        )
    if not resume and restorable:
        raise ConfigError(
            "storage_path",
            [
                f"a sweep named {cfg.name!r} already exists at {exp_path}: pass --resume to "
                "continue it, or choose another `name` (nothing there was touched)"
            ],
        )
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    stages = _stages(cfg, state, exp_path, resume)
    # The MLflow store is opened (a new one migrates its schema, about 2 s) while Ray starts.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qa-ray-mlflow") as pool:
        store = pool.submit(open_experiment, tracking_uri, cfg.tracking.experiment_name)
        cluster = init_ray(address, verbose)
        store.result()
    p = plan(cfg, cluster, elastic=address is not None)
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
    print(
        f"[qa-ray] sweep {cfg.name}: MLflow parent run {parent_id} at {redact_uri(tracking_uri)}",
        flush=True,
    )
    print(f"[qa-ray] plan: {json.dumps(p)}", flush=True)
    if len(stages) > 1 and not tune.Tuner.can_restore(_stage_path(stages[-1])):
        print(
            f"[qa-ray] extending the sweep by {stages[-1]['num_samples']} trials "
            f"(same Optuna study, same parent run)",
            flush=True,
        )
    if address:
        for note in _cluster_notes(cfg, exp_path):
            print(f"[qa-ray] note: {note}", flush=True)

    status, results = "FAILED", []
    with _Interrupts() as interrupts, _credentials_stay_in_the_driver():
        try:
            for i, stage in enumerate(stages):
                grid = _fit(cfg, stage, i, local, tracking_uri, parent_id, p)
                # Each result with its trial's status (ResultGrid lists results in the order
                # of its analysis' trials; the status is not public on a Result in Ray 2.60).
                trials_of = grid._experiment_analysis.trials
                results += list(zip(grid, [t.status for t in trials_of], strict=True))
                if interrupts.signal is not None:
                    break
            status = "KILLED" if interrupts.signal is not None else "FINISHED"
        finally:
            if status == "KILLED":
                kill_running_children(tracking_uri, parent_id)
    trials = [_outcome(r, tune_status) for r, tune_status in results]
    if status == "FINISHED":
        _close_study(local, cfg.name)
        if not any(t["status"] == "COMPLETE" for t in trials):
            status = "FAILED"  # no trial completed: the sweep found nothing
    finish_parent_run(tracking_uri, parent_id, status)
    return SweepResult(parent_id, trials, interrupts.signal)


def _outcome(r, tune_status: str) -> dict[str, Any]:
    error = None
    metrics = r.metrics or {}
    if r.error or tune_status == "ERROR":
        status, error = "FAILED", failure_reason(str(r.error))
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


def early_stopping(cfg: SweepConfig, local: Path):
    """The sweep's ``search.scheduler`` as a Ray Tune scheduler, or None (every trial runs
    to its end)."""
    from qa_ray.scheduler import MOASHA

    sc = cfg.search.scheduler
    if sc is None:
        return None
    return MOASHA(
        [(o.metric, o.mode) for o in cfg.objectives],
        time_attr=sc.time_attr,
        grace=sc.grace,
        reduction_factor=sc.reduction_factor,
        constraints=parse_constraints(cfg.constraints, cfg.model.task),
        state_file=str(local / "mo_asha.json"),
    )


def _study_storage(local: Path):
    """The sweep's Optuna study storage: sqlite in its state folder."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{local / 'optuna.db'}")


def _close_study(local: Path, name: str) -> None:
    """Marks FAIL the Optuna trials a sweep leaves RUNNING (a driver killed mid-trial whose
    trial Tune did not rerun): the samplers skip them instead of waiting on them forever."""
    import optuna

    storage = _study_storage(local)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        logger.info("optuna trial %d was left RUNNING: marked FAIL", t.number)


def _tune_config(searcher, scheduler, num_samples: int, p: dict):
    """Tune's settings for one stage of the sweep.

    A trial's actor is reused by the next trial when no scheduler stops trials: that saves
    starting a Python process and importing Ray Train and torch again (about 3.5 s a trial on
    a 2-core CPU). With a scheduler it is not: a trial stopped early is still inside its
    ``TorchTrainer.fit()``, which only ends when Tune kills its actor (and with it the Train
    controller and workers); a reused actor would keep that run training.
    """
    from ray import tune

    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=p["max_concurrent_trials"],
        reuse_actors=scheduler is None,
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )


def _fit(
    cfg: SweepConfig,
    stage: dict,
    index: int,
    local: Path,
    tracking_uri: str,
    parent_id: str,
    p: dict,
):
    from ray import tune

    from qa_ray.scheduler import EarlyStopMarks
    from qa_ray.searcher import BudgetAwareOptunaSearch

    exp_path = experiment_path(cfg)
    base = cfg.trial_config().model_dump()
    # The trial function only drives its TorchTrainer; the workers hold the CPUs/GPUs. Ray
    # needs a non-empty bundle, so the driver asks for a token amount of memory (1 byte).
    trainable = tune.with_resources(
        partial(
            _run_trial,
            base=base,
            storage_path=f"{exp_path}/train",
            objectives=tuple(o.metric for o in cfg.objectives),
        ),
        {"memory": 1},
    )
    path = _stage_path(stage)
    if tune.Tuner.can_restore(path):
        # Tune restores the callbacks and searcher it pickled: the same MLflow store and
        # parent run (check_resume refuses another), the same study.
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
        return tuner.fit()
    constraints = parse_constraints(cfg.constraints, cfg.model.task)
    scheduler = early_stopping(cfg, local)
    # Tune's result.json and progress.csv per trial, as Tune writes them by default, but not
    # its TensorBoard files (MLflow holds the curves): tensorboardX imports torch, which the
    # driver never needs otherwise (a second and a half of the sweep's start on 2 cores).
    os.environ.setdefault(TUNE_AUTO_LOGGERS_OFF, "1")
    callbacks = [
        tune.logger.CSVLoggerCallback(),
        tune.logger.JsonLoggerCallback(),
        *([EarlyStopMarks(scheduler.time_attr)] if scheduler else []),
        MLflowSweepCallback(tracking_uri, parent_id, m.CURVES, base_config=base),
        ProgressCallback(cfg.objectives, stage["num_samples"]),
    ]
    searcher = BudgetAwareOptunaSearch(
        constraints=constraints,
        space=DefineByRun(cfg.space, cfg.trial_config()),
        metric=[o.metric for o in cfg.objectives],
        mode=[o.mode for o in cfg.objectives],
        sampler=_sampler(cfg),
        # The first stage evaluates the initial points; an extension continues the study.
        points_to_evaluate=(
            [dict(pt) for pt in cfg.search.initial_points] or None if index == 0 else None
        ),
        study_name=cfg.name,
        storage=_study_storage(local),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=_tune_config(searcher, scheduler, stage["num_samples"], p),
        run_config=tune.RunConfig(
            name=stage["name"],
            storage_path=stage["storage_path"],
            callbacks=callbacks,
            verbose=0,
        ),
    )
    return tuner.fit()
