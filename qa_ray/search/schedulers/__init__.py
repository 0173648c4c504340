"""Early-stopping schedulers (Ray Tune ``TrialScheduler`` subclasses) for several objectives.

- :mod:`.mo_asha`: asynchronous successive halving ranking trials by Pareto rank.

A scheduler decides from the results Tune hands it and keeps what it decided in a JSON file
beside the sweep so a resumed sweep decides the same way.
"""
