"""Bad input to a benchmark script: one line on stderr, exit 2, before any work.

A script parses its flags with :class:`OneLineParser`, checks its flags and files with the
helpers here (each raises :class:`BadInput`, naming the flag or file, the field, the rule and
the value: ``--steps must be >= 1, but got 0``, ``OUT.json: `names` must be ..., but got 3``),
and answers a :class:`BadInput`, or a :class:`qa_ray.errors.ConfigError` from the package's own
loaders, with :func:`refuse`. ``benchmarks/replay.py`` and ``tune_rule.py`` say it the same way;
this module imports nothing heavy (no Ray, no torch), so a refusal comes at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments said in one line on stderr, exit 2 (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


class BadInput(ValueError):
    """A flag, file or field a benchmark script cannot use, said in one line."""


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a whole table is no use in an error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_flags(rows: Iterable[tuple[str, Any, bool, str]]) -> None:
    """``(flag, value, ok, rule)`` rows: every one not ``ok`` said, as replay.py says them."""
    bad = [f"{flag} must be {rule}, but got {value}" for flag, value, ok, rule in rows if not ok]
    if bad:
        raise BadInput("; ".join(bad))


def need(source: Any, field: str | None, value: Any, ok: bool, rule: str) -> None:
    """A field of a file that breaks its rule: ``source: `field` must be rule, but got value``
    (``field`` None: the file's top level)."""
    if not ok:
        where = "the top level" if field is None else f"`{field}`"
        raise BadInput(f"{source}: {where} must be {rule}, but got {shown(value)}")


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a missing, unreadable or malformed file is :class:`BadInput`."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise BadInput(f"{path}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else e.reason
        raise BadInput(f"{path}: not JSON ({msg}{where})") from None


def make_folder(flag: str, path: Path) -> None:
    """``mkdir -p`` for an output flag; a folder that cannot be made is :class:`BadInput`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(
            f"{flag}: cannot be made ({e.strerror or e}), but got {str(path)!r}"
        ) from None


def refuse(prog: str, error: Exception) -> int:
    """Says ``error`` in one line on stderr, prefixed with the script's name; returns 2."""
    from qa_ray.errors import ConfigError

    said = f"{error.source}: {'; '.join(error.errors)}" if isinstance(error, ConfigError) else error
    print(f"{prog}: {' '.join(str(said).split())}", file=sys.stderr)
    return 2
