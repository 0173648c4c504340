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


# ---- packing by predicted memory ---------------------------------------------------------------


def test_a_packed_worker_asks_for_its_request_and_that_share_of_the_largest_gpu():
    from qa_ray.sweep.resources import worker_resources

    assert worker_resources(2.0, 1.0, 6000.0, 46068.0) == {
        "CPU": 2.0,
        "GPU": 0.1303,  # 6000 / 46068 = 0.13024..., rounded up
        "gpu_memory_mb": 6000.0,
    }
    # more than the largest GPU: it asks for the whole one (runs alone, or runs out itself)
    assert worker_resources(2.0, 1.0, 60_000.0, 46068.0) == {
        "CPU": 2.0,
        "GPU": 1.0,
        "gpu_memory_mb": 46068.0,
    }
    # not packed, or no node offers memory: the fixed share
    assert worker_resources(2.0, 0.5, None, 46068.0) == {"CPU": 2.0, "GPU": 0.5}
    assert worker_resources(2.0, 1.0, 6000.0, None) == {"CPU": 2.0, "GPU": 1.0}


def test_the_device_size_is_the_largest_per_gpu_memory_of_the_alive_nodes():
    from qa_ray.sweep.resources import device_memory_mb

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "gpu_memory_mb": 23028.0}},
        {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0, "gpu_memory_mb": 92136.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0, "gpu_memory_mb": 81559.0}},
        {"Alive": True, "Resources": {"CPU": 4.0}},
    ]
    assert device_memory_mb(nodes) == 46068.0
    assert device_memory_mb(nodes[3:]) is None


def test_packing_is_refused_where_a_node_of_several_gpus_has_smaller_cards():
    """Shares were computed against the largest GPU: on a node of two 24 GB cards in a
    cluster with 48 GB cards, three 15 GB trials fitted "0.31 GPU" each on one card."""
    from qa_ray.sweep.resources import device_memory_mb

    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.5",
         "Resources": {"GPU": 2.0, "gpu_memory_mb": 2 * 23028.0}},
        {"Alive": True, "NodeManagerAddress": "10.0.0.6",
         "Resources": {"GPU": 1.0, "gpu_memory_mb": 46068.0}},
    ]  # fmt: skip
    with pytest.raises(ConfigError) as e:
        device_memory_mb(nodes)
    assert "10.0.0.5 (2 GPUs of 23028 MB)" in str(e.value)
    cfg = _cfg("resources.gpus_per_worker=1", "resources.pack_by_memory=true")
    cluster = {"CPU": 8.0, "GPU": 3.0, "gpu_memory_mb": 4 * 23028.0}
    with pytest.raises(ConfigError, match="GPUs differ"):
        plan(cfg, cluster, nodes=nodes)
    # one-GPU nodes of different sizes: each node's memory bounds its trials
    assert plan(cfg, cluster, nodes=nodes[1:])["per_trial"]["GPU"].startswith("by predicted")


def test_packing_needs_a_node_that_offers_gpu_memory():
    cfg = _cfg("resources.gpus_per_worker=1", "resources.pack_by_memory=true")
    with pytest.raises(ConfigError) as e:
        plan(cfg, {"CPU": 8.0, "GPU": 1.0})
    assert "no node offers a `gpu_memory_mb` resource" in str(e.value)
    p = plan(cfg, {"CPU": 8.0, "GPU": 1.0, "gpu_memory_mb": 23028.0})
    assert p["per_trial"]["GPU"] == "by predicted memory, at most 1.0"
    assert p["max_concurrent_trials"] == min(cfg.search.max_concurrent_trials or 8, 8)


def test_packing_without_gpus_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as e:
        _cfg("resources.pack_by_memory=true")
    assert "`pack_by_memory` packs trials on GPUs: set `gpus_per_worker`" in str(e.value)


def test_a_local_ray_offers_the_memory_nvidia_smi_reports(tmp_path, monkeypatch):
    from qa_ray.sweep.resources import detect_gpu_memory_mb

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\nprintf '0, GPU-aa, 81559\\n1, GPU-bb, 81559\\n2, GPU-cc, 23028\\n'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # cards of different sizes count as the smallest: a GPU share never overfills one
    assert detect_gpu_memory_mb() == 23028.0 * 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert detect_gpu_memory_mb() == 81559.0 * 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bb,GPU-aa")  # by UUID, as Ray may set it
    assert detect_gpu_memory_mb() == 81559.0 * 2
    monkeypatch.setenv("PATH", "/nonexistent")
    assert detect_gpu_memory_mb() is None


def test_packing_is_for_one_worker_trials_of_at_most_one_gpu():
    for bad in (["resources.num_workers=2"], ["resources.gpus_per_worker=2"]):
        with pytest.raises(ConfigError) as e:
            _cfg("resources.gpus_per_worker=1", "resources.pack_by_memory=true", *bad)
        assert "packs one-worker trials of at most one GPU each" in str(e.value)


def test_an_autoscaling_cluster_may_add_its_gpu_nodes_later():
    cfg = _cfg("resources.gpus_per_worker=1", "resources.pack_by_memory=true")
    assert plan(cfg, {"CPU": 0.0}, elastic=True)["per_trial"]["GPU"].startswith("by predicted")
