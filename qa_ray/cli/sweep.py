"""``qa-ray validate`` and ``qa-ray sweep``: a sweep file checked, run, and its last words.

qa-ray validate sweeps/quickstart.yaml
qa-ray sweep sweeps/quickstart.yaml search.num_samples=4 [--dry-run] [--resume]
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
import traceback

from qa_ray.cli.codes import EXIT_FAILED, EXIT_OK
from qa_ray.errors import ConfigError


def cmd_validate(args) -> int:
    from qa_ray.sweep.config import load_sweep_config

    cfg = load_sweep_config(args.sweep, args.overrides)
    print(f"{args.sweep}: ok ({cfg.search.num_samples} trials over {sorted(cfg.space.params)})")
    return EXIT_OK


def cmd_plan(args) -> int:
    from qa_ray.sweep.config import load_sweep_config
    from qa_ray.sweep.memory_plan import format_markdown, format_plan, plan_memory

    cfg = load_sweep_config(args.sweep, args.overrides)
    try:
        plan = plan_memory(cfg, args.gpu_memory, samples=args.samples, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(args.sweep, [str(exc)]) from None
    print(format_markdown(plan) if args.markdown else format_plan(plan))
    return EXIT_OK


def resume_command(args) -> str:
    """The exact command that continues an interrupted sweep, without credentials."""
    import shlex

    from qa_ray.sweep.config import overrides_without_credentials
    from qa_ray.tracking.runs import split_credentials

    # Credentials, if any, go in MLFLOW_TRACKING_USERNAME/PASSWORD; the command holds none.
    overrides = overrides_without_credentials(args.overrides)[0]
    parts = ["qa-ray", "sweep", args.sweep, *overrides, "--resume"]
    for budget in getattr(args, "constraint", []):
        parts += ["--constraint", budget]
    if args.address:
        parts += ["--address", args.address]
    if args.tracking_uri:
        parts += ["--tracking-uri", split_credentials(args.tracking_uri)[0]]
    return shlex.join(parts)


def replay_hint(cfg, uri: str, trials) -> str | None:
    """The command that advises the next sweep's early stopping from this one: said when it
    ran a scheduler or enough trials to its end to replay."""
    import shlex

    from qa_ray.report.advise import MIN_TRIALS
    from qa_ray.tracking.runs import split_credentials

    ended = sum(t["status"] in ("COMPLETE", "INFEASIBLE") for t in trials)
    if cfg.search.scheduler is None and ended < MIN_TRIALS:
        return None
    # Credentials, if any, go in MLFLOW_TRACKING_USERNAME/PASSWORD, as for --resume.
    uri = split_credentials(uri)[0]
    command = shlex.join(["qa-ray", "replay", cfg.name, "--tracking-uri", uri])
    return f"[qa-ray] whether to stop trials early next time, and how: {command}"


def failure_groups(trials) -> list[str]:
    """Failed trials grouped by reason, most frequent first: ``3 x OSError: ...``."""
    counts = collections.Counter(t["error"] for t in trials if t["status"] == "FAILED")
    return [f"{n} x {reason}" for reason, n in counts.most_common()]


def cmd_sweep(args) -> int:
    import yaml

    started = time.monotonic()
    from qa_ray.sweep.config import load_sweep_config
    from qa_ray.sweep.resources import plan
    from qa_ray.sweep.run import run_sweep
    from qa_ray.sweep.state import check_resume, check_storage_path
    from qa_ray.tracking.runs import (
        check_tracking_uri,
        credentials_to_environment,
        redact_uri,
        resolve_teacher,
        resolve_tracking_uri,
    )

    cfg = load_sweep_config(args.sweep, args.overrides, args.constraint)
    uri = credentials_to_environment(
        resolve_tracking_uri(cfg.tracking.tracking_uri, args.tracking_uri)
    )
    if cfg.tracking.tracking_uri:  # what is logged and saved holds no credentials
        tracking = cfg.tracking.model_copy(
            update={"tracking_uri": credentials_to_environment(cfg.tracking.tracking_uri)}
        )
        cfg = cfg.model_copy(update={"tracking": tracking})
    if args.tracking_uri:  # where the URI came from, as resolve_tracking_uri chose it
        uri_from = "--tracking-uri"
    elif cfg.tracking.tracking_uri:
        uri_from = "tracking.tracking_uri"
    else:
        uri_from = "MLFLOW_TRACKING_URI"
    check_tracking_uri(uri, args.sweep, uri_from)
    check_storage_path(cfg, args.sweep)
    cfg = resolve_teacher(cfg, uri)  # a teacher named sweep:SWEEP/TRIAL: its checkpoint folder
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    if args.dry_run:
        print("# resolved sweep config\n" + resolved)
        print(f"# tracking: {redact_uri(uri)} (experiment {cfg.tracking.experiment_name!r})")
        print("# resource plan (this machine's resources are counted when the sweep starts)")
        print(json.dumps(plan(cfg), indent=2, default=str))
        return EXIT_OK
    from qa_ray.config.paths import check_hub_ids
    from qa_ray.report import plots

    try:  # the report at the end needs them: say so now, not after hours of trials
        plots.check_available()
    except ImportError as exc:
        raise ConfigError("environment", [str(exc)]) from None
    for warning in check_hub_ids(cfg.trial_config(), args.sweep):
        print(f"[qa-ray] note: {warning}; the trials will load it", flush=True)
    if args.resume:
        explicit = bool(
            args.tracking_uri or cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        )
        uri = check_resume(cfg, uri, explicit)
    try:
        result = run_sweep(
            cfg,
            uri,
            address=args.address,
            resume=args.resume,
            resolved_yaml=resolved,
            verbose=args.verbose,
        )
    except ConfigError:
        raise
    except Exception:  # Tune raised, the cluster was lost: run_sweep ended the runs FAILED
        traceback.print_exc()
        print(
            "error: the sweep failed (its MLflow parent run and the trials in flight are "
            f"FAILED); once the cause is fixed, continue it with: {resume_command(args)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    with _ray_stopping():
        return _sweep_ended(args, cfg, uri, result, time.monotonic() - started)


@contextlib.contextmanager
def _ray_stopping():
    """Ray stops (a local cluster's processes: about 1.5 s on 2 cores) while the report is
    written; the way out waits for it."""
    import threading

    import ray

    stopping = threading.Thread(target=ray.shutdown, name="qa-ray-ray-shutdown")
    stopping.start()
    try:
        yield
    finally:
        stopping.join()


def _sweep_ended(args, cfg, uri: str, result, seconds: float) -> int:
    """The sweep's last words: why it stopped, or its report (with how long the command
    took on this machine); the exit code."""
    import signal

    from qa_ray.tracking.runs import redact_uri

    trials = result.trials
    complete = [t for t in trials if t["status"] == "COMPLETE"]
    failed = [t for t in trials if t["status"] == "FAILED"]
    groups = failure_groups(trials)
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        print(
            f"\n[qa-ray] interrupted ({name}): {len(complete)} trials complete, {len(failed)} "
            f"failed, the trials in flight stopped; MLflow parent run {result.parent_run_id} "
            "is KILLED and no Pareto report was published.\n"
            f"[qa-ray] continue it with: {resume_command(args)}",
            flush=True,
        )
        return 128 + result.interrupted_by
    if not complete:
        infeasible = [t for t in trials if t["status"] == "INFEASIBLE"]
        print(
            f"\n[qa-ray] no trial completed: {len(failed)} failed, {len(infeasible)} over a "
            f"budget or out of memory, of {len(trials)}; MLflow parent run "
            f"{result.parent_run_id} is FAILED. Reasons:",
            flush=True,
        )
        counts = collections.Counter(t["error"] for t in infeasible)
        for line in groups + [f"{n} x infeasible: {r}" for r, n in counts.most_common()]:
            print(f"  {line}")
        return EXIT_FAILED
    from qa_ray.report.publish import publish_pareto
    from qa_ray.report.tables import budget_lines, trials_table

    summary = publish_pareto(
        uri, result.parent_run_id, cfg.objectives, cfg.constraints, budgets=args.budgets
    )
    print(trials_table(summary))
    for line in budget_lines(summary):
        print(f"[qa-ray] {line}")
    _publish_importance(uri, result.parent_run_id, cfg, len(complete))
    ended = collections.Counter(t["status"] for t in trials)
    others = [
        f"{ended[k]} {label}"
        for k, label in (("PRUNED", "stopped early"), ("INFEASIBLE", "infeasible"))
        if ended[k]
    ]
    print(
        f"\n[qa-ray] {len(complete)} of {len(trials)} trials complete, {len(failed)} failed"
        + "".join(f", {o}" for o in others)
        + f", in {_duration(seconds)} here. MLflow parent run {result.parent_run_id}"
    )
    for line in groups:
        print(f"  failed: {line}")
    print(
        f"[qa-ray] open it: mlflow ui --backend-store-uri {redact_uri(uri)}  "
        f"(experiment {cfg.tracking.experiment_name!r}, run {cfg.name!r}; filter trials on the "
        f'front with tags.pareto_optimal = "true")'
    )
    if hint := replay_hint(cfg, uri, trials):
        print(hint)
    if failed and args.strict:
        print(f"[qa-ray] --strict: {len(failed)} failed trial(s) make the sweep fail")
        return EXIT_FAILED
    return EXIT_OK


def _duration(seconds: float) -> str:
    """``7 min 41 s`` (``41 s`` under a minute)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# Fewer completed trials than this: the console calls the importances a rough guide.
FEW_FOR_IMPORTANCE = 10


def _publish_importance(uri: str, parent_id: str, cfg, completed: int) -> None:
    """Each hyperparameter's importance per objective on the parent run (Optuna's evaluator
    over the sweep's study); a report that cannot be made is said, never fails the sweep."""
    from qa_ray.report.importance import publish_importance
    from qa_ray.sweep.state import state_dir

    try:
        found = publish_importance(
            uri, parent_id, state_dir(cfg) / "optuna.db", cfg.name,
            [o.metric for o in cfg.objectives],
        )  # fmt: skip
    except Exception as exc:
        print(f"[qa-ray] note: no parameter importance ({exc})", flush=True)
        return
    few = (
        f"; from {completed} completed trials, a rough guide"
        if completed < FEW_FOR_IMPORTANCE
        else ""
    )
    for metric, values in found.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(values.items())[:3])
        print(f"[qa-ray] what drives {metric}: {top} (importance/ on the parent run{few})")
