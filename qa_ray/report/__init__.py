"""The sweep's report: the Pareto summary, its tables and plots, published to MLflow.

- :mod:`.summary`: read trials back and summarize the front (pure, testable);
- :mod:`.tables`: the markdown and console tables of a summary;
- :mod:`.plots`: plotly / matplotlib figures (lazy, optional);
- :mod:`.publish`: artifacts and tags on the parent and child runs;
- :mod:`.curves`: a finished sweep's learning curves exported to one JSON table;
- :mod:`.replay`, :mod:`.replay_rules`: a table replayed through early-stopping rules (the
  real schedulers, simulated arrival and costs) and the literature's baselines;
- :mod:`.advise`: the ``search.scheduler`` block for the next sweep, by cross-validation.

May import layers 0-5 (tracking, search, config, pareto, ...), never training or sweep.
"""
