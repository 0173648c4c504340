"""Search: what a sweep samples and how it decides what to run and stop.

- :mod:`.space`: search-space files, validated, and the Optuna distributions they become;
- :mod:`.checks`: what a sweep could sample (axis ends and choices, initial points) checked
  as whole trial configs before Ray starts;
- :mod:`.searcher`: Ray's ``OptunaSearch`` told budgets and out-of-memory as constraints;
- :mod:`.schedulers`: early stopping across several objectives;
- :mod:`.memory`: a configuration's peak memory predicted before it runs (an analytic prior
  from the model's config.json, calibrated by the sweep's measurements).
- :mod:`.shapes`: what the memory account counts of each family (layers, projections,
  embeddings), read from a model's config.json;
- :mod:`.model_config`: a model's config.json from a local folder or a hub id (the Hugging
  Face cache first; no weights).

Torch-free. May import layers 0-3 (config, pareto, metrics, ...).
"""
