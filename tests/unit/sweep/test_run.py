"""How a sweep ends: run_sweep with Ray and Tune replaced (no cluster, no trial)."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _local_sweep(tmp_path) -> tuple[str, str]:
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {
        "name": "ends",
        "model": {"name_or_path": str(ASSETS / "wordpiece"), "finetune": "lora"},
        "data": {"path": str(ASSETS / "squad_v1_tiny.json"), "max_seq_length": 128,
                 "doc_stride": 32},
        "train": {"max_steps": 2},
        "search": {"num_samples": 2, "space": {"params": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}},
        "storage_path": str(tmp_path / "runs"),
        "tracking": {"tracking_uri": uri, "experiment_name": "t"},
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), uri


class _NoTrials:
    """What Tune's ResultGrid offers run_sweep, for a stage that ran no trial."""

    _experiment_analysis = type("Analysis", (), {"trials": []})()

    def __iter__(self):
        return iter([])


@pytest.fixture
def no_ray(monkeypatch):
    from qa_ray.sweep import run as sweep

    monkeypatch.setattr(sweep, "init_ray", lambda address, verbose=False: {"CPU": 2.0})
    return sweep


def _parent(tmp_path) -> str:
    import json

    return json.loads((tmp_path / "runs" / "ends" / "qa_ray_sweep.json").read_text())[
        "parent_run_id"
    ]


def test_a_sweep_that_raises_ends_its_runs_failed_and_exits_1(
    no_ray, tmp_path, monkeypatch, capsys
):
    """Tune raises (or the cluster is lost) with a trial in flight: the parent run and the
    trial's run end FAILED, not RUNNING forever, and the exit code is 1."""
    from mlflow.tracking import MlflowClient

    from qa_ray.cli import main
    from qa_ray.metrics import TAG_PARENT
    from qa_ray.tracking.runs import child_runs

    path, uri = _local_sweep(tmp_path)
    client = MlflowClient(uri)

    def fit(sweep, stage, index):
        experiment = client.get_run(sweep.parent_id).info.experiment_id
        client.create_run(experiment, tags={TAG_PARENT: sweep.parent_id})  # a trial in flight
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(no_ray, "_fit", fit)
    assert main(["sweep", path]) == 1
    err = capsys.readouterr().err
    assert "the cluster went away" in err and f"qa-ray sweep {path} --resume" in err
    parent = _parent(tmp_path)
    assert client.get_run(parent).info.status == "FAILED"
    assert [r.info.status for r in child_runs(uri, parent)] == ["FAILED"]


