"""The ``qa-ray`` argument parser: every subcommand, with an example, a metavar and help for
every argument, and the exit codes."""

from __future__ import annotations

import argparse
import math
import os

from qa_ray.cli.codes import EXIT_CODES

_BUDGETS_HELP = (
    "bounds on the x metric (peak_memory_mb), e.g. 8000,16000,24000: the best trial under "
    "each, printed and written as a runnable `qa-ray train` YAML on the parent run"
)
_ADDRESS_HELP = (
    "Ray dashboard address of the cluster, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)"
)
_OVERRIDES_HELP = "dotted.key=value overrides, validated like the file (search.num_samples=8)"


def budgets(text: str) -> tuple[float, ...]:
    """``--budgets 8000,16000``: positive, finite numbers."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive numbers separated by commas (8000,16000), but got {text!r}"
        )
    return values


def build(version: str, commands) -> argparse.ArgumentParser:
    """The parser; ``commands`` maps a subcommand (``sweeps list``: ``sweeps.list``) to the
    function that runs it."""
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="qa-ray",
        description="Find the best question-answering fine-tune for a memory budget.",
        formatter_class=raw,
        epilog="example:\n  qa-ray sweep sweeps/quickstart.yaml search.num_samples=4\n\n"
        + EXIT_CODES,
    )
    p.add_argument("--version", action="version", version=f"qa-ray {version}")
    verbose_help = "show everything: debug logging, the Ray workers' output, library notices"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # -v after the subcommand too (`qa-ray sweep x.yaml -v`); unset there, the top one holds.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=verbose_help)  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(parent, name, key, help_, example):
        sp = parent.add_parser(
            name,
            help=help_,
            description=f"{help_}\n\nexample:\n  {example}",
            epilog=EXIT_CODES,
            formatter_class=raw,
            parents=[common],
        )
        sp.set_defaults(fn=commands[key])
        return sp

    def sweep_file(sp):
        sp.add_argument("sweep", metavar="SWEEP.yaml",
                        help="a sweep file (`qa-ray sweeps list`: the shipped ones)")  # fmt: skip
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)

    sp = add(sub, "sweep", "sweep", "run a sweep on Ray Tune + Optuna, tracked in MLflow",
             "qa-ray sweep sweeps/quickstart.yaml search.num_samples=4")  # fmt: skip
    sweep_file(sp)
    sp.add_argument("--dry-run", action="store_true",
                    help="print the resolved config, space and resource plan; run nothing")  # fmt: skip
    sp.add_argument("--resume", action="store_true",
                    help="continue an interrupted sweep (a larger search.num_samples extends it)")  # fmt: skip
    sp.add_argument("--address", metavar="ADDRESS",
                    help="join this Ray cluster, e.g. auto (default: start Ray locally)")  # fmt: skip
    sp.add_argument("--tracking-uri", metavar="URI",
                    help="MLflow tracking URI (default: the file's, $MLFLOW_TRACKING_URI, "
                    "then sqlite:///mlflow.db)")  # fmt: skip
    sp.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any trial failed (default: exit 0 when at least one trial completed)",
    )
    sp.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="'METRIC <= N'",
        help="a budget the search knows, added to the file's `constraints`, e.g. "
        "'peak_memory_mb <= 22000' (repeatable)",
    )
    sp.add_argument("--budgets", type=budgets, default=(), metavar="N[,N...]", help=_BUDGETS_HELP)

    sp = add(sub, "validate", "validate", "validate a sweep file and its search space",
             "qa-ray validate sweeps/quickstart.yaml")  # fmt: skip
    sweep_file(sp)

    sp = add(sub, "plan", "plan",
             "predict the peak memory of a sweep's space (its corners and a sample) per GPU size",
             "qa-ray plan sweeps/quickstart.yaml --gpu-memory 24000,48000,80000")  # fmt: skip
    sweep_file(sp)
    sp.add_argument("--gpu-memory", type=budgets, default=(24000.0, 48000.0, 80000.0),
                    metavar="MB[,MB...]",
                    help="device sizes in MB, comma-separated (default 24000,48000,80000)")  # fmt: skip
    sp.add_argument("--samples", type=int, default=32, metavar="N",
                    help="configurations sampled from the space (default 32)")  # fmt: skip
    sp.add_argument("--seed", type=int, default=0, metavar="N", help="of the sample (default 0)")
    sp.add_argument("--markdown", action="store_true",
                    help="print the corners as a markdown table, a row per model, method and "
                    "bits (what docs/memory-table.md holds)")  # fmt: skip

    sp = add(sub, "train", "train", "run one fine-tune (one trial of a sweep) in-process",
             "qa-ray train trial.yaml model.name_or_path=models/all-MiniLM-L6-v2 train.max_steps=50")  # fmt: skip
    sp.add_argument("config", metavar="TRIAL.yaml",
                    help="trial YAML (model, data, train, resources, output_dir)")  # fmt: skip
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    sp.add_argument("--resume", action="store_true",
                    help="continue from output_dir's newest checkpoint (weights, optimizer, "
                    "schedule, position, RNG)")  # fmt: skip

    sp = add(sub, "score", "score", "score SQuAD predictions like the official v2.0 script",
             "qa-ray score dev-v2.0.json.gz predictions.json --na-prob null_odds.json")  # fmt: skip
    sp.add_argument("dataset", metavar="DATASET",
                    help="official-format SQuAD JSON (.json or .json.gz)")  # fmt: skip
    sp.add_argument("predictions", metavar="PREDICTIONS",
                    help="JSON object {question_id: answer_text}")  # fmt: skip
    sp.add_argument("--na-prob", metavar="FILE",
                    help="JSON object {question_id: no-answer probability} (the official "
                    "--na-prob-file): adds best_exact, best_f1 and their thresholds")  # fmt: skip
    sp.add_argument("--na-prob-thresh", type=float, default=1.0, metavar="P",
                    help="with --na-prob: questions above it abstain in exact/f1 (official "
                    "default 1.0)")  # fmt: skip

    sp = add(sub, "pareto", "pareto",
             "print a sweep's Pareto front, read from MLflow (--publish: write its report there)",
             "qa-ray pareto quickstart --x peak_memory_mb --y eval_f1 --format json")  # fmt: skip
    sp.add_argument("sweep_or_run", nargs="+", metavar="SWEEP_OR_RUN",
                    help="sweep name or parent run id; several: one front across them")  # fmt: skip
    sp.add_argument("--x", metavar="METRIC",
                    help="the objective across (default: the sweep's second objective, else "
                         "peak_memory_mb)")  # fmt: skip
    sp.add_argument("--x-mode", choices=["min", "max"], metavar="MODE",
                    help="min or max (default: the objective's in the sweep, else min)")  # fmt: skip
    sp.add_argument("--y", metavar="METRIC",
                    help="the objective up (default: the sweep's first objective, else "
                         "eval_f1)")  # fmt: skip
    sp.add_argument("--y-mode", choices=["min", "max"], metavar="MODE",
                    help="min or max (default: the objective's in the sweep, else max)")  # fmt: skip
    sp.add_argument("--constraint", action="append", default=[], metavar="'METRIC <= N'",
                    help="e.g. 'peak_memory_mb <= 16000' (repeatable; default: the sweep's "
                    "constraints)")  # fmt: skip
    sp.add_argument("--budgets", type=budgets, default=(), metavar="N[,N...]", help=_BUDGETS_HELP)
    sp.add_argument("--tracking-uri", metavar="URI",
                    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then "
                    "sqlite:///mlflow.db)")  # fmt: skip
    sp.add_argument("--format", default="table", choices=["table", "json"], metavar="FORMAT",
                    help="table (default) or json: one object with every trial, the front "
                    "and the best trial under each budget, on stdout alone")  # fmt: skip
    sp.add_argument("--publish", action="store_true",
                    help="write the report to MLflow: the front's tags and pareto/ artifacts "
                    "on the parent run (several sweeps: a new comparison run), and each best "
                    "trial's YAML; default: read only, nothing written")  # fmt: skip

    for name, help_, example in (
        (
            "best",
            "write a sweep's best trial's configuration, read from MLflow, as a "
            "`qa-ray train` YAML",
            "qa-ray best quickstart --out best/",
        ),
        (
            "export",
            "copy a sweep's best trial's checkpoint (a model, or a LoRA adapter, merged "
            "with --merge) out of MLflow's record onto disk",
            "qa-ray export quickstart --out winner/ --merge",
        ),
    ):
        sp = add(sub, name, name, help_, example)
        sp.add_argument("sweep_or_run", metavar="SWEEP_OR_RUN",
                        help="sweep name or parent run id")  # fmt: skip
        sp.add_argument("--out", required=True, metavar="DIR",
                        help="the folder to write to" + (" (new or empty)" if name == "export"
                                                          else ""))  # fmt: skip
        sp.add_argument("--under", type=float, metavar="N",
                        help="the best trial with the second objective (peak_memory_mb) <= N "
                        "(default: the best first objective of every feasible trial)")  # fmt: skip
        sp.add_argument("--trial", metavar="NAME",
                        help="this trial instead of the best, as `qa-ray pareto` names it")  # fmt: skip
        sp.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then "
                        "sqlite:///mlflow.db)")  # fmt: skip
        if name == "export":
            sp.add_argument("--merge", action="store_true",
                            help="a LoRA adapter merged into its base model (peft's "
                            "merge_and_unload), saved as a plain model")  # fmt: skip

    sp = add(sub, "replay", "replay",
             "replay finished sweeps through early-stopping rules and advise the next sweep's "
             "search.scheduler block (or none)",
             "qa-ray replay benchmarks/curves/minilm_squad_v1_a.json")  # fmt: skip
    sp.add_argument("sweep", nargs="+", metavar="SWEEP",
                    help="a curve table (.json, `python -m qa_ray.report.curves`) or a sweep "
                    "name or parent run id in MLflow; several: a table of the same "
                    "configurations with another seed gives the noise floor, others are "
                    "pooled")  # fmt: skip
    sp.add_argument("--tracking-uri", metavar="URI",
                    help="MLflow tracking URI for sweep names (default: "
                    "$MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)")  # fmt: skip
    sp.add_argument("--splits", type=int, default=20, metavar="N",
                    help="cross-validation splits into two halves (default 20)")  # fmt: skip
    sp.add_argument("--draws", type=int, default=10, metavar="N",
                    help="random orders per half and worker count (default 10; the replay "
                    "of every configuration runs 4x as many)")  # fmt: skip
    sp.add_argument("--workers", type=int, nargs="+", default=[1, 4], metavar="W",
                    help="trials at a time to simulate (default 1 4)")  # fmt: skip
    sp.add_argument("--keep", type=float, default=0.95, metavar="F",
                    help="the share of running everything's hypervolume a recommended block "
                    "must keep on the held-out halves (default 0.95)")  # fmt: skip
    sp.add_argument("--seed", type=int, default=0, metavar="N",
                    help="of the splits and orders (default 0)")  # fmt: skip

    address = os.environ.get("RAY_ADDRESS")
    sp = add(sub, "submit", "submit",
             "submit a sweep to a Ray cluster as a Ray job and follow its logs (Ctrl-C detaches)",
             "qa-ray submit sweeps/quickstart.yaml --address http://127.0.0.1:8265")  # fmt: skip
    sweep_file(sp)
    sp.add_argument("--address", default=address, metavar="ADDRESS", help=_ADDRESS_HELP)
    sp.add_argument("--tracking-uri", metavar="URI", help="MLflow URI as the cluster sees it")
    sp.add_argument("--working-dir", default=".", metavar="DIR",
                    help="uploaded to the cluster (default: .)")  # fmt: skip
    # Named as `ray job submit` names them; the old names stay as aliases.
    sp.add_argument("--submission-id", "--job-id", dest="submission_id", metavar="ID",
                    help="the job's submission id (default: qa-ray-NAME-TIME)")  # fmt: skip
    sp.add_argument("--no-wait", "--no-follow", dest="no_wait", action="store_true",
                    help="print the job id and return, without following its logs")  # fmt: skip

    sp = add(sub, "job", "job", "status, logs or stop of a submitted sweep",
             "qa-ray job logs qa-ray-quickstart-20261122-101500 --follow")  # fmt: skip
    sp.add_argument("action", choices=["status", "logs", "stop"], metavar="ACTION",
                    help="status, logs or stop")  # fmt: skip
    sp.add_argument("job_id", metavar="SUBMISSION_ID", help="as `qa-ray submit` printed it")
    sp.add_argument("--address", default=address, metavar="ADDRESS", help=_ADDRESS_HELP)
    sp.add_argument("-f", "--follow", action="store_true",
                    help="logs: stream until the job ends")  # fmt: skip

    sp = add(sub, "env", "env",
             "what this machine offers a sweep: qa-ray, torch, CUDA, GPUs and their memory, "
             "bitsandbytes, Ray's resources (starts nothing unless --ray)",
             "qa-ray env --format json")  # fmt: skip
    sp.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="also ask Ray: alone, start a local Ray as a sweep does; with an "
                    "address (auto, ray://...), join that cluster")  # fmt: skip
    sp.add_argument("--format", default="text", choices=["text", "json"], metavar="FORMAT",
                    help="text (default) or json")  # fmt: skip

    sp = p_sweeps = sub.add_parser(
        "sweeps",
        help="list the sweeps and search spaces qa-ray ships, or copy one out to edit",
        description="the sweeps and search spaces installed with qa-ray\n\nexample:\n"
        "  qa-ray sweeps list\n  qa-ray sweeps copy quickstart my_sweep.yaml",
        epilog=EXIT_CODES,
        formatter_class=raw,
        parents=[common],
    )
    actions = p_sweeps.add_subparsers(dest="sweeps_command", metavar="ACTION", required=True)
    add(actions, "list", "sweeps.list", "list the shipped sweeps and search spaces",
        "qa-ray sweeps list")  # fmt: skip
    sp = add(actions, "copy", "sweeps.copy", "copy a shipped sweep or search space",
             "qa-ray sweeps copy quickstart my_sweep.yaml")  # fmt: skip
    sp.add_argument("name", metavar="NAME", help="as `qa-ray sweeps list` names it")
    sp.add_argument("dest", metavar="DEST", help="a file, or a folder to copy it into")
    sp.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    return p
