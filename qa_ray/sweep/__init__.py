"""The sweep: a validated sweep file translated into Ray Tune, Optuna and MLflow objects, and run.

- :mod:`.config`: the sweep file (search, objectives, budgets, storage, tracking);
- :mod:`.run`: :func:`~.run.run_sweep`, the driver from start to report;
- :mod:`.trial`: the Tune trial function, one Ray Train run per trial;
- :mod:`.tuner`: the Optuna sampler, searcher, scheduler and ``TuneConfig`` from the config;
- :mod:`.state`: where a sweep keeps its state, resume stages and the settings a resume checks;
- :mod:`.bucket`: that state mirrored to a bucket ``storage_path``, and the driver lock there;
- :mod:`.shipped`: the sweeps and search spaces installed with the package;
- :mod:`.resources`: the resource plan and Ray start-up;
- :mod:`.console`: the progress lines and signal handling;
- :mod:`.jobs`: submitting a sweep to a cluster as a Ray job;
- :mod:`.memory_plan`: ``qa-ray plan``, the space's predicted peak memory against device sizes.

The top layer below the CLI: may import every other package. The driver never imports torch.
"""
