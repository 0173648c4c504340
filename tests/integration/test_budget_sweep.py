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
    path.write_text(yaml.safe_dump(sweep))

    code = main(["sweep", str(path), "--constraint", BUDGET, "--budgets", "5000,1e9"])
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
    assert "best under peak_memory_mb <= 5000: trial-" in out
    assert "best under peak_memory_mb <= 1e+09: trial-" in out

    # the best configuration under the budget is a runnable `qa-ray train` file
    parent = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], "tags.`qa_ray.role` = 'sweep'"
    )[0]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert "pareto/best_under_1e+09_peak_memory_mb.yaml" in arts
    local = client.download_artifacts(
        parent.info.run_id, "pareto/best_under_1e+09_peak_memory_mb.yaml", str(tmp_path)
    )
    trial = load_trial_config(local, [f"output_dir={tmp_path / 'retrain'}"])
    assert trial.constraints == [BUDGET] and trial.model.lora.r <= 5
    assert main(["train", local, f"output_dir={tmp_path / 'retrain'}"]) == 0

    # `qa-ray pareto` later: the sweep's own constraints by default, the budgets again
    capsys.readouterr()
    assert main(["pareto", "tiny-sweep", "--tracking-uri", uri, "--budgets", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "best under peak_memory_mb <= 1e+09: trial-" in out
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
    assert main(["pareto", "tiny-sweep", "tiny-full", "--tracking-uri", uri]) == 0
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