def test_sigterm_before_tunes_loop_starts_exits_143_with_the_parent_killed(
    no_ray, tmp_path, monkeypatch, capsys
):
    """SIGTERM while the stage is set up (Tune not listening yet): the same honest stop as
    inside Tune's loop, exit 143 and the parent KILLED."""
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from qa_ray.cli import main

    path, uri = _local_sweep(tmp_path)

    def fit(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the stage went on after SIGTERM")

    monkeypatch.setattr(no_ray, "_fit", fit)
    assert main(["sweep", path]) == 143
    assert "interrupted (SIGTERM)" in capsys.readouterr().out
    assert MlflowClient(uri).get_run(_parent(tmp_path)).info.status == "KILLED"


def test_a_signal_between_stages_stops_the_next_stage(no_ray, tmp_path, monkeypatch, capsys):
    """A resume that extends runs two Tune experiments. A signal once the first one's loop has
    ended (Tune leaves its SIGUSR1 handler installed, its stop event read by no one) stops the
    sweep before the second stage runs any trial: exit 143, parent KILLED."""
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from qa_ray.cli import main

    path, uri = _local_sweep(tmp_path)
    ran, stale = [], []

    def stages(cfg, state, exp_path, resume):
        first = {"storage_path": cfg.storage_path, "name": cfg.name, "num_samples": 1}
        return [first, {"storage_path": exp_path, "name": "extend-1", "num_samples": 1}]

    def fit(sweep, stage, index):
        if index == 0:  # as Tune 2.60 leaves it when its loop ends
            signal.signal(signal.SIGUSR1, lambda *a: stale.append("stop event set"))
        else:  # the second stage is being set up: its Tune loop not started yet
            os.kill(os.getpid(), signal.SIGTERM)
        ran.append(index)
        return _NoTrials()

    monkeypatch.setattr(no_ray, "plan_stages", stages)
    monkeypatch.setattr(no_ray, "_fit", fit)
    assert main(["sweep", path]) == 143
    assert ran == [0] and not stale
    assert MlflowClient(uri).get_run(_parent(tmp_path)).info.status == "KILLED"


def test_a_new_bucket_sweep_sets_aside_an_older_state_of_its_name(
    no_ray, tmp_path, monkeypatch, s3_bucket
):
    """A state folder on this machine from an older sweep of the same name (the bucket holds
    no such sweep) is not this sweep's: its parent run is not reused, and it is moved aside."""
    import json
    import os

    from qa_ray.cli import main

    path, uri = _local_sweep(tmp_path)
    stale = tmp_path / "state" / "ends"
    stale.mkdir(parents=True)
    (stale / "qa_ray_sweep.json").write_text(json.dumps({"parent_run_id": "gone"}))
    monkeypatch.setenv("QA_RAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(no_ray, "_fit", lambda *args: _NoTrials())
    assert main(["sweep", path, f"storage_path=s3://{s3_bucket}/runs"]) == 1  # no trial ran
    state = json.loads((stale / "qa_ray_sweep.json").read_text())
    assert state["parent_run_id"] != "gone"
    (aside,) = [p for p in os.listdir(tmp_path / "state") if p.startswith("ends.old-")]
    assert json.loads((tmp_path / "state" / aside / "qa_ray_sweep.json").read_text()) == {
        "parent_run_id": "gone"
    }


def test_a_driver_lost_before_tunes_first_snapshot_is_resumed_under_its_parent(
    no_ray, tmp_path, monkeypatch, s3_bucket, capsys
):
    """The head died right after the parent-run line, before Tune wrote anything: --resume
    said there was nothing to resume, and the fresh start that it named left the first
    parent run RUNNING forever beside the new one. Here the state comes back from the
    bucket on a fresh head (another state folder) and the sweep goes on under its parent."""
    import json
    import shutil

    from mlflow.tracking import MlflowClient

    from qa_ray.cli import main

    path, uri = _local_sweep(tmp_path)
    bucket = [f"storage_path=s3://{s3_bucket}/runs"]
    monkeypatch.setenv("QA_RAY_STATE_DIR", str(tmp_path / "head-1"))

    def lost(sweep, stage, index):  # the head is gone: nothing after this line runs
        raise SystemExit("head lost")

    monkeypatch.setattr(no_ray, "_fit", lost)
    with pytest.raises(SystemExit):
        main(["sweep", path, *bucket])
    first = json.loads((tmp_path / "head-1" / "ends" / "qa_ray_sweep.json").read_text())
    shutil.rmtree(tmp_path / "head-1")
    monkeypatch.setenv("QA_RAY_STATE_DIR", str(tmp_path / "head-2"))
    monkeypatch.setattr(no_ray, "_fit", lambda *args: _NoTrials())
    assert main(["sweep", path, *bucket]) == 2  # started: never again beside its parent
    assert "pass --resume" in capsys.readouterr().err
    assert main(["sweep", path, "--resume", *bucket]) == 1  # resumed; no trial ran here
    again = json.loads((tmp_path / "head-2" / "ends" / "qa_ray_sweep.json").read_text())
    assert again["parent_run_id"] == first["parent_run_id"]
    parents = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("t").experiment_id]
    )
    assert [r.info.status for r in parents] == ["FAILED"]  # one parent, ended


def test_a_trial_ended_before_its_first_report_is_not_complete():
    """Ctrl-C in a sweep's first seconds: Tune ends the trials in flight TERMINATED with no
    result at all; they were stopped, not completed."""
    from types import SimpleNamespace

    from qa_ray.sweep.run import _outcome

    bare = SimpleNamespace(error=None, metrics={}, config={"learning_rate": 1e-4})
    assert _outcome(bare, "TERMINATED")["status"] == "STOPPED"
    done = SimpleNamespace(error=None, metrics={"eval_f1": 40.0, "step": 100}, config={})
    assert _outcome(done, "TERMINATED")["status"] == "COMPLETE"
