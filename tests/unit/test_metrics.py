"""Metric names and the package surface."""

from qa_ray.metrics import finite_numbers


def test_the_package_surface_loads_lazily():
    import subprocess
    import sys

    code = (
        "import sys, qa_ray; assert 'torch' not in sys.modules and 'ray' not in sys.modules; "
        "from importlib.metadata import version; assert qa_ray.__version__ == version('qa-ray'); "
        "assert all(getattr(qa_ray, n) is not None for n in qa_ray.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_finite_numbers_keeps_the_finite_numbers_of_a_result_as_floats():
    """What MLflow logs and the searcher remembers of a result: numbers only, never a flag
    (bools are ints), NaN, inf, text or None."""
    result = {"eval_f1": 41.5, "step": 20, "infeasible": True, "loss": float("nan"),
              "lr": float("inf"), "reason": "peak_memory_mb 2 > 1", "eval_exact": None}  # fmt: skip
    got = finite_numbers(result)
    assert got == {"eval_f1": 41.5, "step": 20.0}
    assert all(type(v) is float for v in got.values())
