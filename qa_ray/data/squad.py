"""SQuAD-format questions: three sources give the same list of :class:`QAExample`:

* a hub dataset id (``rajpurkar/squad``, ``rajpurkar/squad_v2``) through ``datasets.load_dataset``;
* a local file in the official format (``{"version", "data": [{"title", "paragraphs": ...}]}``),
  gzipped or not;
* a local file in the flat hub schema (``id, title, context, question, answers{text,
  answer_start}``), as a JSON list, ``{"data": [...]}``, or JSON lines.

Validation reports every problem at once, naming the file, the record and the field. Train and
evaluation examples come from one file split by article when no separate file is named.
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import TYPE_CHECKING, Any

from qa_ray.data.examples import DataError, QAExample, load_hub, raise_if_any, read_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from qa_ray.config.trial import DataConfig

__all__ = ["gold_questions", "load_examples", "load_train_eval", "split_by_article"]

logger = logging.getLogger(__name__)


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
    raise_if_any(source, errors)
    if not examples:
        raise DataError(source, ["no questions found"])
    return examples


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
    return _validate_records(load_hub(path, split or "train"), f"{path}[{split}]", [])


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


def gold_questions(examples: Sequence[QAExample]):
    """The examples as :class:`qa_ray.metrics.GoldQuestion` for scoring."""
    from qa_ray.scoring.squad import GoldQuestion

    return [GoldQuestion(e.id, e.answers) for e in examples]
