"""The feature cache key: tokenizer properties, data fingerprints, no hashing of functions."""

import json

from qa_ray.data.squad import load_examples
from tests.helpers import ASSETS


def test_feature_cache_key_covers_tokenizer_properties_that_change_features():
    """Two tokenizers that differ only in their EOS/BOS ids or truncation side make different
    features, so they must not share a cache entry."""
    from transformers import AutoTokenizer

    from qa_ray.data.features import tokenizer_fingerprint

    base = AutoTokenizer.from_pretrained(ASSETS / "bpe")
    seen = {tokenizer_fingerprint(base)}
    for change in (
        {"eos_token": "<pad>"},
        {"bos_token": "</s>"},
        {"truncation_side": "left"},
        {"padding_side": "left" if base.padding_side == "right" else "right"},
    ):
        tok = AutoTokenizer.from_pretrained(ASSETS / "bpe")
        for k, v in change.items():
            setattr(tok, k, v)
        fp = tokenizer_fingerprint(tok)
        assert fp not in seen, change
        seen.add(fp)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(ASSETS / "bpe")) in seen


def test_data_fingerprint_is_the_field_values_so_existing_caches_still_hit():
    """The examples' cache key hashes each example's field values in order (what
    ``dataclasses.astuple`` gives, without its deep copy): caches written before still hit,
    and any field change misses."""
    import dataclasses
    import hashlib

    from qa_ray.data.features import _fingerprint

    examples = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    before = hashlib.sha256()
    for e in examples:
        before.update(json.dumps(dataclasses.astuple(e)).encode())
    assert _fingerprint(examples) == before.hexdigest()
    changed = [dataclasses.replace(examples[0], answer_starts=(0,)), *examples[1:]]
    assert _fingerprint(changed) != _fingerprint(examples)
    assert _fingerprint([]) == hashlib.sha256().hexdigest()


def test_tokenizing_never_hashes_the_build_function(tmp_path, monkeypatch):
    """datasets hashes a map function with dill unless given a fingerprint, and dill's scan of
    its globals disassembles its bytecode (about 900 lines in a Ray worker's log)."""
    from datasets import fingerprint
    from transformers import AutoTokenizer

    from qa_ray.config.trial import DataConfig
    from qa_ray.data.squad import load_examples
    from qa_ray.tasks import extractive

    real, hashed = fingerprint.Hasher.hash, []

    def hash_no_functions(cls, value):  # (datasets swallows any error raised in here)
        if callable(value):
            hashed.append(value)
        return real(value)

    monkeypatch.setattr(fingerprint.Hasher, "hash", classmethod(hash_no_functions))
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))
    cfg = DataConfig(path="x", max_seq_length=128, doc_stride=32, cache_dir=str(tmp_path))
    assert len(extractive.train_features(ex, tok, cfg)) > 0
    assert len(extractive.eval_features(ex, tok, cfg)) > 0
    assert hashed == []


def test_feature_cache_key_has_the_feature_building_codes_version(tmp_path, monkeypatch):
    """Features cached by one version of a family's builder are not loaded by another: the
    key hashes the builder's module source. The same source hits the cache again."""
    import importlib
    import sys

    from transformers import AutoTokenizer

    from qa_ray.data.features import cached_features, feature_code_version

    source = tmp_path / "fake_family.py"
    template = "def build(batch):\n    return {{'label': [{label} for _ in batch['id']]}}\n"
    monkeypatch.syspath_prepend(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(ASSETS / "wordpiece")
    ex = load_examples(str(ASSETS / "squad_v1_tiny.json"))[:3]
    labels, versions = [], []
    for label in (1, 2, 2):
        source.write_text(template.format(label=label))
        sys.modules.pop("fake_family", None)
        importlib.invalidate_caches()
        family = importlib.import_module("fake_family")
        versions.append(feature_code_version(family.build))
        feats = cached_features(ex, tok, family.build, {"kind": "k"}, str(tmp_path / "cache"))
        labels.append(set(feats["label"]))
    assert labels == [{1}, {2}, {2}]
    assert versions[0] != versions[1] == versions[2]
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2
    sys.modules.pop("fake_family", None)
