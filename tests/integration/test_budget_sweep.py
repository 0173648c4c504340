"""A sweep that knows its budget and stops losing trials early: MO-ASHA and a constraint on
local Ray (2 CPUs), tiny models, a real MLflow store and Optuna study."""

import collections
import csv

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from qa_ray.cli import main
from qa_ray.config.files import load_trial_config
from qa_ray.metrics import TAG_INFEASIBLE, TAG_OUTCOME, TAG_STOPPED_EARLY_AT
from qa_ray.search.searcher import OTHER_REASON
from qa_ray.tracking.runs import child_runs, find_parent_run
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration

# Tiny BERT with LoRA: 130 + 512 x r trainable parameters, so r 2..5 fit and r 6..8 do not.
BUDGET = "trainable_params <= 3000"


def test_mo_asha_with_a_budget(tiny_model_dir, tmp_path, ray_2cpu, capsys):
    path, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=8)
    sweep = yaml.safe_load(path.read_text())
    sweep["train"].update({"max_steps": 6, "eval_steps": 2})
    sweep["search"]["space"]["params"].pop("model")
    sweep["search"]["scheduler"] = {"type": "mo_asha", "grace": 2, "reduction_factor": 3}
    # Ranked on a size that does not move from run to run: two trials' measured peaks differ
    # by a few MB of allocator noise, which can put every newcomer on the front (no stops).
    sweep["objectives"] = [
        {"metric": "eval_f1", "mode": "max"},
        {"metric": "trainable_params", "mode": "min"},
    ]
    path.write_text(yaml.safe_dump(sweep))

    code = main(["sweep", str(path), "--constraint", BUDGET, "--budgets", "2000,1e9"])
    out = capsys.readouterr().out
    assert code == 0, out

    client = MlflowClient(uri)
    children = child_runs(uri, client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`qa_ray.role` = 'sweep'"
    )[0].info.run_id)  # fmt: skip
    by_outcome: dict[str, list] = {}
    for c in children:
        by_outcome.setdefault(c.data.tags[TAG_OUTCOME], []).append(c)
    assert set(by_outcome) == {"complete", "pruned", "infeasible"}, out

    def last_step(run):
        return max(h.step for h in client.get_metric_history(run.info.run_id, "step"))

    # over budget: stopped before its first step, with the budget it broke
    for c in by_outcome["infeasible"]:
        assert int(c.data.params["lora_r"]) >= 6
        assert "breaks the budget trainable_params <= 3000" in c.data.tags[TAG_INFEASIBLE]
        assert last_step(c) == 0 and "eval_f1" not in c.data.metrics
    assert all(int(c.data.params["lora_r"]) <= 5 for o in ("complete", "pruned")
               for c in by_outcome[o])  # fmt: skip
    # stopped early at a rung (step 2): fewer steps than running every feasible trial out
    for c in by_outcome["pruned"]:
        assert c.data.tags[TAG_STOPPED_EARLY_AT] == "2" and last_step(c) == 2
    assert all(last_step(c) == 6 for c in by_outcome["complete"])
    feasible = by_outcome["complete"] + by_outcome["pruned"]
    assert sum(last_step(c) for c in feasible) < 6 * len(feasible)
    # the front holds completed trials only
    front = [c for c in children if c.data.tags.get("pareto_optimal") == "true"]
    assert front and all(c.data.tags[TAG_OUTCOME] == "complete" for c in front)

    # Optuna: PRUNED for early stops, COMPLETE but infeasible for the over-budget trials
    study = optuna.load_study(
        study_name="tiny-sweep",
        storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}",
    )
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(by_outcome["pruned"])
    infeasible = [t for t in study.trials if t.constraints.get(BUDGET, 0) > 0]
    assert len(infeasible) == len(by_outcome["infeasible"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in infeasible)
    assert all(t.constraints[OTHER_REASON] == 0.0 for t in study.trials if t.constraints)

    # the console names the outcomes and the best trial under each budget
    assert f"{len(by_outcome['pruned'])} stopped early" in out
    assert f"{len(by_outcome['infeasible'])} infeasible" in out
    assert "INFEASIBLE: trainable_params" in out
    assert "best under trainable_params <= 2000: trial-" in out
    # what drives each objective, from a handful of trials: said to be a rough guide
    assert f"from {len(by_outcome['complete'])} completed trials, a rough guide)" in out
    assert "best under trainable_params <= 1e+09: trial-" in out

    # the best configuration under the budget is a runnable `qa-ray train` file
    parent = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`qa_ray.role` = 'sweep'"
    )[0]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert "pareto/best_under_1e+09_trainable_params.yaml" in arts
    local = client.download_artifacts(
        parent.info.run_id, "pareto/best_under_1e+09_trainable_params.yaml", str(tmp_path)
    )
    trial = load_trial_config(local, [f"output_dir={tmp_path / 'retrain'}"])
    assert trial.constraints == [BUDGET] and trial.model.lora.r <= 5
    assert main(["train", local, f"output_dir={tmp_path / 'retrain'}"]) == 0

    # `qa-ray pareto` later: the sweep's own constraints by default, the budgets again
    capsys.readouterr()
    assert main(["pareto", "tiny-sweep", "--tracking-uri", uri, "--budgets", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "best under trainable_params <= 1e+09: trial-" in out
    assert out.count("INFEASIBLE") == len(by_outcome["infeasible"])
    assert out.count("PRUNED") == len(by_outcome["pruned"])

    # one front across two sweeps (another sweep of the same task, another family)
    other = yaml.safe_load(path.read_text())
    other.update(name="tiny-full")
    other["model"]["finetune"] = "full"
    other["search"].update(num_samples=2)
    other["search"].pop("scheduler")
    other["search"]["space"]["params"] = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    }
    path.write_text(yaml.safe_dump(other))
    assert main(["sweep", str(path)]) == 0
    capsys.readouterr()
    assert main(["pareto", "tiny-sweep", "tiny-full", "--tracking-uri", uri, "--publish"]) == 0
    out = capsys.readouterr().out
    assert "one front over 2 sweeps: MLflow run" in out
    compare_id = out.split("MLflow run ")[1].split()[0]
    compare = client.get_run(compare_id)
    assert compare.data.tags["qa_ray.role"] == "comparison"
    assert compare.data.params["sweeps"] == "['tiny-sweep', 'tiny-full']"
    arts = {a.path for a in client.list_artifacts(compare_id, "pareto")}
    assert {"pareto/pareto.html", "pareto/summary.md", "pareto/trials.csv"} <= arts
    table = client.download_artifacts(compare_id, "pareto/trials.csv", str(tmp_path))
    with open(table, newline="") as f:
        families = collections.Counter(row["family"] for row in csv.DictReader(f))
    assert families == {"tiny-sweep": 8, "tiny-full": 2}  # every trial of both, by family
    # the sweeps' own reports are untouched: tiny-full's trials keep their own front tags
    own = child_runs(uri, find_parent_run(uri, "tiny-full"))
    assert any(c.data.tags.get("pareto_optimal") == "true" for c in own)


@pytest.mark.slow  # a real sweep that samples until its asked-for trials ran: `pytest -m slow`
def test_configs_predicted_over_the_memory_budget_are_never_launched(
    tiny_model_dir, tmp_path, ray_2cpu, capsys, monkeypatch
):
    """Half the space (batch 4096: gigabytes of activations) is predicted over
    `peak_memory_mb <= 3000` beyond its uncertainty: those draws become predicted_infeasible
    child runs with their prediction, Optuna learns them infeasible, and the two trials the
    sweep asked for are both batch-2 trials that ran (each with its prediction logged)."""
    from qa_ray import metrics as m
    from qa_ray.search import memory

    # A prior sure of its activation term (sd 5 %, not 100 %): the account's batch-4096
    # activations alone are over the budget then, before any measurement.
    monkeypatch.setattr(memory, "_PRIOR_SD", (0.5, 0.3, 0.05))
    path, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=2)
    sweep = yaml.safe_load(path.read_text())
    sweep["search"]["space"]["params"] = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "per_device_batch_size": {"type": "categorical", "choices": [2, 4096]},
    }
    sweep["search"]["max_concurrent_trials"] = 1
    sweep["constraints"] = ["peak_memory_mb <= 3000"]
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path)]) == 0, capsys.readouterr().out
    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`qa_ray.role` = 'sweep'"
    )[0]
    children = child_runs(uri, parent.info.run_id)
    outcomes = collections.Counter(c.data.tags.get(TAG_OUTCOME) for c in children)
    rejected = [c for c in children if c.data.tags.get(TAG_OUTCOME) == "predicted_infeasible"]
    ran = [c for c in children if c.data.tags.get(TAG_OUTCOME) != "predicted_infeasible"]
    assert len(ran) == 2 and outcomes["complete"] == 2, outcomes
    assert all(c.data.params["per_device_batch_size"] == "2" for c in ran)
    for c in ran:
        assert m.PREDICTED_PEAK_MEMORY_MB in c.data.metrics and m.PEAK_MEMORY_MB in c.data.metrics
    # One trial at a time, both batch 2 (the same memory key: only the learning rate differs):
    # the second is predicted as the first one measured.
    first, second = sorted(ran, key=lambda c: c.info.start_time)
    assert second.data.metrics[m.PREDICTED_PEAK_MEMORY_MB] == first.data.metrics[m.PEAK_MEMORY_MB]
    assert rejected, "the seeded draws held no batch-4096 config"
    for c in rejected:
        assert c.data.params["per_device_batch_size"] == "4096"
        assert c.data.metrics[m.PREDICTED_PEAK_MEMORY_MB] > 3000
        assert c.data.tags[TAG_INFEASIBLE].startswith("predicted peak_memory_mb ")
        assert "step" not in c.data.metrics  # nothing ran
    study = optuna.load_study(
        study_name="tiny-sweep",
        storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}",
    )
    told = [t for t in study.trials if "qa_ray.predicted_infeasible" in t.user_attrs]
    assert len(told) == len(rejected)
    assert all(t.constraints["peak_memory_mb <= 3000"] > 0 for t in told)
