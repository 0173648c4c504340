"""The resource plan: how many trials run at once, locally and on an autoscaling cluster."""

from pathlib import Path

import pytest

from qa_ray.errors import ConfigError
from qa_ray.sweep.config import load_sweep_config
from qa_ray.sweep.resources import plan

QUICKSTART = str(Path(__file__).resolve().parents[3] / "sweeps" / "quickstart.yaml")


ASSETS = Path(__file__).resolve().parents[2] / "assets"
# The quickstart's plan, with tiny local files standing in for its staged model and data.
LOCAL = [f"model.name_or_path={ASSETS / 'wordpiece'}", f"data.path={ASSETS / 'squad_v1_tiny.json'}"]


def _cfg(*overrides: str):
    return load_sweep_config(QUICKSTART, [*LOCAL, *overrides])


def test_local_concurrency_is_what_fits_capped_by_the_setting():
    assert (
        plan(_cfg("search.max_concurrent_trials=null"), {"CPU": 7.0})["max_concurrent_trials"] == 3
    )
    assert plan(_cfg("search.max_concurrent_trials=2"), {"CPU": 8.0})["max_concurrent_trials"] == 2
    assert plan(_cfg("search.max_concurrent_trials=5"), {"CPU": 4.0})["max_concurrent_trials"] == 2


def test_fractional_gpus_pack_several_trials_on_one_gpu():
    cfg = _cfg(
        "search.max_concurrent_trials=null",
        "resources.cpus_per_worker=1",
        "resources.gpus_per_worker=0.5",
    )
    p = plan(cfg, {"CPU": 16.0, "GPU": 1.0})
    assert p["per_trial"] == {"CPU": 1.0, "GPU": 0.5}
    assert p["max_concurrent_trials"] == 2


def test_a_trial_that_cannot_fit_locally_is_a_config_error():
    cfg = _cfg("resources.gpus_per_worker=1")
    with pytest.raises(ConfigError, match="resources"):
        plan(cfg, {"CPU": 2.0})


def test_an_autoscaling_cluster_is_not_judged_by_the_nodes_up_now():
    # A head without CPUs or GPUs: the autoscaler adds the nodes the trials wait for.
    cfg = _cfg("resources.gpus_per_worker=1", "search.max_concurrent_trials=4")
    p = plan(cfg, {}, elastic=True)
    assert p["max_concurrent_trials"] == 4
    # Unset: what fits now, at least one.
    assert (
        plan(_cfg("search.max_concurrent_trials=null"), {}, elastic=True)["max_concurrent_trials"]
        == 1
    )
