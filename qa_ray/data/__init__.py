"""Task data: load (hub id or local file), validate, split, and cache tokenized features.

- :mod:`.examples`: the example records and the shared readers;
- :mod:`.squad`: SQuAD-format questions (official or flat hub schema), split by article;
- :mod:`.instructions`: Alpaca-format instructions;
- :mod:`.features`: the on-disk cache of tokenized features, keyed by data and tokenizer.

Torch-free (the driver validates local data with these loaders). May import layer 0 only;
config blocks appear as type hints.
"""
