"""Training: the per-worker loop as a recipe over small parts, each testable alone.

- :mod:`.loop`: the recipe, ``setup()`` then ``train()``, evaluation and reports
  (``train_loop_per_worker`` is what every Ray Train worker runs);
- :mod:`.trial`: the parts of a running trial and its meters;
- :mod:`.session`: Ray Train or local: rank, device, collectives, reports, checkpoints in;
- :mod:`.precision`: autocast and the gradient scaler;
- :mod:`.schedule`: the learning-rate schedule and the time budget;
- :mod:`.checkpoint`: saving and restoring weights, optimizer and RNG state;
- :mod:`.memory`: peak-memory measurement and out-of-memory;
- :mod:`.distill`: the distillation teacher and loss.

May import layers 0-4 (models, tasks, config, ...), never search, tracking or sweep.
"""
