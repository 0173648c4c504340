"""Task data: load (hub id or local file), validate, split, cache tokenized features.

SQuAD-format questions: three sources give the same list of :class:`QAExample`:

* a hub dataset id (``rajpurkar/squad``, ``rajpurkar/squad_v2``) through ``datasets.load_dataset``;
* a local file in the official format (``{"version", "data": [{"title", "paragraphs": ...}]}``),
  gzipped or not;
* a local file in the flat hub schema (``id, title, context, question, answers{text,
  answer_start}``), as a JSON list, ``{"data": [...]}``, or JSON lines.

Instructions (Alpaca format, for ``model.task: instruction``): a hub dataset id
(``tatsu-lab/alpaca``) or a local JSON list / JSON lines of ``{instruction, input, output}``
records (``input`` may be empty or absent), gzipped or not, as :class:`InstructionExample`.

Validation reports every problem at once, naming the file, the record and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qa_ray.config import ConfigError, DataConfig

__all__ = [
    "DataError",
    "InstructionExample",
    "QAExample",
    "cached_features",
    "gold_questions",
    "load_examples",
    "load_instruction_train_eval",
    "load_instructions",
    "load_train_eval",
    "read_json",
    "split_by_article",
]

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


def _from_official(payload: dict[str, Any]) -> tuple[list[dict], list[str]]:
    records, errors = [], []
    articles = payload.get("data")
    if not isinstance(articles, list):
        return [], [f"`data`: expected a list of articles, but got {type(articles).__name__}"]
    for a_i, article in enumerate(articles):
        where_a = f"data[{a_i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            errors.append(f"{where_a}: expected an object with `title` and a `paragraphs` list")
            continue
        title = article.get("title", "")
        for p_i, para in enumerate(article["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{p_i}]"
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                errors.append(f"{where_p}: expected an object with `context` and a `qas` list")
                continue
            for q_i, qa in enumerate(para["qas"]):
                where = f"{where_p}.qas[{q_i}]"
                if not isinstance(qa, dict):
                    errors.append(f"{where}: expected an object, but got {qa!r}")
                    continue
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    errors.append(f"{where}.answers: expected a list of objects, got {answers!r}")
                    answers = []
                if qa.get("is_impossible") and answers:
                    errors.append(
                        f"{where} (id {qa.get('id')!r}): `is_impossible` is true but "
                        f"`answers` has {len(answers)} entries"
                    )
                records.append(
                    {
                        "_where": where,
                        "id": qa.get("id"),
                        "title": title,
                        "context": para.get("context"),
                        "question": qa.get("question"),
                        "answers": {
                            "text": [x.get("text") for x in answers],
                            "answer_start": [x.get("answer_start") for x in answers],
                        },
                    }
                )
    return records, errors


def _raise_if_any(source: str, errors: list[str]) -> None:
    """Raises every error found (the first 25, and how many more) as one :class:`DataError`."""
    if errors:
        shown = errors[:_MAX_LISTED_ERRORS]
        if len(errors) > len(shown):
            shown.append(f"... and {len(errors) - len(shown)} more")
        raise DataError(source, shown)


def _validate_records(records: list[dict], source: str, errors: list[str]) -> list[QAExample]:
    examples: list[QAExample] = []
    seen: dict[str, str] = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            errors.append(f"record {i}: expected an object, but got {r!r}")
            continue
        where = r.pop("_where", f"record {i}")
        qid = r.get("id")
        label = f"{where} (id {qid!r})"
        ok = True
        for field in ("id", "context", "question"):
            value = r.get(field)
            if not isinstance(value, str) or not value.strip():
                errors.append(f"{label}: `{field}` must be a non-empty string, but got {value!r}")
                ok = False
        if isinstance(qid, str) and qid:
            if qid in seen:
                errors.append(f"{label}: duplicate `id` (first seen at {seen[qid]})")
                ok = False
            seen.setdefault(qid, where)
        answers = r.get("answers")
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
            errors.append(
                f"{label}: `answers` must be {{text: [...], answer_start: [...]}}, "
                f"but got {answers!r}"
            )
            continue
        texts, starts = answers["text"], answers.get("answer_start")
        if not isinstance(starts, list) or len(starts) != len(texts):
            errors.append(
                f"{label}: `answers.answer_start` must be a list as long as `answers.text`, "
                f"but got {starts!r}"
            )
            continue
        context = r.get("context") if isinstance(r.get("context"), str) else ""
        for j, (text, start) in enumerate(zip(texts, starts, strict=True)):
            if not isinstance(text, str) or not text:
                errors.append(
                    f"{label}: `answers.text[{j}]` must be a non-empty string, got {text!r}"
                )
                ok = False
            elif not isinstance(start, int) or isinstance(start, bool) or start < 0:
                errors.append(
                    f"{label}: `answers.answer_start[{j}]` must be an integer >= 0, got {start!r}"
                )
                ok = False
            elif context[start : start + len(text)] != text:
                errors.append(
                    f"{label}: `answers.answer_start[{j}]` = {start} does not point at the answer "
                    f"{text!r}: the context has {context[start : start + len(text)]!r} there"
                )
                ok = False
        if ok:
            examples.append(
                QAExample(
                    id=qid,
                    title=str(r.get("title") or ""),
                    context=r["context"],
                    question=r["question"],
                    answers=tuple(texts),
                    answer_starts=tuple(starts),
                )
            )
    _raise_if_any(source, errors)
    if not examples:
        raise DataError(source, ["no questions found"])
    return examples


def _load_hub(dataset_id: str, split: str) -> list[dict]:
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


def load_examples(path: str, split: str | None = None) -> list[QAExample]:
    """Loads and validates SQuAD-format questions from a local file or a hub dataset id.

    Args:
        path: a local ``.json``/``.json.gz``/``.jsonl`` file or a hub dataset id.
        split: the hub split (ignored for local files).

    Raises:
        DataError: naming the file, the record and the field of every problem found.
    """
    if os.path.exists(path):
        payload = read_json(path)
        if isinstance(payload, dict) and "data" in payload and _is_official(payload["data"]):
            records, errors = _from_official(payload)
        elif isinstance(payload, dict) and isinstance(payload.get("data"), list):
            records, errors = list(payload["data"]), []
        elif isinstance(payload, list):
            records, errors = payload, []
        else:
            raise DataError(
                path,
                [
                    "expected the official SQuAD format ({version, data: [{title, paragraphs}]}) "
                    "or a list of {id, title, context, question, answers} records, but got "
                    f"a {type(payload).__name__} with keys {sorted(payload)[:5] if isinstance(payload, dict) else '-'}"
                ],
            )
        return _validate_records(
            [dict(r) if isinstance(r, dict) else r for r in records], path, errors
        )
    if path.endswith((".json", ".gz", ".jsonl")) or path.startswith((".", "/", "~")):
        raise DataError(path, ["file not found"])
    return _validate_records(_load_hub(path, split or "train"), f"{path}[{split}]", [])


def _is_official(data: Any) -> bool:
    return (
        isinstance(data, list)
        and bool(data)
        and isinstance(data[0], dict)
        and "paragraphs" in data[0]
    )


def split_by_article(
    examples: Sequence[QAExample], eval_fraction: float, seed: int | None
) -> tuple[list[QAExample], list[QAExample]]:
    """Splits questions into train/eval by article title, so no context leaks across.

    Args:
        examples: questions in file order.
        eval_fraction: share of articles held out (at least one each side).
        seed: shuffle seed; ``None`` holds out the last articles in file order.
    """
    titles = list(dict.fromkeys(e.title for e in examples))
    if len(titles) < 2:
        raise DataError(
            "data.path",
            [f"splitting by article needs at least 2 article titles, but got {len(titles)}"],
        )
    n_eval = min(len(titles) - 1, max(1, math.ceil(len(titles) * eval_fraction)))
    if seed is None:
        eval_titles = set(titles[-n_eval:])
    else:
        shuffled = sorted(titles)
        random.Random(seed).shuffle(shuffled)
        eval_titles = set(shuffled[:n_eval])
    train = [e for e in examples if e.title not in eval_titles]
    held_out = [e for e in examples if e.title in eval_titles]
    return train, held_out


def load_train_eval(cfg: DataConfig) -> tuple[list[QAExample], list[QAExample]]:
    """Loads train and eval questions as ``cfg`` says: two sources, or one split by article."""
    if cfg.eval_path:
        train = load_examples(cfg.path, cfg.split or "train")
        held_out = load_examples(cfg.eval_path, cfg.eval_split or "validation")
    else:
        train, held_out = split_by_article(
            load_examples(cfg.path, cfg.split or "train"), cfg.eval_fraction, cfg.split_seed
        )
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    if cfg.max_eval_examples:
        held_out = held_out[: cfg.max_eval_examples]
    return train, held_out


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
    _raise_if_any(source, errors)
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
    return _validate_instructions(_load_hub(path, split or "train"), f"{path}[{split}]")


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


def gold_questions(examples: Sequence[QAExample]):
    """The examples as :class:`qa_ray.metrics.GoldQuestion` for scoring."""
    from qa_ray.metrics import GoldQuestion

    return [GoldQuestion(e.id, e.answers) for e in examples]


def _fingerprint(examples: Sequence[Any]) -> str:
    # The fields' values as `astuple` lists them, without its deep copy (a third of the time).
    h = hashlib.sha256()
    names = [f.name for f in fields(examples[0])] if examples else []
    for e in examples:
        h.update(json.dumps([getattr(e, n) for n in names]).encode())
    return h.hexdigest()


_TOKENIZER_PROPERTIES = (
    "padding_side",
    "truncation_side",
    "pad_token",
    "pad_token_id",
    "eos_token",
    "eos_token_id",
    "bos_token",
    "bos_token_id",
    "cls_token_id",
    "sep_token_id",
    "unk_token_id",
    "add_bos_token",
    "add_eos_token",
    "model_max_length",
)


def tokenizer_fingerprint(tokenizer) -> str:
    """A content hash of a fast tokenizer: its backend (vocab, normalizer, pre-tokenizer,
    post-processor) and every Python-side property that changes the features it makes (special
    tokens and their ids, padding and truncation sides, BOS/EOS flags)."""
    # Calling a tokenizer sets truncation/padding on its backend: not part of its identity.
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    props = {k: getattr(tokenizer, k, None) for k in _TOKENIZER_PROPERTIES}
    payload = {"backend": spec, "properties": {k: repr(v) for k, v in props.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _column_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def default_cache_dir() -> str:
    return os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "qa_ray", "features"
    )


def cached_features(
    examples: Sequence[QAExample] | Sequence[InstructionExample],
    tokenizer,
    build: Callable[[dict[str, list]], dict[str, list]],
    key: dict[str, Any],
    cache_dir: str | None,
):
    """Tokenizes ``examples`` with ``build`` (a batched ``datasets.map`` function), cached on disk.

    ``build`` gets the examples' fields as columns (``question``, ``context``, ... or
    ``instruction``, ``input``, ``output``).

    The cache key covers the data content, the tokenizer and ``key`` (task and lengths), so a
    second trial with the same data settings loads features instead of tokenizing again.

    Returns:
        A ``datasets.Dataset`` of features.
    """
    import datasets

    digest = hashlib.sha256(
        json.dumps(
            {"data": _fingerprint(examples), "tok": tokenizer_fingerprint(tokenizer), **key},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    root = Path(cache_dir or default_cache_dir())
    target = root / digest
    if (target / "dataset_info.json").is_file():
        logger.info("features: cache hit %s", target)
        return datasets.load_from_disk(str(target))
    columns = {
        f.name: [_column_value(getattr(e, f.name)) for e in examples] for f in fields(examples[0])
    }
    raw = datasets.Dataset.from_dict(columns)
    # The digest is the fingerprint: without one, datasets hashes `build` with dill, whose
    # global-name scan prints the closure's bytecode disassembly into a Ray worker's log.
    features = raw.map(
        build,
        batched=True,
        remove_columns=raw.column_names,
        desc=f"tokenize {key.get('kind')}",
        new_fingerprint=digest,
    )
    if len(features) == 0:  # nothing to cache (datasets cannot load an empty saved table)
        return features
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        features.save_to_disk(str(tmp))
        os.replace(tmp, target)  # atomic: concurrent trials never read a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another trial won the race; use its copy
    logger.info("features: cached %d features at %s", len(features), target)
    return datasets.load_from_disk(str(target))
