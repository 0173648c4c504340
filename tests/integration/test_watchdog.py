"""A placement group left behind by a trial that is gone is freed, and one in use is kept
(real local Ray, its State API)."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.integration


def _leak_one_cpu():
    """What a stopped trial's Ray Train controller leaves when it dies between stopping its
    cleaner and removing its workers' placement group: a group of this job, reserving a CPU,
    made by an actor that is gone."""
    import ray

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self):
            from ray.util.placement_group import placement_group

            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    c = Controller.remote()
    pg = ray.get(c.reserve.remote())
    ray.kill(c)
    return pg


def _wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return False


def test_a_group_left_by_a_dead_controller_is_freed_and_one_in_use_is_kept(ray_2cpu, capsys):
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from qa_ray.sweep.watchdog import LeakedPlacementGroups, idle_placement_groups

    leaked = _leak_one_cpu()
    assert _wait_for(lambda: leaked in idle_placement_groups())
    in_use = placement_group([{"CPU": 1}])
    ray.get(in_use.ready())

    @ray.remote(num_cpus=1)
    class Worker:
        def ping(self):
            return 1

    w = Worker.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=in_use)
    ).remote()
    assert ray.get(w.ping.remote()) == 1
    assert ray.available_resources().get("CPU", 0) == 0  # both CPUs reserved
    dog = LeakedPlacementGroups(grace_s=1.0, every_s=0.0)
    assert dog.look() == []  # seen idle once: not yet
    time.sleep(1.2)
    assert dog.look() == [leaked]
    assert _wait_for(lambda: ray.available_resources().get("CPU", 0) == 1)
    assert in_use.id.hex() not in dog.freed  # its worker lives: kept
    assert "freed placement group" in capsys.readouterr().out


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_an_early_stopped_sweep_whose_cpus_were_left_reserved_runs_to_its_end(
    tiny_model_dir, tmp_path, ray_2cpu, monkeypatch, capsys
):
    """Both CPUs reserved by groups trials left behind (as a stopped trial's controller
    leaves them under load): the sweep waited for ever with 0 of 2 CPUs used. The driver
    frees them, says so, and the MO-ASHA sweep runs every trial to its end."""
    import yaml

    from qa_ray.cli import main
    from qa_ray.sweep import watchdog
    from tests.helpers import tiny_sweep

    monkeypatch.setattr(watchdog, "GRACE_S", 2.0)
    monkeypatch.setattr(watchdog, "EVERY_S", 1.0)
    path, _ = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=4)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update({"max_steps": 8, "eval_steps": 2})
    cfg["search"]["scheduler"] = {"type": "mo_asha", "grace": 2, "reduction_factor": 2}
    path.write_text(yaml.safe_dump(cfg))
    leaked = [_leak_one_cpu(), _leak_one_cpu()]

    def waited_for_ever(*_):  # without the watchdog the sweep never ends
        raise TimeoutError("the sweep waited 10 min on CPUs reserved by trials that are gone")

    before = signal.signal(signal.SIGALRM, waited_for_ever)
    signal.alarm(600)
    try:
        assert main(["sweep", str(path)]) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    out = capsys.readouterr().out
    assert all(f"freed placement group {pg}" in out for pg in leaked), out[-3000:]
    assert "4/4 done" in out or "stopped early" in out
