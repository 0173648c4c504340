"""Instruction tuning (Alpaca) on tiny random-init causal LMs (CPU, no hub): the loss is on the
response only, k-bit LoRA trains Llama / Falcon / Bloom, evaluation gives the held-out loss
per response token and its perplexity plus answers to the qualitative questions, and a sweep
over the model name logs every trial's answers as MLflow tables and side by side on the parent."""

import json
import math
from pathlib import Path

import pytest
import yaml

from qa_ray.cli import main
from qa_ray.tasks import instruction
from qa_ray.tracking.runs import QUALITATIVE_TABLE, child_runs, find_parent_run
from tests.helpers import ASSETS, tiny_sweep, trial_dict

pytestmark = pytest.mark.integration

ALPACA = str(ASSETS / "alpaca_tiny.json")


def test_train_cli_reports_eval_loss_and_writes_the_answers(tiny_model_dir, tmp_path, capsys):
    cfg = trial_dict(
        tiny_model_dir("llama", causal=True),
        tmp_path,
        model__task="instruction",
        model__finetune="lora",
        data__path=ALPACA,
        data__max_seq_length=160,
        data__max_answer_length=4,
        train__eval_on_start=True,
    )
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "step 0 epoch 0.00 | loss nan" in printed and "| eval loss " in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    answers = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert list(answers) == list(instruction.QUALITATIVE_QUESTIONS)


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_instruction_sweep_over_models_logs_answers_side_by_side(
    tiny_model_dir, tmp_path, ray_2cpu
):
    from mlflow.tracking import MlflowClient

    models = [tiny_model_dir("llama", causal=True), tiny_model_dir("falcon", causal=True)]
    path, uri = tiny_sweep(tmp_path, models, num_samples=2)
    data = yaml.safe_load(path.read_text())
    data["model"]["task"] = "instruction"
    data["data"] = {
        "path": ALPACA,
        "max_seq_length": 160,
        "max_answer_length": 4,
        "cache_dir": str(tmp_path / "cache"),
    }
    data["search"]["space"]["params"]["quantization_bits"]["choices"] = [4, 16]
    data["search"]["initial_points"] = [  # one trial per model, Falcon in 4-bit
        {"model": str(models[0]), "quantization_bits": 16},
        {"model": str(models[1]), "quantization_bits": 4},
    ]
    data["objectives"] = [
        {"metric": "eval_loss", "mode": "min"},
        {"metric": "peak_memory_mb", "mode": "min"},
    ]
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path)]) == 0
    parent = find_parent_run(uri, "tiny-sweep")
    runs = child_runs(uri, parent)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["model"] for r in runs} == {str(m) for m in models}
    client = MlflowClient(uri)

    def artifact(run_id, name):
        return Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text()

    for r in runs:
        assert r.data.metrics["eval_perplexity"] == pytest.approx(
            math.exp(r.data.metrics["eval_loss"]), rel=1e-4
        )
        table = json.loads(artifact(r.info.run_id, QUALITATIVE_TABLE))
        assert table["columns"] == ["step", "question", "answer"]
        assert [row[1] for row in table["data"]] == list(instruction.QUALITATIVE_QUESTIONS)
    side = json.loads(artifact(parent, "pareto/qualitative_answers.json"))
    assert len(side["columns"]) == 3 and side["columns"][0] == "question"
    labels = {c.split(" (")[1].split(" ")[0] for c in side["columns"][1:]}
    assert labels == {m.name for m in models}
    assert [row[0] for row in side["data"]] == list(instruction.QUALITATIVE_QUESTIONS)
    assert "What is the capital of Australia?" in artifact(
        parent, "pareto/qualitative_answers.html"
    )
    assert "| eval loss | perplexity |" in artifact(parent, "pareto/summary.md")
