"""One record through any crash: the driver SIGKILLed at seeded moments of a bucket sweep with
MO-ASHA (a real S3 API server on loopback, a real MLflow server), resumed each time, a drawn
subset on a fresh head; then Optuna, Tune and MLflow must agree (tests/crash.py says what).

The default suite runs one seed with 2 kills; ``-m slow`` runs 6 seeds x 5 kills. A failure
prints its seed and kills; ``QA_RAY_CRASH_SEED=N`` replays the short form with seed N.
"""

from __future__ import annotations

import os

import pytest

from tests.crash import check_invariants, crash_sweep
from tests.dashboard import mlflow_server

pytestmark = pytest.mark.integration


def _crash(seed, kills, tiny_model_dir, tmp_path, s3_bucket):
    with mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", f"s3://{s3_bucket}/mlflow", tmp_path / "mlflow.log"
    ) as uri:
        run, parent, state = crash_sweep(
            seed, kills, tmp_path, tiny_model_dir("bert"), s3_bucket, uri
        )
        problems = check_invariants(uri, parent, state, f"s3://{s3_bucket}/sweeps/crash")
    report = run.describe()
    print(report)
    assert not problems, report + "\n" + "\n".join(problems) + f"\nlog: {tmp_path / 'crash.log'}"
    return run


def test_a_sweep_killed_twice_at_seeded_moments_keeps_one_record(
    tiny_model_dir, tmp_path, s3_bucket
):
    seed = int(os.environ.get("QA_RAY_CRASH_SEED", "3"))
    run = _crash(seed, 2, tiny_model_dir, tmp_path, s3_bucket)
    assert run.exit_codes[-1] == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(11, 17))
def test_a_sweep_killed_five_times_keeps_one_record(seed, tiny_model_dir, tmp_path, s3_bucket):
    run = _crash(seed, 5, tiny_model_dir, tmp_path, s3_bucket)
    assert run.exit_codes[-1] == 0
