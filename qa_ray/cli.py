"""The ``qa-ray`` command line.

    qa-ray validate sweeps/quickstart.yaml
    qa-ray plan sweeps/quickstart.yaml [--gpu-memory 24000,48000,80000] [--samples 32]
    qa-ray sweep sweeps/quickstart.yaml [key=value ...] [--dry-run] [--resume]
    qa-ray train trial.yaml model.name_or_path=/path/to/model train.max_steps=50 [--resume]
    qa-ray score dev-v2.0.json.gz predictions.json
    qa-ray pareto SWEEP_NAME_OR_PARENT_RUN_ID [--x peak_memory_mb --y eval_f1]
    qa-ray submit SWEEP.yaml --address http://HEAD:8265 [key=value ...] [--no-follow]
    qa-ray job status|logs|stop JOB_ID --address http://HEAD:8265

Exit codes: 0 ok (a sweep: at least one trial completed; with --strict, none failed), 1 the run
itself failed (a sweep: no trial completed), 2 bad input (config, data, predictions), with a
message naming the file, the field and the value, 130 / 143 a sweep interrupted by SIGINT /
SIGTERM (its state saved: the printed --resume command continues it).

Longer than 500 lines: one parser and one short function per subcommand, read side by side;
what a subcommand does lives in the package it calls.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import logging
import math
import os
import sys
from collections.abc import Sequence

from qa_ray.errors import ConfigError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_score(args) -> int:
    from qa_ray.data.examples import DataError, read_json
    from qa_ray.data.squad import gold_questions, load_examples
    from qa_ray.scoring.squad import score

    questions = gold_questions(load_examples(args.dataset))
    preds = read_json(args.predictions)
    if not isinstance(preds, dict):
        raise DataError(
            args.predictions,
            [
                f"expected a JSON object {{question_id: answer_text}}, but got a {type(preds).__name__}"
            ],
        )
    bad = [
        f"`{k}`: answer must be a string, but got {v!r}"
        for k, v in preds.items()
        if not isinstance(v, str)
    ]
    if bad:
        raise DataError(args.predictions, bad[:25])
    report = score(questions, preds)
    if report.missing:
        print(
            f"warning: {len(report.missing)} question(s) have no prediction and score 0 "
            f"(first: {report.missing[0]})",
            file=sys.stderr,
        )
    if report.unknown:
        print(
            f"warning: {len(report.unknown)} prediction(s) for unknown question ids are ignored "
            f"(first: {report.unknown[0]})",
            file=sys.stderr,
        )
    print(json.dumps(report.scores, indent=2))
    return EXIT_OK


def _check_resumable(cfg) -> str:
    """The checkpoint ``qa-ray train --resume`` continues from; bad input when there is none,
    or when it was written for another model or data."""
    from qa_ray.config.files import config_differences
    from qa_ray.training.session import latest_local_checkpoint

    newest = latest_local_checkpoint(cfg.output_dir)
    if newest is None:
        raise ConfigError(
            "--resume",
            [f"`output_dir`: no checkpoint under {cfg.output_dir}/checkpoints to resume from"],
        )
    saved = json.loads((newest / "trial_config.json").read_text())
    now = cfg.model_dump()
    if now["data"]["squad_v2"] is None:  # unset: the loop decided it, and saved its decision
        now["data"]["squad_v2"] = saved["data"].get("squad_v2")
    changed = config_differences(
        {b: saved[b] for b in ("model", "data")},
        {b: now[b] for b in ("model", "data")},
        was="the checkpoint has",
    )
    if changed:
        raise ConfigError(f"--resume from {newest}", changed)
    return str(newest)


def _cmd_train(args) -> int:
    from qa_ray.config.files import load_trial_config
    from qa_ray.tracking.runs import resolve_teacher, resolve_tracking_uri
    from qa_ray.training.loop import train_loop_per_worker

    cfg = load_trial_config(args.config, args.overrides)
    cfg = resolve_teacher(cfg, resolve_tracking_uri(None, None))  # teacher: sweep:SWEEP/TRIAL
    if args.resume:
        newest = _check_resumable(cfg)
        print(f"[qa-ray] resuming from {newest}", flush=True)
    print(f"[qa-ray] training {cfg.model.name_or_path} -> {cfg.output_dir}", flush=True)
    from qa_ray import metrics as m

    result = train_loop_per_worker(cfg.model_dump(), resume=args.resume)
    print(json.dumps(result, indent=2))
    if result.get(m.INFEASIBLE):
        print(f"[qa-ray] stopped, infeasible: {result[m.INFEASIBLE_REASON]}", flush=True)
        return EXIT_FAILED
    print(f"[qa-ray] predictions, metrics.json and checkpoints in {cfg.output_dir}")
    return EXIT_OK


def _cmd_validate(args) -> int:
    from qa_ray.sweep.config import load_sweep_config

    cfg = load_sweep_config(args.sweep, args.overrides)
    print(f"{args.sweep}: ok ({cfg.search.num_samples} trials over {sorted(cfg.space.params)})")
    return EXIT_OK


def _cmd_plan(args) -> int:
    from qa_ray.sweep.config import load_sweep_config
    from qa_ray.sweep.memory_plan import format_plan, plan_memory

    cfg = load_sweep_config(args.sweep, args.overrides)
    try:
        plan = plan_memory(cfg, args.gpu_memory, samples=args.samples, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(args.sweep, [str(exc)]) from None
    print(format_plan(plan))
    return EXIT_OK


def _resume_command(args) -> str:
    import shlex

    parts = ["qa-ray", "sweep", args.sweep, *args.overrides, "--resume"]
    if args.address:
        parts += ["--address", args.address]
    if args.tracking_uri:  # its credentials, if any, go in MLFLOW_TRACKING_USERNAME/PASSWORD
        from qa_ray.tracking.runs import split_credentials

        parts += ["--tracking-uri", split_credentials(args.tracking_uri)[0]]
    return shlex.join(parts)


def _failure_groups(trials) -> list[str]:
    """Failed trials grouped by reason, most frequent first: ``3 x OSError: ...``."""
    import collections

    counts = collections.Counter(t["error"] for t in trials if t["status"] == "FAILED")
    return [f"{n} x {reason}" for reason, n in counts.most_common()]


def _cmd_sweep(args) -> int:
    import yaml

    from qa_ray.sweep.config import load_sweep_config
    from qa_ray.sweep.resources import plan
    from qa_ray.sweep.run import run_sweep
    from qa_ray.sweep.state import check_resume
    from qa_ray.tracking.runs import (
        credentials_to_environment,
        redact_uri,
        resolve_teacher,
        resolve_tracking_uri,
    )

    cfg = load_sweep_config(args.sweep, args.overrides)
    if args.constraint:  # validated as the file's own `constraints`
        args.overrides = [
            *args.overrides,
            "constraints=" + json.dumps([*cfg.constraints, *args.constraint]),
        ]
        cfg = load_sweep_config(args.sweep, args.overrides)
    uri = credentials_to_environment(
        resolve_tracking_uri(cfg.tracking.tracking_uri, args.tracking_uri)
    )
    if cfg.tracking.tracking_uri:  # what is logged and saved holds no credentials
        tracking = cfg.tracking.model_copy(
            update={"tracking_uri": credentials_to_environment(cfg.tracking.tracking_uri)}
        )
        cfg = cfg.model_copy(update={"tracking": tracking})
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
    result = run_sweep(
        cfg,
        uri,
        address=args.address,
        resume=args.resume,
        resolved_yaml=resolved,
        verbose=args.verbose,
    )
    with _ray_stopping():
        return _sweep_ended(args, cfg, uri, result)


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


def _sweep_ended(args, cfg, uri: str, result) -> int:
    """The sweep's last words: why it stopped, or its report; the exit code."""
    import signal

    from qa_ray.tracking.runs import redact_uri

    trials = result.trials
    complete = [t for t in trials if t["status"] == "COMPLETE"]
    failed = [t for t in trials if t["status"] == "FAILED"]
    groups = _failure_groups(trials)
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        print(
            f"\n[qa-ray] interrupted ({name}): {len(complete)} trials complete, {len(failed)} "
            f"failed, the trials in flight stopped; MLflow parent run {result.parent_run_id} "
            "is KILLED and no Pareto report was published.\n"
            f"[qa-ray] continue it with: {_resume_command(args)}",
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
    ended = collections.Counter(t["status"] for t in trials)
    others = [
        f"{ended[k]} {label}"
        for k, label in (("PRUNED", "stopped early"), ("INFEASIBLE", "infeasible"))
        if ended[k]
    ]
    print(
        f"\n[qa-ray] {len(complete)} of {len(trials)} trials complete, {len(failed)} failed"
        + "".join(f", {o}" for o in others)
        + f". MLflow parent run {result.parent_run_id}"
    )
    for line in groups:
        print(f"  failed: {line}")
    print(
        f"[qa-ray] open it: mlflow ui --backend-store-uri {redact_uri(uri)}  "
        f"(experiment {cfg.tracking.experiment_name!r}, run {cfg.name!r}; filter trials on the "
        f'front with tags.pareto_optimal = "true")'
    )
    if failed and args.strict:
        print(f"[qa-ray] --strict: {len(failed)} failed trial(s) make the sweep fail")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_pareto(args) -> int:
    from pydantic import ValidationError

    from qa_ray.pareto import parse_constraint
    from qa_ray.report.publish import publish_comparison, publish_pareto
    from qa_ray.report.summary import sweep_constraints
    from qa_ray.report.tables import budget_lines, trials_table
    from qa_ray.sweep.config import OBJECTIVE_METRICS, Objective
    from qa_ray.tracking.runs import find_parent_run, resolve_tracking_uri

    # Checked before reading MLflow: every error at once, exit 2.
    errors, objectives = [], []
    for flag, metric, mode in (("--y", args.y, args.y_mode), ("--x", args.x, args.x_mode)):
        try:
            objectives.append(Objective(metric=metric, mode=mode))
        except ValidationError:
            errors.append(f"`{flag}`: unknown metric {metric!r}, expected one of "
                          f"{list(OBJECTIVE_METRICS)}")  # fmt: skip
    for text in args.constraint or []:
        try:
            c = parse_constraint(text)
        except ValueError as exc:
            errors.append(f"`--constraint`: {exc}")
            continue
        if c.metric not in OBJECTIVE_METRICS:
            errors.append(f"`--constraint`: unknown metric {c.metric!r} in {text!r}")
    if errors:
        raise ConfigError("command line", errors)
    uri = resolve_tracking_uri(None, args.tracking_uri)
    parents = [find_parent_run(uri, s) for s in args.sweep_or_run]
    constraints = args.constraint or sweep_constraints(uri, parents[0])
    if len(parents) == 1:
        summary = publish_pareto(uri, parents[0], objectives, constraints, budgets=args.budgets)
    else:
        summary = publish_comparison(uri, parents, objectives, constraints, budgets=args.budgets)
        print(f"[qa-ray] one front over {len(parents)} sweeps: MLflow run {summary.parent_run_id}")
    print(trials_table(summary))
    for line in budget_lines(summary):
        print(f"[qa-ray] {line}")
    return EXIT_OK


def _cmd_submit(args) -> int:
    from qa_ray.sweep import jobs

    job_id = jobs.submit(
        args.sweep,
        args.overrides,
        args.address,
        tracking_uri=args.tracking_uri,
        working_dir=args.working_dir,
        submission_id=args.job_id,
    )
    print(f"[qa-ray] submitted job {job_id} to {args.address}", flush=True)
    print(
        f"[qa-ray] follow: qa-ray job logs {job_id} --follow --address {args.address}\n"
        f"[qa-ray] stop:   qa-ray job stop {job_id} --address {args.address}",
        flush=True,
    )
    if args.no_follow:
        return EXIT_OK
    return _follow(args.address, job_id)


def _follow(address: str, job_id: str) -> int:
    from qa_ray.sweep import jobs

    try:
        status = jobs.follow(address, job_id)
    except KeyboardInterrupt:
        print(
            f"\n[qa-ray] detached; job {job_id} goes on (qa-ray job status {job_id} "
            f"--address {address})",
            file=sys.stderr,
        )
        return EXIT_OK
    print(f"[qa-ray] job {job_id}: {status}")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED


def _cmd_job(args) -> int:
    from qa_ray.sweep import jobs

    if args.action == "status":
        status, message = jobs.job_status(args.address, args.job_id)
        print(f"{args.job_id}: {status}" + (f" ({message})" if message else ""))
        return EXIT_OK
    if args.action == "logs":
        if args.follow:
            return _follow(args.address, args.job_id)
        print(jobs.job_logs(args.address, args.job_id), end="")
        return EXIT_OK
    stopped = jobs.stop_job(args.address, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return EXIT_OK


_BUDGETS_HELP = (
    "bounds on the x metric (peak_memory_mb), e.g. 8000,16000,24000: the best trial under "
    "each, printed and written as a runnable `qa-ray train` YAML on the parent run"
)


def _budgets(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive numbers separated by commas (8000,16000), but got {text!r}"
        )
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qa-ray",
        description="Find the best question-answering fine-tune for a memory budget.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_, example):
        sp = sub.add_parser(
            name,
            help=help_,
            description=f"{help_}\n\nexample:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(fn=fn)
        return sp

    sp = add(
        "score",
        _cmd_score,
        "score SQuAD predictions like the official v2.0 script",
        "qa-ray score dev-v2.0.json.gz predictions.json",
    )
    sp.add_argument("dataset", help="official-format SQuAD JSON (.json or .json.gz)")
    sp.add_argument("predictions", help="JSON object {question_id: answer_text}")

    sp = add(
        "train",
        _cmd_train,
        "run one fine-tune (one trial of a sweep) in-process",
        "qa-ray train trial.yaml model.name_or_path=models/all-MiniLM-L6-v2 train.max_steps=50",
    )
    sp.add_argument("config", help="trial YAML (model, data, train, resources, output_dir)")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sp.add_argument(
        "--resume",
        action="store_true",
        help="continue from output_dir's newest checkpoint (weights, optimizer, schedule, "
        "position, RNG)",
    )

    sp = add(
        "validate",
        _cmd_validate,
        "validate a sweep file and its search space",
        "qa-ray validate sweeps/quickstart.yaml",
    )
    sp.add_argument("sweep")
    sp.add_argument("overrides", nargs="*")

    sp = add(
        "plan",
        _cmd_plan,
        "predict the peak memory of a sweep's space (corners and a sample) per GPU size",
        "qa-ray plan sweeps/quickstart.yaml --gpu-memory 24000,48000,80000",
    )
    sp.add_argument("sweep")
    sp.add_argument("overrides", nargs="*")
    sp.add_argument(
        "--gpu-memory",
        type=_budgets,
        default=(24000.0, 48000.0, 80000.0),
        help="device sizes in MB, comma-separated (default 24000,48000,80000)",
    )
    sp.add_argument("--samples", type=int, default=32, help="sampled configurations")
    sp.add_argument("--seed", type=int, default=0, help="of the sample")

    sp = add(
        "sweep",
        _cmd_sweep,
        "run a sweep on Ray Tune + Optuna, tracked in MLflow",
        "qa-ray sweep sweeps/quickstart.yaml search.num_samples=4",
    )
    sp.add_argument("sweep")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sp.add_argument("--dry-run", action="store_true", help="print config, space and plan only")
    sp.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sp.add_argument("--address", help="join this Ray cluster (default: start Ray locally)")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the sweep file)")
    sp.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any trial failed (default: exit 0 when at least one trial completed)",
    )
    sp.add_argument(
        "--constraint",
        action="append",
        default=[],
        help="a budget the search knows, added to the file's `constraints`, e.g. "
        "'peak_memory_mb <= 22000' (repeatable)",
    )
    sp.add_argument("--budgets", type=_budgets, default=(), help=_BUDGETS_HELP)

    sp = add(
        "pareto",
        _cmd_pareto,
        "print a sweep's Pareto front and (re)write its MLflow artifacts",
        "qa-ray pareto quickstart --x peak_memory_mb --y eval_f1",
    )
    sp.add_argument(
        "sweep_or_run",
        nargs="+",
        help="sweep name or parent run id; several: one front across them, in a comparison run",
    )
    sp.add_argument("--x", default="peak_memory_mb")
    sp.add_argument("--x-mode", default="min", choices=["min", "max"])
    sp.add_argument("--y", default="eval_f1")
    sp.add_argument("--y-mode", default="max", choices=["min", "max"])
    sp.add_argument(
        "--constraint",
        action="append",
        default=[],
        help="e.g. 'peak_memory_mb <= 16000' (repeatable; default: the sweep's constraints)",
    )
    sp.add_argument("--budgets", type=_budgets, default=(), help=_BUDGETS_HELP)
    sp.add_argument("--tracking-uri")

    address_help = "Ray dashboard address of the cluster (default: $RAY_ADDRESS)"
    sp = add(
        "submit",
        _cmd_submit,
        "submit a sweep to a Ray cluster as a Ray job and follow its logs (Ctrl-C detaches)",
        "qa-ray submit sweeps/quickstart.yaml --address http://127.0.0.1:8265",
    )
    sp.add_argument("sweep")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sp.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help=address_help)
    sp.add_argument("--tracking-uri", help="MLflow URI as the cluster sees it")
    sp.add_argument("--working-dir", default=".", help="uploaded to the cluster (default: .)")
    sp.add_argument("--job-id", help="submission id (default: qa-ray-NAME-TIME)")
    sp.add_argument("--no-follow", action="store_true", help="print the job id and return")

    sp = add(
        "job",
        _cmd_job,
        "status, logs or stop of a submitted sweep",
        "qa-ray job logs qa-ray-quickstart-20261122-101500 --follow",
    )
    sp.add_argument("action", choices=["status", "logs", "stop"])
    sp.add_argument("job_id")
    sp.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help=address_help)
    sp.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come after flags (`sweep x.yaml --dry-run key=value`): argparse leaves those
    # unparsed, so collect them here; anything else unknown is still an error.
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") or "=" not in a]
    if stray or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("submit", "job") and not args.address:
        parser.error(f"{args.command}: --address (or $RAY_ADDRESS) is required")
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; `qa-ray sweep --resume` continues a sweep", file=sys.stderr)
        return 130
    finally:
        if argv is None:  # run as the `qa-ray` program, about to exit
            # The interpreter's last garbage collections walk every object Ray, MLflow,
            # Optuna and pandas left (about 1.5 s after a sweep on 2 cores); frozen, they are
            # skipped. Objects are still freed by reference counting.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
