"""Advice by cross-validation (qa_ray/report/advise.py): a block where curves separate early,
none where they cross late, never one that loses more than 5 % on the held-out halves."""

from __future__ import annotations

import random

import pytest

from qa_ray import metrics as m
from qa_ray.report import advise
from qa_ray.report.replay import TableError, iqm, load_table

STEPS = (2, 4, 8, 16, 32, 64)


def _table(n: int, crossing: bool, seed: int = 0):
    """n configurations of 64 steps at 2 s a step. Separating: F1 at every step ranks as at
    the end. Crossing: before the end, it ranks the other way round."""
    rng = random.Random(seed)
    finals = rng.sample(range(10, 10 + 5 * n, 5), n)
    trials = []
    for i, final in enumerate(finals):
        rows = []
        for s in STEPS:
            early = (10 + 5 * n - final) if crossing else final
            f1 = final if s == 64 else early * s / 64
            rows.append({m.STEP: s, m.TRAIN_SECONDS: 2.0 * s, m.EVAL_F1: f1,
                         m.PEAK_MEMORY_MB: 1000.0 + rng.random()})  # fmt: skip
        trials.append({"name": f"t{i}", "outcome": "complete", "config": {"i": i}, "rows": rows})
    return load_table({"schema": "qa-ray/curves", "objectives": [["eval_f1", "max"],
                       ["peak_memory_mb", "min"]], "constraints": [], "trials": trials})  # fmt: skip


def _advise(table):
    blocks = advise.candidate_blocks(table)
    return advise.cross_validate(table, blocks, splits=4, draws=3, workers=(1, 4), seed=0)


def test_curves_that_separate_early_get_a_block_that_keeps_the_front_and_saves():
    from qa_ray.sweep.config import SchedulerConfig

    table = _table(16, crossing=False)
    a = _advise(table)
    assert a.block is not None, a.reason
    SchedulerConfig(**a.block)  # a block the sweep file takes as it is
    assert iqm(a.held_hv) >= 0.95 and max(a.held_seconds) < 1.0
    assert a.whole is not None and a.whole[0] >= 0.95
    text = advise.format_advice(a, 2, (1, 4), 3)
    assert "scheduler: {type: " in text and "compute saved" in text


def test_curves_that_cross_late_get_none_and_why():
    table = _table(16, crossing=True)
    signal = {2: -1.0, 32: -1.0}
    a = _advise(table)
    assert a.block is None
    assert advise.separation_step(signal, 64) == 64
    assert "recommendation: none: your curves do not separate before step 64" in (
        advise.format_advice(a, 64, (1, 4), 3)
    )


def test_a_block_that_loses_on_the_held_out_halves_is_never_recommended(monkeypatch):
    """Chosen on every tuning half, but 0.90 on the held-out ones: withheld."""
    table = _table(16, crossing=False)
    real = advise._scores
    calls = []

    def scores(t, rules, *a):
        calls.append(t)
        out = real(t, rules, *a)
        if len(calls) % 2 == 0:  # the judging half of each split
            return {k: (0.90, v[1], v[2]) for k, v in out.items()}
        return out

    monkeypatch.setattr(advise, "_scores", scores)
    a = _advise(table)
    assert a.block is None and "below 0.95" in a.reason
    assert all(h == 0.90 for h in a.held_hv)
    text = advise.format_advice(a, 8, (1, 4), 3)
    assert "the block chosen most often, on the held-out halves: hypervolume kept IQM 0.900" in text


def test_too_few_trials_is_bad_input():
    with pytest.raises(TableError, match=r"at least 8 complete or infeasible trials, but got 6"):
        _advise(_table(6, crossing=False))


def test_a_rerun_gives_the_noise_floor_and_new_configurations_are_pooled():
    a, b = _table(8, False, seed=0), _table(8, False, seed=1)
    other = load_table({"schema": "qa-ray/curves", "objectives": [list(o) for o in a.objectives],
                        "constraints": [], "trials": [dict(t, config={"j": k})
                                                      for k, t in enumerate(b.trials)]},
                       "other.json")  # fmt: skip
    main, reruns = advise.pool([a, b])
    assert main is a and reruns == [b]  # the same configurations: a rerun
    pooled, reruns = advise.pool([a, other])
    assert len(pooled.trials) == 16 and reruns == [] and "other.json" in pooled.source


def _per_question_table(n: int = 12, questions: int = 200, seed: int = 0):
    """n configurations whose per-question answers are drawn from a skill each (the lower the
    index, the better and the leaner), fixed from the first evaluation on."""
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        skill = 0.8 - 0.05 * i
        rows = []
        for s in STEPS:
            right = [1.0 if rng.random() < skill * (0.5 + s / 128) else 0.0
                     for _ in range(questions)]  # fmt: skip
            rows.append({m.STEP: s, m.TRAIN_SECONDS: 2.0 * s,
                         m.EVAL_F1: 100 * sum(right) / questions,
                         m.PEAK_MEMORY_MB: 1000.0 + 10 * i,
                         m.PER_QUESTION: {"f1": right, "exact": right}})  # fmt: skip
        trials.append({"name": f"t{i}", "outcome": "complete", "config": {"i": i}, "rows": rows})
    return load_table({"schema": "qa-ray/curves", "objectives": [["eval_f1", "max"],
                       ["peak_memory_mb", "min"]], "constraints": [], "trials": trials})  # fmt: skip


def test_a_table_with_per_question_scores_races_too():
    from qa_ray.report.replay import replay
    from qa_ray.report.replay_rules import from_block

    table = _per_question_table()
    assert advise.has_per_question(table) and not advise.has_per_question(_table(8, False))
    races = [b for b in advise.candidate_blocks(table) if b["type"] == "race"]
    assert {b["test"] for b in races} == {"sign", "t"}
    rule = from_block({"type": "race", "grace": 8, "reduction_factor": 2.0})
    assert rule.name == "race grace 8 rf 2 alpha 0.05 test sign"
    out = replay(table, [rule], len(table.trials), 1, 3, 0, bootstrap=False)[rule.name]
    # the worse, heavier trials are behind on the same questions: stopped, the front kept
    assert out["steps"] < 0.8 and out["hv_iqm"] >= 0.95, out
