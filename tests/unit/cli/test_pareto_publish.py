"""``qa-ray pareto`` reads a sweep's front from MLflow and writes nothing there; ``--publish``
writes the report (tags, ``pareto/`` artifacts, a comparison run for several sweeps)."""

from __future__ import annotations

import json

from qa_ray import metrics as m


def _sweep(uri: str, name: str, trials: dict[str, tuple[float, float]]) -> str:
    """A finished sweep as MLflow holds it: a parent run and a child run per trial."""
    from qa_ray.tracking.runs import mlflow_client, start_parent_run

    client = mlflow_client(uri)
    # What `qa-ray sweep` logs and a best trial's YAML is built from (never run here).
    config = f"name: {name}\nmodel: {{name_or_path: models/tiny}}\ndata: {{path: squad.json}}\n"
    artifacts = {"sweep_config.yaml": config}
    parent = start_parent_run(uri, "pareto-cli", name, params={}, artifacts=artifacts)
    experiment = client.get_run(parent).info.experiment_id
    for trial, (f1, memory) in trials.items():
        run = client.create_run(
            experiment, run_name=trial, tags={m.TAG_PARENT: parent, m.TAG_TRIAL_NAME: trial}
        )
        client.log_metric(run.info.run_id, m.EVAL_F1, f1)
        client.log_metric(run.info.run_id, m.PEAK_MEMORY_MB, memory)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def _state(uri: str):
    """Every run of the store with its tags, and each run's artifacts: what a write changes."""
    from qa_ray.tracking.runs import mlflow_client

    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    return {
        r.info.run_id: (
            dict(r.data.tags),
            sorted(a.path for a in client.list_artifacts(r.info.run_id)),
        )
        for r in runs
    }


def test_pareto_reads_by_default_and_writes_only_with_publish(tmp_path, capsys):
    from qa_ray.cli import main
    from qa_ray.tracking.runs import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = _sweep(uri, "small", {"trial-a": (40.0, 1700.0), "trial-b": (13.0, 1500.0)})
    _sweep(uri, "other", {"trial-c": (30.0, 1600.0), "trial-d": (10.0, 1650.0)})
    before = _state(uri)

    # read only: one sweep, several sweeps, json; the front printed, MLflow untouched
    assert main(["pareto", "small", "--tracking-uri", uri, "--budgets", "1600"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trial") and out.count("*trial-") == 2
    assert "best under peak_memory_mb <= 1600: trial-b" in out
    assert "pareto/best_under" not in out and "read only: nothing written to MLflow" in out
    assert main(["pareto", "small", "other", "--tracking-uri", uri]) == 0
    assert "comparison" not in capsys.readouterr().out
    assert main(["pareto", "small", "other", "--tracking-uri", uri, "--format", "json"]) == 0
    said = capsys.readouterr()
    out = json.loads(said.out)
    assert out["parent_run_id"] is None and sorted(out["front"]) == [
        "trial-a",
        "trial-b",
        "trial-c",
    ]
    assert "read only" in said.err
    assert _state(uri) == before

    # --publish: the tags and the report on the parent run, the best trial's YAML beside it
    assert main(["pareto", "small", "--tracking-uri", uri, "--budgets", "1600", "--publish"]) == 0
    assert "(pareto/best_under_1600_peak_memory_mb.yaml)" in capsys.readouterr().out
    client = mlflow_client(uri)
    arts = {a.path for a in client.list_artifacts(small, "pareto")}
    assert {"pareto/pareto.html", "pareto/summary.md", "pareto/trials.csv"} <= arts
    tags = {
        r.data.tags[m.TAG_TRIAL_NAME]: r.data.tags.get(m.TAG_PARETO_OPTIMAL)
        for r in client.search_runs([client.get_run(small).info.experiment_id])
        if m.TAG_TRIAL_NAME in r.data.tags
    }
    assert tags == {"trial-a": "true", "trial-b": "true", "trial-c": None, "trial-d": None}

    # --publish over several sweeps: a new comparison run, once per call
    runs = len(_state(uri))
    assert main(["pareto", "small", "other", "--tracking-uri", uri, "--publish"]) == 0
    assert "one front over 2 sweeps: MLflow run" in capsys.readouterr().out
    assert len(_state(uri)) == runs + 1
