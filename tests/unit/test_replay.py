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
