"""What drives each objective (Optuna's importance evaluator over a sweep's study), said on the
console without Optuna's warnings for small sweeps."""

from __future__ import annotations

import warnings

import optuna

from qa_ray.report.importance import param_importances


def _study(n: int):
    study = optuna.create_study(directions=["maximize", "minimize"])
    space = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
        "finetune": optuna.distributions.CategoricalDistribution(["full", "lora"]),
    }
    for i in range(n):
        t = study.ask(space)
        lora = t.params["finetune"] == "lora"
        study.tell(t, [40.0 - 20 * lora + i, 1800.0 - 200 * lora])
    return study


def test_each_objective_gets_importances_summing_to_one_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = param_importances(_study(3), ["eval_f1", "peak_memory_mb"])
    assert set(found) == {"eval_f1", "peak_memory_mb"}
    assert all(abs(sum(v.values()) - 1.0) < 1e-6 for v in found.values())
    assert [str(w.message) for w in caught if "optuna" in w.filename] == []


def test_too_few_trials_give_none():
    assert param_importances(_study(1), ["eval_f1", "peak_memory_mb"]) == {}
