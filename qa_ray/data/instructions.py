"""Instructions (Alpaca format, for ``model.task: instruction``): a hub dataset id
(``tatsu-lab/alpaca``) or a local JSON list / JSON lines of ``{instruction, input, output}``
records (``input`` may be empty or absent), gzipped or not, as :class:`InstructionExample`.
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import TYPE_CHECKING

from qa_ray.data.examples import DataError, InstructionExample, load_hub, raise_if_any, read_json

if TYPE_CHECKING:
    from qa_ray.config.trial import DataConfig

__all__ = ["load_instruction_train_eval", "load_instructions"]

logger = logging.getLogger(__name__)


def _validate_instructions(records: list, source: str) -> list[InstructionExample]:
    examples, errors, empty = [], [], []
    for i, r in enumerate(records):
        where = r.pop("_where", f"record {i}") if isinstance(r, dict) else f"record {i}"
        if not isinstance(r, dict):
            errors.append(f"{where}: expected an object with `instruction` and `output`, got {r!r}")
            continue
        ok = True
        instruction, output, value = r.get("instruction"), r.get("output"), r.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip():
            errors.append(
                f"{where}: `instruction` must be a non-empty string, but got {instruction!r}"
            )
            ok = False
        if not isinstance(output, str):
            errors.append(f"{where}: `output` must be a string, but got {output!r}")
            ok = False
        if value is None:
            value = ""
        if not isinstance(value, str):
            errors.append(f"{where}: `input` must be a string (or absent), but got {value!r}")
            ok = False
        if ok and not output.strip():
            empty.append(where)  # nothing to learn or score (the Alpaca release has 28)
        elif ok:
            examples.append(
                InstructionExample(
                    id=str(r.get("id", i)), instruction=instruction, input=value, output=output
                )
            )
    raise_if_any(source, errors)
    if empty:
        logger.warning(
            "%s: %d record(s) with an empty `output` skipped (%s%s)",
            source,
            len(empty),
            ", ".join(empty[:5]),
            ", ..." if len(empty) > 5 else "",
        )
    if not examples:
        raise DataError(source, ["no instruction records with a non-empty `output` found"])
    return examples


def load_instructions(path: str, split: str | None = None) -> list[InstructionExample]:
    """Loads and validates Alpaca-format instructions from a local file or a hub dataset id.

    Args:
        path: a local ``.json``/``.json.gz``/``.jsonl`` file (a list of records, or
            ``{"data": [...]}``) or a hub dataset id such as ``tatsu-lab/alpaca``.
        split: the hub split (ignored for local files).

    Raises:
        DataError: naming the file, the record and the field of every problem found.
    """
    if os.path.exists(path):
        payload = read_json(path)
        if isinstance(payload, dict) and isinstance(payload.get("data"), list):
            payload = payload["data"]
        if not isinstance(payload, list):
            raise DataError(
                path,
                [
                    "expected a list of {instruction, input, output} records, but got a "
                    f"{type(payload).__name__}"
                    + (f" with keys {sorted(payload)[:5]}" if isinstance(payload, dict) else "")
                ],
            )
        return _validate_instructions(
            [dict(r) if isinstance(r, dict) else r for r in payload], path
        )
    if path.endswith((".json", ".gz", ".jsonl")) or path.startswith((".", "/", "~")):
        raise DataError(path, ["file not found"])
    return _validate_instructions(load_hub(path, split or "train"), f"{path}[{split}]")


def load_instruction_train_eval(
    cfg: DataConfig,
) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """Train and held-out instructions: two sources, or one split at random (``eval_fraction``
    of the records, shuffled with ``split_seed``; ``None`` holds out the last records)."""
    if cfg.eval_path:
        train = load_instructions(cfg.path, cfg.split or "train")
        held_out = load_instructions(cfg.eval_path, cfg.eval_split or "validation")
    else:
        records = load_instructions(cfg.path, cfg.split or "train")
        if len(records) < 2:
            raise DataError(
                "data.path", [f"a train/eval split needs at least 2 records, got {len(records)}"]
            )
        n_eval = min(len(records) - 1, max(1, math.ceil(len(records) * cfg.eval_fraction)))
        order = list(range(len(records)))
        if cfg.split_seed is not None:
            random.Random(cfg.split_seed).shuffle(order)
        held = set(order[-n_eval:])
        train = [r for i, r in enumerate(records) if i not in held]
        held_out = [r for i, r in enumerate(records) if i in held]
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    if cfg.max_eval_examples:
        held_out = held_out[: cfg.max_eval_examples]
    return train, held_out
