"""The feature cache: tokenized features saved as ``datasets`` folders, keyed by what built them.

The key hashes the examples, the tokenizer's behaviour and the family's settings, so a trial
that shares all three with an earlier one loads its features instead of tokenizing again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from qa_ray.data.examples import InstructionExample, QAExample

__all__ = ["cached_features"]

logger = logging.getLogger(__name__)


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


def feature_code_version(build: Callable) -> str:
    """A hash of the source of the module that defines ``build`` (a task family's feature
    builder, with the helpers it calls beside it).

    A hash, not a version constant bumped by hand: labelling code changes in every family
    module, and a forgotten bump silently trains on features the old code made, while an edit
    that changes nothing (a comment) costs one tokenization. Without a readable source file
    (built interactively), the function's own bytecode and constants stand in.
    """
    module = sys.modules.get(getattr(build, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if path:
        try:
            st = os.stat(path)
            return _file_hash(path, st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    code = getattr(build, "__code__", None)
    blob = repr((code.co_code, code.co_consts)) if code else repr(build)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, mtime_ns: int, size: int) -> str:  # cached per version of the file
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


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

    The cache key covers the data content, the tokenizer, ``key`` (task and lengths) and the
    code that builds the features (:func:`feature_code_version`), so a second trial with the
    same data settings loads features instead of tokenizing again, and a change to how they
    are built (labels, windows, special tokens) never loads features the old code made.

    Returns:
        A ``datasets.Dataset`` of features.
    """
    import datasets

    digest = hashlib.sha256(
        json.dumps(
            {
                "data": _fingerprint(examples),
                "tok": tokenizer_fingerprint(tokenizer),
                "code": feature_code_version(build),
                **key,
            },
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
