"""A real sweep on local Ray (2 CPUs) with tiny models and a real MLflow store."""

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from qa_ray import metrics as m
from qa_ray.cli import main
from qa_ray.tracking.runs import child_runs
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration


def _broken_model(tmp_path, good):
    broken = tmp_path / "broken-model"
    shutil.copytree(good, broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return broken


def test_sweep_records_parent_children_study_and_failure(
    tiny_model_dir, tmp_path, ray_2cpu, capsys
):
    good = tiny_model_dir("bert")
    path, uri = tiny_sweep(tmp_path, [good, _broken_model(tmp_path, good)])
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MLflow parent run" in out and "configuration" in out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    parents = client.search_runs([exp.experiment_id], "tags.`qa_ray.role` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0]
    children = child_runs(uri, parent.info.run_id)
    assert len(children) == 4
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(failed) + len(finished) == 4
    assert all(c.data.params["model"].endswith("broken-model") for c in failed)
    assert all(c.data.params["model"] == str(good) for c in finished)
    assert failed and finished, "seed 3 samples both models"
    for c in failed:
        assert "no-such-architecture" in c.data.tags["error"]
    for c in finished:
        assert {"learning_rate", "quantization_bits", "model"} <= set(c.data.params)
        assert "lora_r" in c.data.params  # finetune is lora in every trial here
        assert {"eval_f1", "eval_exact", "peak_memory_mb"} <= set(c.data.metrics)
        assert c.data.tags["pareto_optimal"] in ("true", "false")
    assert any(c.data.tags["pareto_optimal"] == "true" for c in finished)
    # each evaluated trial's error breakdown of its final predictions: an artifact, metrics
    for c in finished:
        assert {m.ERRORS_PARTIAL, m.ERRORS_NO_OVERLAP, m.ERRORS_ANSWERABLE_EMPTY} <= set(
            c.data.metrics
        )
        local = client.download_artifacts(c.info.run_id, "error_breakdown.json", str(tmp_path))
        errors = json.loads(Path(local).read_text())
        assert errors["total"] == errors["answerable"]["total"] > 0  # SQuAD v1.1
    # curves: one point per evaluation
    hist = client.get_metric_history(finished[0].info.run_id, "train_loss")
    assert [h.step for h in hist] == [2]
    # each trial's worker log is an artifact of its run (rank 0's stdout and stderr)
    for c in finished:
        arts = {a.path for a in client.list_artifacts(c.info.run_id, "worker")}
        assert arts == {"worker/rank0.out", "worker/rank0.err"}
        err = client.download_artifacts(c.info.run_id, "worker/rank0.err", str(tmp_path))
        text = Path(err).read_text()
        assert "train: " in text and "sequences" in text, text[-2000:]
    # parent artifacts
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {
        "pareto/pareto.html",
        "pareto/pareto.png",
        "pareto/trials.csv",
        "pareto/summary.md",
        "pareto/error_breakdown.html",
        "pareto/error_breakdown.json",
    } <= arts
    local = client.download_artifacts(
        parent.info.run_id, "pareto/error_breakdown.json", str(tmp_path / "parent")
    )
    side = json.loads(Path(local).read_text())  # the front's trials, a column each
    front = [c for c in finished if c.data.tags["pareto_optimal"] == "true"]
    assert len(side["columns"]) == 1 + len(front)
    assert [r[0] for r in side["data"] if "no_overlap" in r[0]] == ["answerable: no_overlap"]
    root = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_config.yaml", "search_space.yaml"} <= root
    assert parent.data.tags["version.ray"].startswith("2.60")

    study = optuna.load_study(
        study_name="tiny-sweep",
        storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}",
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(finished)
    assert all(len(t.values) == 2 for t in complete)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]) == len(failed)

    # the front read back from MLflow by sweep name, with a constraint
    assert (
        main(
            ["pareto", "tiny-sweep", "--tracking-uri", uri, "--constraint", "peak_memory_mb <= 1e9"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table.count("COMPLETE") == len(finished) and table.count("FAILED") == len(failed)
    assert main(["pareto", "no-such-sweep", "--tracking-uri", uri]) == 2
    assert "no sweep parent run" in capsys.readouterr().err

    # a second run under the same name refuses, and touches nothing
    assert main(["sweep", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    # resuming a finished sweep reruns nothing and adds no child runs
    assert main(["sweep", str(path), "--resume"]) == 0
    assert len(child_runs(uri, parent.info.run_id)) == 4
    out = capsys.readouterr().out
    assert f"{len(finished)} of 4 trials complete, {len(failed)} failed" in out
    assert f"failed: {len(failed)} x " in out and "no-such-architecture" in out
    # a resumed sweep keeps its settings and its store: anything else is refused, named
    assert main(["sweep", str(path), "train.max_steps=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "`train.max_steps`: the sweep ran with 2, but got 3" in err
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["sweep", str(path), "--resume", "--tracking-uri", other]) == 2
    assert "a resumed sweep keeps its store" in capsys.readouterr().err
    assert main(["sweep", str(path), "search.num_samples=3", "--resume"]) == 2
    assert "can be raised to extend the sweep, not lowered" in capsys.readouterr().err
    # extending it: one more trial, same parent, same study; --strict fails on the failures
    assert main(["sweep", str(path), "search.num_samples=5", "--resume", "--strict"]) == 1
    assert "extending the sweep by 1 trials" in capsys.readouterr().out
    assert len(child_runs(uri, parent.info.run_id)) == 5
    study = optuna.load_study(
        study_name="tiny-sweep",
        storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}",
    )
    assert len(study.trials) == 5
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_a_sweep_whose_every_trial_fails_exits_1_with_its_reasons(
    tiny_model_dir, tmp_path, ray_2cpu, capsys
):
    broken = _broken_model(tmp_path, tiny_model_dir("bert"))
    path, uri = tiny_sweep(tmp_path, [broken], num_samples=2)
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no trial completed: 2 failed, 0 over a budget or out of memory, of 2" in out
    reasons = out.split("Reasons:")[1]
    assert "2 x " in reasons and "Error: " in reasons and "no-such-architecture" in reasons
    assert "Traceback" not in reasons and "File " not in reasons
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`qa_ray.role` = 'sweep'")
    assert parent.info.status == "FAILED"


def test_validate_and_dry_run(tiny_model_dir, tmp_path, capsys):
    good = tiny_model_dir("bert")
    path, _ = tiny_sweep(tmp_path, [good, tiny_model_dir("albert")])
    assert main(["validate", str(path)]) == 0
    assert main(["sweep", str(path), "--dry-run", "search.num_samples=2"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 2" in out and '"max_concurrent_trials": 2' in out
    assert (
        main(
            ["validate", str(path), "search.sampler=cmaes", "objectives=[{metric: f1, mode: max}]"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "`search.sampler`" in err and "unknown metric" in err and "but got 'f1'" in err
    bad = tmp_path / "dup.yaml"
    bad.write_text(path.read_text().replace("learning_rate:", "lr:"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "`search.space.params.lr`: unknown axis" in err and "valid string" not in err


def _sweep_process(path, *extra):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "qa_ray.cli", "sweep", str(path), *extra]
    return (
        cmd,
        env,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env),
    )


def _read_until(proc, marker: str, timeout: float = 300) -> list[str]:
    import time

    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    assert any(marker in ln for ln in lines), "".join(lines[-30:])
    return lines


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_the_sweep_driver_never_imports_torch_and_trials_start_no_ray_data_actor(
    tiny_model_dir, tmp_path
):
    """The driver validates, runs Tune and writes the report without torch (a second and a
    half of its start and of its end): no TensorBoard logger (tensorboardX imports torch), while
    Tune's result.json and progress.csv are still written per trial. No trial starts Ray Data's
    DatasetManager actor."""
    import re
    import subprocess
    import sys

    path, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=1)
    program = (
        "import sys\n"
        "from qa_ray.cli import main\n"
        f"code = main(['sweep', {str(path)!r}])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch imported: False" in done.stdout
    (trial,) = [p for p in (tmp_path / "runs" / "tiny-sweep").glob("trial-*") if p.is_dir()]
    assert (trial / "result.json").stat().st_size and (trial / "progress.csv").is_file()
    assert not list(trial.glob("events.out.tfevents*"))
    logs = Path(re.search(r"\[qa-ray\] worker logs: (\S+)", done.stdout).group(1))
    actors = {
        m
        for f in logs.glob("worker-*.out")
        for m in re.findall(r":actor_name:(\w+)", f.read_text())
    }
    assert "RayTrainWorker" in actors and "DatasetManager" not in actors, actors


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_ctrl_c_stops_the_sweep_honestly_and_resume_finishes_it(tiny_model_dir, tmp_path):
    """Ctrl-C after the first trial: exit 130, the trial in flight stopped and its run KILLED,
    the parent KILLED, no Pareto report, the --resume command printed; --resume then runs the
    rest with one child run per trial, and the parent ends FINISHED."""
    import signal
    import subprocess

    good = tiny_model_dir("bert")
    path, uri = tiny_sweep(tmp_path, [good, tiny_model_dir("albert")], num_samples=3)
    cmd, env, proc = _sweep_process(path, "search.max_concurrent_trials=1")
    first = _read_until(proc, "[qa-ray] 1/3 done")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    # A quiet console: a line per trial evaluation, the workers' own output in Ray's logs.
    first = "".join(first)
    assert "step 2/2 | loss" in first and "[qa-ray] worker logs:" in first
    assert "RayTrainWorker pid=" not in first + out
    assert "interrupted (SIGINT)" in out
    assert f"qa-ray sweep {path} search.max_concurrent_trials=1 --resume" in out

    client = MlflowClient(uri)
    parent = json.loads((tmp_path / "runs" / "tiny-sweep" / "qa_ray_sweep.json").read_text())[
        "parent_run_id"
    ]
    assert client.get_run(parent).info.status == "KILLED"
    assert not client.list_artifacts(parent, "pareto")  # nothing published as if final
    before = {r.info.run_id: r.info.status for r in child_runs(uri, parent)}
    assert "FINISHED" in before.values() and "RUNNING" not in before.values()

    resumed = subprocess.run(
        cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = child_runs(uri, parent)
    trial_ids = [r.data.tags["qa_ray.trial_id"] for r in after]
    assert len(after) == 3 and len(set(trial_ids)) == 3
    assert all(r.info.status == "FINISHED" for r in after)
    assert {k for k, v in before.items() if v == "FINISHED"} <= {r.info.run_id for r in after}
    assert client.get_run(parent).info.status == "FINISHED"
    study = optuna.load_study(
        study_name="tiny-sweep",
        storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}",
    )
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_sigterm_stops_the_sweep_with_exit_143(tiny_model_dir, tmp_path):
    """`qa-ray job stop` and a preempted head send SIGTERM: the same honest stop, exit 143."""
    import signal

    path, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=2)
    _, _, proc = _sweep_process(
        path, "search.max_concurrent_trials=1", "train.max_steps=100000",
        "train.max_train_seconds=120",
    )  # fmt: skip
    _read_until(proc, "MLflow parent run")
    parent = json.loads((tmp_path / "runs" / "tiny-sweep" / "qa_ray_sweep.json").read_text())[
        "parent_run_id"
    ]
    import time

    deadline = time.monotonic() + 120
    while not child_runs(uri, parent) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # the trial is training
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted (SIGTERM)" in out and "--resume" in out
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "KILLED"
    assert [r.info.status for r in child_runs(uri, parent)] == ["KILLED"]


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_a_student_sweep_distills_from_a_trial_of_another_sweep_named_in_mlflow(
    tiny_model_dir, tmp_path
):
    """Sweep A's trial reports checkpoints; its MLflow run records the newest; sweep B names
    it as `teacher: sweep:A/TRIAL` and trains against that folder."""
    from qa_ray import metrics as m
    from qa_ray.tracking.runs import find_parent_run

    path, uri = tiny_sweep(tmp_path, [tiny_model_dir("bert")], num_samples=1)
    one_lr = "search.space={params: {learning_rate: {type: float, low: 1.0e-3, high: 2.0e-3}}}"
    common = [one_lr, "model.finetune=full", "search.num_samples=1"]
    assert main(["sweep", str(path), *common, "name=teacher", "train.save_checkpoints=true"]) == 0
    (teacher,) = child_runs(uri, find_parent_run(uri, "teacher"))
    folder = Path(teacher.data.tags[m.TAG_CHECKPOINT])
    assert (folder / "model.safetensors").is_file() and "teacher" in str(folder)
    trial = teacher.data.tags[m.TAG_TRIAL_NAME]
    distill = f"train.distill={{teacher: 'sweep:teacher/{trial}', alpha: 0.5}}"
    assert main(["sweep", str(path), *common, "name=student", distill]) == 0
    (student,) = child_runs(uri, find_parent_run(uri, "student"))
    assert student.data.tags[m.TAG_OUTCOME] == "complete"
    saved = MlflowClient(uri).download_artifacts(
        find_parent_run(uri, "student"), "sweep_config.yaml", str(tmp_path)
    )
    assert str(folder) in Path(saved).read_text()  # the folder it resolved to, for a rerun
    nobody = "train.distill={teacher: 'sweep:teacher/trial-nobody'}"
    assert main(["sweep", str(path), *common, "name=s2", nobody]) == 2  # names the trials there
