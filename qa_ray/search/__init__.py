"""Search: what a sweep samples and how it decides what to run and stop.

- :mod:`.space`: search-space files, validated, and the Optuna distributions they become;
- :mod:`.searcher`: Ray's ``OptunaSearch`` told budgets and out-of-memory as constraints;
- :mod:`.schedulers`: early stopping across several objectives.

Torch-free. May import layers 0-3 (config, pareto, metrics, ...).
"""
