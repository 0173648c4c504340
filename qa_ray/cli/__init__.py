"""The ``qa-ray`` command line: one module per family of subcommands, each a short function
over the package it calls.

    qa-ray validate sweeps/quickstart.yaml
    qa-ray sweep sweeps/quickstart.yaml [KEY=VALUE ...] [--dry-run] [--resume] [-v]
    qa-ray train trial.yaml model.name_or_path=/path/to/model train.max_steps=50 [--resume]
    qa-ray score dev-v2.0.json.gz predictions.json [--na-prob na_prob.json]
    qa-ray pareto SWEEP_NAME_OR_PARENT_RUN_ID [--x peak_memory_mb --y eval_f1] [--format json] [--publish]
    qa-ray replay SWEEP_OR_CURVE_TABLE [...] [--splits 20] [--draws 10]
    qa-ray submit SWEEP.yaml --address http://HEAD:8265 [KEY=VALUE ...] [--no-wait]
    qa-ray job status|logs|stop SUBMISSION_ID --address http://HEAD:8265
    qa-ray env [--ray [ADDRESS]] [--format json]
    qa-ray sweeps list | qa-ray sweeps copy NAME DEST

- :mod:`.app`: :func:`main`, what runs a command and turns errors into exit codes;
- :mod:`.parser`: the parser (metavars, help, examples, exit codes);
- :mod:`.sweep`: ``validate``, ``sweep`` and how a sweep ends;
- :mod:`.train`, :mod:`.results` (``score``, ``pareto``), :mod:`.replay` (``replay``),
  :mod:`.jobs` (``submit``, ``job``),
  :mod:`.env`, :mod:`.shipped` (``sweeps list|copy``);
- :mod:`.quiet`: what the default console leaves out (``-v`` shows it);
- :mod:`.codes`: the exit codes.

``main`` loads :mod:`.app` on first use (as ``qa_ray`` loads its names), so this package's
``__init__`` imports none of its modules. The top layer: may import every other package.

Bare ``qa-ray`` prints the help to stderr and exits 2, as argparse exits for any other missing
argument: a script that calls it without a command learns it was misused, a person sees every
command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["main"]

if TYPE_CHECKING:
    from qa_ray.cli.app import main


def __getattr__(name: str) -> Any:
    if name == "main":  # the `qa-ray` entry point: qa_ray.cli:main
        return importlib.import_module("qa_ray.cli.app").main
    raise AttributeError(f"module 'qa_ray.cli' has no attribute {name!r}")
