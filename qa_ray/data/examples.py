"""The records every loader returns (:class:`QAExample`, :class:`InstructionExample`) and the
readers they share: JSON (gzipped or not), hub datasets, and one :class:`DataError` with every
problem found.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    import os

__all__ = ["DataError", "InstructionExample", "QAExample", "read_json"]

logger = logging.getLogger(__name__)

_MAX_LISTED_ERRORS = 25


class DataError(ConfigError):
    """A data or predictions file that cannot be used; the CLI exits with code 2."""


@dataclass(frozen=True)
class QAExample:
    """One question. ``answers`` is empty for an unanswerable (SQuAD 2.0) question."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-following record (Alpaca): ``input`` is ``""`` when there is none."""

    id: str
    instruction: str
    input: str
    output: str


def read_json(path: str | os.PathLike) -> Any:
    """Reads ``.json``/``.json.gz`` (or JSON lines), raising :class:`DataError` when unreadable."""
    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), ["file not found"])
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        # EOFError: a truncated .gz (an interrupted download or copy)
        raise DataError(str(p), [f"cannot read the file: {exc or type(exc).__name__}"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1:  # JSON lines
            records = []
            for i, ln in enumerate(lines):
                try:
                    records.append(json.loads(ln))
                except json.JSONDecodeError as line_exc:
                    raise DataError(str(p), [f"line {i + 1}: not JSON ({line_exc.msg})"]) from None
            return records
        raise DataError(str(p), [f"not JSON: {exc.msg} at line {exc.lineno}"]) from None


def raise_if_any(source: str, errors: list[str]) -> None:
    """Raises every error found (the first 25, and how many more) as one :class:`DataError`."""
    if errors:
        shown = errors[:_MAX_LISTED_ERRORS]
        if len(errors) > len(shown):
            shown.append(f"... and {len(errors) - len(shown)} more")
        raise DataError(source, shown)


def load_hub(dataset_id: str, split: str) -> list[dict]:
    import datasets  # heavy import, only needed for hub ids

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, unknown split: all user-facing
        raise DataError(
            dataset_id,
            [
                f"`data.path` is neither a local file nor a loadable hub dataset "
                f"(split {split!r}): {type(exc).__name__}: {exc}"
            ],
        ) from None
    return [dict(r, _where=f"{split}[{i}]") for i, r in enumerate(ds)]
