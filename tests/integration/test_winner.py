"""What a user takes from a finished sweep, on one real tiny sweep and its real MLflow store:
the best configuration and the winning checkpoint on disk (``qa-ray best`` / ``export``), each
trial's system metrics over time, each hyperparameter's importance per objective, and the live
view of the study (optuna-dashboard, Optuna's own plots)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from qa_ray.cli import main
from qa_ray.metrics import TAG_CHECKPOINT
from qa_ray.tracking.runs import child_runs, find_parent_run, mlflow_client
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """One 3-trial LoRA sweep of a tiny BERT, checkpoints kept, system metrics every 0.3 s."""
    tmp = tmp_path_factory.mktemp("winner")
    path, uri = tiny_sweep(tmp, [tiny_model_dir("bert")], num_samples=3)
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.3"  # MLflow's own knob
    try:
        rc = main(["sweep", str(path), "train.save_checkpoints=true", "train.max_steps=4",
                   "search.max_concurrent_trials=1"])  # fmt: skip
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
    assert rc == 0
    parent = find_parent_run(uri, "tiny-sweep")
    return {"uri": uri, "parent": parent, "tmp": tmp, "runs": child_runs(uri, parent)}


def _best_run(s):
    done = [r for r in s["runs"] if r.info.status == "FINISHED" and "eval_f1" in r.data.metrics]
    return max(done, key=lambda r: (r.data.metrics["eval_f1"], -r.data.metrics["peak_memory_mb"]))


def test_best_writes_the_winning_configuration_for_qa_ray_train(sweep, tmp_path, capsys):
    rc = main(["best", "tiny-sweep", "--out", str(tmp_path), "--tracking-uri", sweep["uri"]])
    assert rc == 0
    best = _best_run(sweep)
    name = best.data.tags["qa_ray.trial_name"]
    written = tmp_path / f"tiny-sweep-{name}.yaml"
    assert f"retrain it: qa-ray train {written}" in capsys.readouterr().out
    cfg = yaml.safe_load(written.read_text())
    assert cfg["train"]["learning_rate"] == pytest.approx(float(best.data.params["learning_rate"]))
    assert cfg["model"]["lora"]["r"] == int(best.data.params["lora_r"])
    from qa_ray.config.trial import TrialConfig

    TrialConfig.model_validate(cfg)  # what `qa-ray train` reads


def test_export_copies_the_adapter_and_merges_it(sweep, tmp_path):
    from peft import AutoPeftModelForQuestionAnswering
    from transformers import AutoModelForQuestionAnswering

    best = _best_run(sweep)
    assert os.path.isdir(best.data.tags[TAG_CHECKPOINT])
    uri = sweep["uri"]
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["export", "tiny-sweep", "--out", str(adapter), "--tracking-uri", uri]) == 0
    assert (adapter / "adapter_config.json").is_file()
    assert main(["export", "tiny-sweep", "--out", str(merged), "--merge",
                 "--tracking-uri", uri]) == 0  # fmt: skip
    assert not (merged / "adapter_config.json").exists()
    import torch

    ids = torch.tensor([[2, 5, 7, 9, 11, 3]])
    with torch.no_grad():
        want = AutoPeftModelForQuestionAnswering.from_pretrained(str(adapter)).eval()(ids)
        got = AutoModelForQuestionAnswering.from_pretrained(str(merged)).eval()(ids)
    torch.testing.assert_close(got.start_logits, want.start_logits, atol=1e-4, rtol=1e-4)
    # A non-empty folder is refused, and nothing is written.
    assert main(["export", "tiny-sweep", "--out", str(merged), "--tracking-uri", uri]) == 2
    assert main(["best", "tiny-sweep", "--trial", "nope", "--out", str(tmp_path / "x"),
                 "--tracking-uri", uri]) == 2  # fmt: skip


def test_every_trial_run_holds_its_system_metrics_over_time(sweep):
    client = mlflow_client(sweep["uri"])
    for run in sweep["runs"]:
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        mem = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
        assert len(cpu) >= 1 and len(mem) >= 1, run.data.tags["qa_ray.trial_name"]
        assert all(0 <= p.value <= 100 for p in cpu) and all(p.value > 0 for p in mem)


def test_the_parent_run_says_what_drives_each_objective(sweep):
    from qa_ray.report.importance import TABLE
    from qa_ray.tracking.runs import read_artifact

    table = json.loads(read_artifact(sweep["uri"], sweep["parent"], TABLE))
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {r["objective"] for r in rows} == {"eval_f1", "peak_memory_mb"}
    assert {"learning_rate", "lora_r"} <= {r["param"] for r in rows}
    for objective in ("eval_f1", "peak_memory_mb"):
        total = sum(r["importance"] for r in rows if r["objective"] == objective)
        assert total == pytest.approx(1.0, abs=1e-3)
    arts = {
        a.path for a in mlflow_client(sweep["uri"]).list_artifacts(sweep["parent"], "importance")
    }
    assert {"importance/eval_f1.png", "importance/eval_f1.html"} <= arts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_opens_the_sweeps_study(sweep, tmp_path):
    """The viewer docs/one-gpu.md names, as a user starts it, on the study file of the sweep."""
    db = sweep["tmp"] / "runs" / "tiny-sweep" / "optuna.db"
    assert db.is_file()
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(exe), f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        (study,) = [s for s in studies if s["study_name"] == "tiny-sweep"]
        assert study["directions"] == ["maximize", "minimize"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{study['study_id']}"
        ) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == 3
        assert [t["values"] for t in detail["best_trials"]]  # the front, as the viewer draws it
    finally:
        proc.terminate()
        proc.wait(10)


def test_optunas_own_plot_draws_the_front_from_the_study_file(sweep, tmp_path):
    import optuna

    db = sweep["tmp"] / "runs" / "tiny-sweep" / "optuna.db"
    study = optuna.load_study(study_name="tiny-sweep", storage=f"sqlite:///{db}")
    fig = optuna.visualization.plot_pareto_front(study, target_names=["eval_f1", "peak_memory_mb"])
    out = tmp_path / "front.html"
    fig.write_html(out)
    assert "eval_f1" in out.read_text() and len(study.best_trials) >= 1
