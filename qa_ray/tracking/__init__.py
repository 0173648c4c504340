"""Tracking in MLflow: the store, the sweep's parent run and its nested trial runs.

- :mod:`.runs`: URIs and credentials, experiments, parent and child runs, look-ups (a sweep's
  trials, a teacher's checkpoint), tags and params;
- :mod:`.callback`: the Tune callback that mirrors every trial into its child run.

Torch-free. May import layers 0-4 (search for axis values, config, metrics, ...).
"""
