"""The replay simulator (qa_ray/report/replay.py) and its rules (replay_rules.py): the real
schedulers through Tune's calls on seeded draws, what a real sweep pays charged, and the
literature's baselines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from qa_ray import metrics as m
from qa_ray.report import replay as r
from qa_ray.report.replay_rules import TopAtPoint, baselines, block_name, from_block
from qa_ray.search.schedulers.mo_asha import MOASHA

ROOT = Path(__file__).resolve().parents[3]
TABLE = str(ROOT / "tests" / "assets" / "curves_tiny.json")
RUNGS = [10, 30, 90, 270]
OLD = r.Costs(reused=10.5, fresh=10.5, stop_seconds=0.0)  # what benchmarks/replay.py charged


def _table(trials, objectives=(("eval_f1", "max"), ("peak_memory_mb", "min"))):
    return {"schema": "qa-ray/curves", "objectives": [list(o) for o in objectives],
            "constraints": [], "trials": trials}  # fmt: skip


def _trial(f1s, mb, steps=(10, 20), seconds=1.0, config=None):
    rows = [{m.STEP: s, m.TRAIN_SECONDS: s * seconds, m.EVAL_F1: f, m.PEAK_MEMORY_MB: mb}
            for s, f in zip(steps, f1s, strict=True)]  # fmt: skip
    return {"name": f"t{mb}", "outcome": "complete", "config": config or {"mb": mb}, "rows": rows}


def test_moasha_on_one_seeded_order_decides_as_before_the_move():
    """With the costs benchmarks/replay.py charged, the same decisions and figures."""
    t = r.load_table(TABLE)
    assert len(t.trials) == 8 and t.reference == (0.0, 22000.0)
    order = random.Random(0).sample(range(8), 8)
    everything = r.simulate(t, order, FIFOScheduler(), 1, OLD)
    assert everything.steps == 2400 and everything.seconds == pytest.approx(1852.5)

    def moasha():
        return MOASHA(t.objectives, grace=10, constraints=t.constraints)

    one = r.simulate(t, order, moasha(), 1, OLD, rungs=RUNGS)
    assert (one.finished, one.stopped) == ([6, 3, 4], [7, 0, 2, 5, 1])
    assert one.steps == 990 and one.steps_by_rung == [80, 100, 180, 540, 90]
    four = r.simulate(t, order, moasha(), 4, OLD, rungs=RUNGS)
    assert (four.finished, four.stopped) == ([3], [0, 6, 7, 2, 5, 1, 4])
    assert four.hypervolume / everything.hypervolume == pytest.approx(0.6706, abs=1e-4)


def test_the_replay_summaries_are_deterministic_and_the_baselines_are_there():
    t = r.load_table(TABLE)
    rules = baselines(t, 10) + [
        from_block({"type": "mo_asha", "grace": g}, f"mo_asha grace {g}") for g in (10, 30)
    ]
    res = r.replay(t, rules, 6, 2, draws=20, seed=0, costs=OLD, rungs=RUNGS)
    got = {k: (round(v["steps"], 4), round(v["hv_mean"], 4), v["hv_at_95"]) for k, v in res.items()}
    assert got == {
        "run everything": (1.0, 1.0, 1.0),
        "random 40 %": (0.3333, 0.8655, 0.35),
        "top third after 10": (0.6053, 0.9966, 1.0),
        "all to 20%, top 25%": (0.5867, 0.998, 1.0),
        "all to 30%, top 25%": (0.6267, 0.9963, 1.0),
        "1st eval (10), top K": (0.6536, 0.9972, 1.0),
        "mo_asha grace 10": (0.4428, 0.9214, 0.8),
        "mo_asha grace 30": (0.5167, 0.9463, 0.85),
    }
    lo, hi = res["mo_asha grace 10"]["hv_iqm_ci"]
    assert lo <= res["mo_asha grace 10"]["hv_iqm"] <= hi
    assert sum(res["mo_asha grace 10"]["steps_by_rung"]) == pytest.approx(1.0)


def test_each_rule_pays_the_fixed_cost_of_its_actor_policy():
    """No scheduler: Tune reuses actors; any scheduler: a fresh actor per trial. A MO-ASHA
    that stops nothing costs the same steps and 3 x (fresh - reused) more seconds."""
    t = r.load_table(_table([_trial((1, 2), 100), _trial((3, 4), 200), _trial((5, 6), 300)]))
    costs = r.Costs(reused=5.0, fresh=8.0, stop_seconds=0.0)
    fifo = r.simulate(t, [0, 1, 2], FIFOScheduler(), 1, costs)
    never = r.simulate(t, [0, 1, 2], MOASHA(t.objectives, grace=100), 1, costs)
    assert fifo.steps == never.steps == 60
    assert fifo.seconds == pytest.approx(3 * (5 + 20)) and fifo.fixed_seconds == 15
    assert never.seconds - fifo.seconds == pytest.approx(3 * 3.0)


def test_a_stopped_trial_runs_on_until_tune_ends_it():
    """Stopped at step 10 (10 s in), it trains on 4 s at its pace (1 step a second) and its
    worker starts the next trial only then."""
    lean, poor = _trial((50, 60), 100), _trial((5, 6), 200)
    t = r.load_table(_table([lean, poor, _trial((30, 40), 50)]))

    class StopPoor(FIFOScheduler):
        def on_trial_result(self, controller, trial, result):
            stop = trial.trial_id == "t0001" and result[m.STEP] == 10
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    costs = r.Costs(reused=0.0, fresh=1.0, stop_seconds=4.0)
    out = r.simulate(t, [0, 1, 2], StopPoor(), 1, costs)
    assert out.stopped == [1] and out.finished == [0, 2]
    assert out.steps == 20 + (10 + 4) + 20
    assert out.seconds == pytest.approx((1 + 20) + (1 + 10 + 4) + (1 + 20))
    assert r.simulate(t, [0, 1, 2], StopPoor(), 1, r.Costs(0, 1.0, 0.0)).steps == 50


def test_memory_aware_in_a_replay_warms_up_over_the_steps_the_trial_really_ran():
    """The loop warms up over the horizon it runs (re-planned under max_train_seconds): the
    replay reports warmup_ratio x the trial's last step, and the sweep's warmup_steps."""
    sent = []

    class Spy(FIFOScheduler):
        def on_trial_result(self, controller, trial, result):
            sent.append((trial.trial_id, result.get(m.WARMUP_STEPS)))
            return TrialScheduler.CONTINUE

    trials = [_trial((1, 2), 100, config={"warmup_ratio": 0.25}),
              _trial((1, 2), 200, config={"train.warmup_steps": 3}),
              _trial((1, 2), 300, config={})]  # fmt: skip
    t = r.load_table(_table(trials))
    r.simulate(t, [0, 1, 2], Spy(), 1)
    assert dict(sent) == {"t0000": 5, "t0001": 3.0, "t0002": None}  # 0.25 x 20 steps


def test_the_literature_baselines_judge_where_the_papers_do():
    """Dodge et al.: at a fraction of the planned steps, the best p go on; Egele et al.: at
    one epoch (where results carry one), the best K."""
    objective = (m.EVAL_F1, "max")
    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP

    def res(step, f1, **kw):
        return {m.STEP: step, m.EVAL_F1: f1, m.PLANNED_STEPS: 100, **kw}

    def trial(name):
        return type("T", (), {"trial_id": name})()

    dodge = TopAtPoint(objective, fraction=0.2, keep=0.5)
    assert dodge.on_trial_result(None, trial("a"), res(10, 1.0)) == go  # before 20 % of 100
    assert dodge.on_trial_result(None, trial("a"), res(20, 50.0)) == go  # first there
    assert dodge.on_trial_result(None, trial("b"), res(20, 10.0)) == go  # place 1 of 2 <= 1
    assert dodge.on_trial_result(None, trial("c"), res(20, 5.0)) == stop  # place 2 of 3
    assert dodge.on_trial_result(None, trial("a"), res(40, 0.0)) == go  # never judged again
    egele = TopAtPoint(objective, step=2, epoch=1.0, top_k=1)
    assert egele.on_trial_result(None, trial("a"), res(30, 9.0, epoch=0.5)) == go  # an epoch wins
    assert egele.on_trial_result(None, trial("a"), res(60, 9.0, epoch=1.0)) == go
    assert egele.on_trial_result(None, trial("b"), res(60, 8.0, epoch=1.0)) == stop  # not top 1
    names = [x.name for x in baselines(r.load_table(TABLE), 10)]
    assert names[3:] == ["all to 20%, top 25%", "all to 30%, top 25%", "1st eval (10), top K"]


def test_a_block_builds_the_scheduler_a_sweep_would_and_is_named_short():
    from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping
    from qa_ray.sweep.config import SchedulerConfig
    from qa_ray.sweep.tuner import build_scheduler

    t = r.load_table(TABLE)
    block = {"type": "memory_aware", "grace": 8.0, "reduction_factor": 3.0, "noise_floor": 1.5,
             "memory_slack": 0.3}  # fmt: skip
    ours = from_block(block).scheduler(t, 8)
    theirs = build_scheduler(SchedulerConfig(**block), t.objectives, t.constraints)
    assert isinstance(ours, MemoryAwareStopping)
    keys = ("grace", "reduction_factor", "noise_floor", "memory_slack", "min_signal", "warmup")
    assert {k: getattr(ours, k) for k in keys} == {k: getattr(theirs, k) for k in keys}
    assert block_name(block) == "memory_aware grace 8 rf 3 nf 1.5 slack 0.3"
    assert block_name({"type": "mo_asha", "grace": 4}) == "mo_asha grace 4 rf 3"


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "cannot be read"),
        ("{not json", "not JSON"),
        ('{"schema": "other"}', "`schema` must be 'qa-ray/curves', but got 'other'"),
        ('{"schema": "qa-ray/curves", "objectives": [["eval_f1", "up"]]}', "`objectives` must"),
        (json.dumps(_table([{"outcome": "complete", "config": {}, "rows": [{"step": 2}]}])),
         "`trials[0].rows`: a row needs a number at `step` and `train_seconds`"),
    ],
)  # fmt: skip
def test_a_table_that_cannot_be_replayed_is_said_in_one_line(tmp_path, content, said):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(r.TableError) as e:
        r.load_table(str(path))
    assert str(e.value).startswith(f"{path}: ") and said in str(e.value)
    assert "\n" not in str(e.value)


def test_the_noise_floor_compares_the_same_configurations_across_seeds(tmp_path):
    raw = json.loads(Path(TABLE).read_text())
    rerun = dict(raw, trials=[])
    for k, t in enumerate(raw["trials"][:3]):
        bump = 2.0 if k == 0 else 0.0
        rows = [{**row, "eval_f1": row["eval_f1"] + bump} for row in t["rows"]]
        rerun["trials"].append(dict(t, rows=rows, config={**t["config"], "seed": 7}))
    n = r.noise_floor(r.load_table(TABLE), r.load_table(rerun))
    assert n["configurations"] == 3 and n["metric"] == "eval_f1"
    assert all(gap == pytest.approx((0.0, 2.0)) for gap in n["gap_by_step"].values())
    lo, hi = sorted(n["hv_ratio"])
    assert lo <= 1.0 <= hi and lo == pytest.approx(1 / hi)
    assert "noise floor (3 configurations" in r.format_noise(n)


def test_the_signal_by_step_is_the_rank_correlation_with_the_end():
    signal = r.signal_by_step(r.load_table(TABLE))
    assert list(signal) == [10, 30, 60, 90, 150, 210, 270]  # every step but the last (300)
    assert signal[10] == pytest.approx(0.762, abs=1e-3)  # 16 / 21
    assert r.format_signal({2: 0.05}, "eval_f1").endswith("2: +0.05")
    assert r.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == 3.5  # the middle half: 2, 3, 4, 5
