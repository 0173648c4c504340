"""Trial configuration: the pydantic blocks and how files become validated configs.

- :mod:`.trial`: the blocks (``model``, ``data``, ``train``, ``resources``) and
  :class:`~.trial.TrialConfig`, with the cross-field rules;
- :mod:`.files`: YAML files, ``dotted.key=value`` overrides, every error in one
  :class:`~qa_ray.errors.ConfigError`, differences between two configs;
- :mod:`.paths`: local data and model paths made absolute and checked, hub ids looked up.

A sweep file's extra blocks (``search``, ``objectives``, ...) are in :mod:`qa_ray.sweep.config`.
May import layers 0-2 (errors, metrics, pareto, scoring, data, tasks), never torch.
"""
