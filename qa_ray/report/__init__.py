"""The sweep's report: the Pareto summary, its tables and plots, published to MLflow.

- :mod:`.summary`: read trials back and summarize the front (pure, testable);
- :mod:`.tables`: the markdown and console tables of a summary;
- :mod:`.plots`: plotly / matplotlib figures (lazy, optional);
- :mod:`.publish`: artifacts and tags on the parent and child runs.

May import layers 0-5 (tracking, search, config, pareto, ...), never training or sweep.
"""
