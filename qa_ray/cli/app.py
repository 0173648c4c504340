"""Runs one ``qa-ray`` command: parse, quiet the console, call the subcommand, and turn its
errors into exit codes (``qa-ray --help`` lists them)."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from qa_ray.cli.codes import EXIT_BAD_INPUT, EXIT_FAILED
from qa_ray.errors import ConfigError

__all__ = ["main"]


def _commands() -> dict:
    from qa_ray.cli import env, export, jobs, replay, results, shipped, sweep, train

    return {
        "sweep": sweep.cmd_sweep,
        "validate": sweep.cmd_validate,
        "plan": sweep.cmd_plan,
        "train": train.cmd_train,
        "score": results.cmd_score,
        "pareto": results.cmd_pareto,
        "replay": replay.cmd_replay,
        "best": export.cmd_best,
        "export": export.cmd_export,
        "submit": jobs.cmd_submit,
        "job": jobs.cmd_job,
        "env": env.cmd_env,
        "sweeps.list": shipped.cmd_list,
        "sweeps.copy": shipped.cmd_copy,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``qa-ray`` command; returns its exit code (see ``qa-ray --help``)."""
    from qa_ray import __version__
    from qa_ray.cli import parser as parsing
    from qa_ray.cli.quiet import configure

    parser = parsing.build(__version__, _commands())
    # Overrides may come after flags (`sweep x.yaml --dry-run key=value`): argparse leaves those
    # unparsed, so collect them here; anything else unknown is still an error.
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    stray = [a for a in rest if a.startswith("-") or "=" not in a]
    if stray or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    configure(args.verbose)
    # The sweep's callback appends tables to its runs at every evaluation (MLflow downloads
    # each to append): no progress bar of MLflow's on the console for that, or for any
    # artifact qa-ray reads back. One set by the user wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
