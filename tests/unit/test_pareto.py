import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_ray.pareto import (
    dominates,
    front,
    hypervolume_2d,
    hypervolume_history,
    nondominated_ranks,
    parse_constraint,
)

OBJ = [("eval_f1", "max"), ("peak_memory_mb", "min")]


def t(f1, mem, **kw):
    return {"eval_f1": f1, "peak_memory_mb": mem, **kw}


def test_front_two_objectives_with_ties_and_exclusions():
    trials = [
        t(80, 4000),  # 0 front
        t(70, 2000),  # 1 front
        t(70, 2000),  # 2 tie with 1: both on the front
        t(60, 3000),  # 3 dominated by 1
        t(90, 9000),  # 4 front
        t(float("nan"), 100),  # 5 excluded (NaN)
        {"peak_memory_mb": 50},  # 6 excluded (missing)
        t(99, 10, status="FAILED"),  # 7 excluded (failed)
    ]
    pf = front(trials, OBJ)
    assert pf.optimal == (0, 1, 2, 4)
    assert pf.dominated == (3,)
    assert pf.excluded == (5, 6, 7)


def test_constraints_filter_first():
    trials = [t(90, 9000), t(80, 4000), t(70, 2000)]
    pf = front(trials, OBJ, [parse_constraint("peak_memory_mb <= 5000")])
    assert pf.optimal == (1, 2) and pf.infeasible == (0,)
    with pytest.raises(ValueError, match="metric <= number"):
        parse_constraint("memory is small")


def test_three_objectives_and_ranks():
    obj = OBJ + [("eval_latency_ms_per_example", "min")]
    trials = [
        t(80, 4000, eval_latency_ms_per_example=5),
        t(80, 4000, eval_latency_ms_per_example=9),
        t(70, 1000, eval_latency_ms_per_example=9),
    ]
    assert front(trials, obj).optimal == (0, 2)
    assert nondominated_ranks(trials, obj) == {0: 0, 2: 0, 1: 1}


def _brute_front(points):
    return [
        i
        for i, p in enumerate(points)
        if not any(all(q[k] <= p[k] for k in range(len(p))) and q != p for q in points)
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 3)), max_size=25))
def test_front_matches_brute_force(points):
    trials = [{"a": a, "b": b, "c": c} for a, b, c in points]
    pf = front(trials, [("a", "min"), ("b", "min"), ("c", "min")])
    assert list(pf.optimal) == _brute_front(points)
    assert sorted(pf.optimal + pf.dominated) == list(range(len(points)))


def _brute_hv(points, ref, grid=1):
    # count unit cells of the integer grid dominated by some point
    area = 0
    for x, y in itertools.product(range(ref[0]), range(ref[1])):
        if any(px <= x and py <= y for px, py in points):
            area += 1
    return area


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=12))
def test_hypervolume_2d_matches_grid_count(points):
    assert hypervolume_2d(points, (10, 10)) == _brute_hv(points, (10, 10))


def test_hypervolume_history_grows_and_uses_modes():
    trials = [t(50, 3000), t(40, 4000), t(80, 2000)]
    hv = hypervolume_history(trials, OBJ, reference=(0, 5000))
    assert hv[0] == pytest.approx(50 * 2000)
    assert hv[1] == pytest.approx(50 * 2000)  # dominated: nothing added
    assert hv[2] == pytest.approx(80 * 3000)
    hv3 = hypervolume_history(
        [dict(x, c=1) for x in trials], OBJ + [("c", "min")], reference=(0, 5000, 2)
    )
    assert hv3[-1] == pytest.approx(80 * 3000 * 1)


def test_dominates():
    assert (
        dominates((1, 1), (1, 2))
        and not dominates((1, 2), (1, 2))
        and not dominates((0, 3), (1, 2))
    )


def test_hypervolume_of_three_objectives_uses_optunas_implementation():
    """Two boxes of volume 2 overlapping in a unit cube: 3 (Optuna's private function, held by
    the version pin)."""
    objs = [("a", "min"), ("b", "min"), ("c", "min")]
    trials = [{"a": 0.0, "b": 0.0, "c": 1.0}, {"a": 0.0, "b": 1.0, "c": 0.0}]
    assert hypervolume_history(trials, objs, (1.0, 2.0, 2.0)) == pytest.approx([2.0, 3.0])
