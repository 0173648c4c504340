"""Early-stopping schedulers (Ray Tune ``TrialScheduler`` subclasses) for several objectives.

- :mod:`.mo_asha`: asynchronous successive halving ranking trials by Pareto rank;
- :mod:`.memory_aware`: stops a trial only behind one that uses no more memory.

A scheduler decides from the results Tune hands it and keeps what it decided in a JSON file
beside the sweep so a resumed sweep decides the same way.
"""
