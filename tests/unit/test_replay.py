"""benchmarks/replay.py on the tiny synthetic table: the real MO-ASHA through Tune's calls,
decisions and ratios on seeded draws (stored values, not timings)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = str(ROOT / "tests" / "assets" / "curves_tiny.json")
RUNGS = [10, 30, 90, 270]


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("replay", ROOT / "benchmarks" / "replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["replay"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["replay"]


def test_the_tiny_table_is_what_its_generator_makes():
    import json

    sys.path.insert(0, str(ROOT / "benchmarks" / "curves"))
    try:
        from synthetic import table
    finally:
        sys.path.pop(0)
    assert json.loads(Path(TABLE).read_text()) == json.loads(json.dumps(table(8, 0)))


def test_mo_asha_on_one_seeded_order_with_one_and_four_workers(replay):
    t = replay.load_table(TABLE)
    assert len(t.trials) == 8 and t.reference == (0.0, 22000.0)
    order = random.Random(0).sample(range(8), 8)
    assert order == [6, 7, 3, 0, 2, 5, 1, 4]
    everything = replay.simulate(t, order, replay.FIFOScheduler(), 1)
    assert everything.steps == 2400 and everything.seconds == pytest.approx(1852.5)

    def moasha():
        return replay.MOASHA(t.objectives, grace=10, constraints=t.constraints)

    one = replay.simulate(t, order, moasha(), 1, rungs=RUNGS)
    assert (one.finished, one.stopped) == ([6, 3, 4], [7, 0, 2, 5, 1])
    assert one.steps == 990 and one.steps_by_rung == [80, 100, 180, 540, 90]
    assert one.hypervolume == pytest.approx(everything.hypervolume)  # the front was kept
    four = replay.simulate(t, order, moasha(), 4, rungs=RUNGS)  # others arrive in between
    assert (four.finished, four.stopped) == ([3], [0, 6, 7, 2, 5, 1, 4])
    assert four.steps == 690 and four.hypervolume / everything.hypervolume == pytest.approx(
        0.6706, abs=1e-4
    )


def test_the_replay_summaries_are_deterministic(replay):
    t = replay.load_table(TABLE)
    res = replay.replay(t, replay.default_rules(), 6, 2, draws=20, seed=0, rungs=RUNGS)
    got = {k: (round(v["steps"], 4), round(v["hv_mean"], 4), v["hv_at_95"]) for k, v in res.items()}
    assert got == {
        "run everything": (1.0, 1.0, 1.0),
        "random 40 %": (0.3333, 0.8655, 0.35),
        "top third after 10": (0.6053, 0.9966, 1.0),
        "mo_asha grace 10": (0.4428, 0.9214, 0.8),
        "mo_asha grace 30": (0.5167, 0.9463, 0.85),
    }
    lo, hi = res["mo_asha grace 10"]["hv_iqm_ci"]
    assert lo <= res["mo_asha grace 10"]["hv_iqm"] <= hi
    assert sum(res["mo_asha grace 10"]["steps_by_rung"]) == pytest.approx(1.0)


def test_iqm_and_the_bootstrap_interval(replay):
    assert replay.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == 3.5  # the middle half: 2, 3, 4, 5
    lo, hi = replay.bootstrap_interval([1.0] * 10)
    assert lo == hi == 1.0


def test_the_noise_floor_compares_the_same_configurations_across_seeds(replay, tmp_path):
    """A rerun table of three of the tiny table's configurations (another seed: 2 F1 points
    higher at every step for one, the same for the others) gives gaps 0 / 2 by step and a
    hypervolume ratio on each side of 1."""
    import json

    raw = json.loads(Path(TABLE).read_text())
    rerun = dict(raw, trials=[])
    for k, t in enumerate(raw["trials"][:3]):
        bump = 2.0 if k == 0 else 0.0
        rows = [{**r, "eval_f1": r["eval_f1"] + bump} for r in t["rows"]]
        rerun["trials"].append(dict(t, rows=rows, config={**t["config"], "seed": 7}))
    path = tmp_path / "rerun.json"
    path.write_text(json.dumps(rerun))
    n = replay.noise_floor(replay.load_table(TABLE), replay.load_table(str(path)))
    assert n["configurations"] == 3 and n["metric"] == "eval_f1"
    assert all(gap == pytest.approx((0.0, 2.0)) for gap in n["gap_by_step"].values())
    lo, hi = sorted(n["hv_ratio"])
    assert lo <= 1.0 <= hi and lo == pytest.approx(1 / hi)
    assert "noise floor (3 configurations" in replay.format_noise(n)


def test_a_live_sweep_is_checked_against_the_replay_of_its_own_configurations(replay, tmp_path):
    """A live table whose trials stopped where the replayed rule stops them gives the
    replayed ratios exactly; a trial the table does not hold is refused by name."""
    import json

    raw = json.loads(Path(TABLE).read_text())
    t = replay.load_table(TABLE)
    block = {"type": "memory_aware", "grace": 10, "reduction_factor": 3, "noise_floor": 1.0}
    order = [6, 7, 3, 0, 2, 5, 1, 4]
    sched = replay.scheduler_from_block(block, t)
    stopped_at = {}
    original = sched.on_trial_complete

    def complete(controller, trial, result):  # the step each trial ended at
        stopped_at[int(trial.trial_id[1:])] = result["step"]
        return original(controller, trial, result)

    sched.on_trial_complete = complete
    again = replay.simulate(t, order, sched, 2)
    assert again.stopped  # the rule stops some of them, or the check says nothing
    live = dict(raw, scheduler=block, trials=[])
    for i in order:
        tr = raw["trials"][i]
        rows = [r for r in tr["rows"] if r["step"] <= stopped_at[i]]
        live["trials"].append(
            dict(tr, rows=rows, outcome="pruned" if i in again.stopped else "complete")
        )
    path = tmp_path / "live.json"
    path.write_text(json.dumps(live))
    r = replay.live_check(t, str(path), workers=2, draws=20)
    assert r["trials"] == 8 and r["stopped"] == len(again.stopped)
    assert r["hv"] == pytest.approx(r["replayed"]["hv"]) and r["steps"] == r["replayed"]["steps"]
    assert r["hv_table_values"] == pytest.approx(r["hv"])  # the same values on both sides
    assert r["measured_apart"]["peak_memory_mb"] == (0.0, 0.0)
    lo, hi = r["draws"]["hv_range"]
    assert lo <= r["draws"]["hv_iqm"] <= hi
    assert "live sweep:" in replay.format_live(r, 2)

    live["trials"][0] = dict(live["trials"][0], config={"learning_rate": 1.0}, name="odd")
    path.write_text(json.dumps(live))
    with pytest.raises(ValueError, match=r"1 live trial\(s\) have no configuration.*odd"):
        replay.live_check(t, str(path), workers=2, draws=20)
    path.write_text(json.dumps(dict(live, scheduler=None)))
    with pytest.raises(ValueError, match="ran without a scheduler"):
        replay.live_check(t, str(path), workers=2, draws=20)
    assert replay.main([TABLE, "--live", str(path), "--draws", "5"]) == 2  # said, exit 2


def test_tune_rule_picks_the_cheapest_setting_that_keeps_the_front(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("tune_rule", ROOT / "benchmarks" / "tune_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [TABLE, "--draws", "10", "--sizes", "6", "--graces", "10", "--rfs", "3"]
    assert module.main([*argv, "--noise-floors", "1", "50", "--memory-slacks", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 settings x 2 cells" in out
    assert "chosen: g10 rf3 nf1 slack0" in out  # nf 50 stops nothing: it costs more
    assert "--graces 10 30 --rf 3 --noise-floor 1 --memory-slack 0" in out
    assert module.main([*argv, "--noise-floors", "1", "--keep", "1.01"]) == 0
    assert "no setting keeps 1.01" in capsys.readouterr().out


def test_the_signal_by_step_is_the_rank_correlation_with_the_end(replay):
    import math

    from qa_ray.search.schedulers.memory_aware import rank_correlation

    assert rank_correlation([(1, 10), (2, 20), (3, 30)]) == pytest.approx(1.0)
    assert rank_correlation([(1, 30), (2, 20), (3, 10)]) == pytest.approx(-1.0)
    assert rank_correlation([(5, 1), (1, 2), (5, 3)]) == pytest.approx(0.0)  # ties: mean rank
    assert math.isnan(rank_correlation([(1, 1), (1, 2), (1, 3)]))  # a constant side
    signal = replay.signal_by_step(replay.load_table(TABLE))
    assert list(signal) == [10, 30, 60, 90, 150, 210, 270]  # every step but the last (300)
    assert signal[10] == pytest.approx(0.762, abs=1e-3)  # 16 / 21
    assert signal[270] > signal[10]  # the tiny table's curves separate as they go
    assert replay.format_signal({2: 0.05}, "eval_f1").endswith("2: +0.05")
