"""The Tune objects a sweep config becomes: trial actors reused only without a scheduler."""

from qa_ray.sweep.resources import plan
from tests.unit.sweep.test_resources import _cfg


def test_trial_actors_are_reused_only_when_no_scheduler_stops_trials():
    """A trial stopped early is still inside TorchTrainer.fit(): only killing its actor ends
    that run, so with a scheduler each trial gets a fresh actor."""
    from qa_ray.search.schedulers.mo_asha import MOASHA
    from qa_ray.sweep.tuner import tune_config

    p = plan(_cfg(), {"CPU": 2.0})
    assert tune_config(None, None, 3, p).reuse_actors is True
    scheduler = MOASHA([("eval_f1", "max"), ("peak_memory_mb", "min")], grace=2)
    assert tune_config(None, scheduler, 3, p).reuse_actors is False
