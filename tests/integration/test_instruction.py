"""Instruction tuning (Alpaca) on tiny random-init causal LMs (CPU, no hub): the loss is on the
response only, k-bit LoRA trains Llama / Falcon / Bloom, evaluation gives the held-out loss
per response token and its perplexity plus answers to the qualitative questions, and a sweep
over the model name logs every trial's answers as MLflow tables and side by side on the parent."""

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from qa_ray.cli import main
from qa_ray.config import TrialConfig
from qa_ray.models import build_model, build_tokenizer
from qa_ray.tasks import instruction
from qa_ray.tracking import QUALITATIVE_TABLE, child_runs, find_parent_run
from tests.helpers import ASSETS, tiny_sweep, trial_dict

pytestmark = pytest.mark.integration

ALPACA = str(ASSETS / "alpaca_tiny.json")


def _setup(tiny_model_dir, tmp_path, kind="llama", finetune="lora", bits=32, **over):
    over = {"data__path": ALPACA, "data__max_seq_length": 160, **over}
    cfg = TrialConfig.model_validate(
        trial_dict(tiny_model_dir(kind, causal=True), tmp_path, model__task="instruction", **over)
    )
    mcfg = cfg.model.model_copy(update={"finetune": finetune, "quantization_bits": bits})
    return cfg, mcfg, build_tokenizer(mcfg)


def _model(mcfg):
    torch.manual_seed(0)
    return build_model(mcfg, torch.device("cpu"))


def test_sequences_are_the_alpaca_prompt_then_the_response(tiny_model_dir, tmp_path):
    cfg, _, tok = _setup(tiny_model_dir, tmp_path, data__max_seq_length=224)
    train, _ = instruction.load_train_eval(cfg.data)
    feats = instruction.train_features(train, tok, cfg.data)
    assert len(feats) == len(train)  # every tiny record fits in 224 tokens
    for ex, row in zip(train, feats, strict=True):
        pairs = list(zip(row["input_ids"], row["labels"], strict=True))
        prompt = tok.decode([t for t, lab in pairs if lab == -100], skip_special_tokens=True)
        response = [lab for _, lab in pairs if lab != -100]
        assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")
        assert ("### Input:\n" in prompt) == bool(ex.input.strip())
        assert response[-1] == tok.eos_token_id
        assert tok.decode(response[:-1]) == ex.output.strip()
    # A response cut at max_seq_length keeps its prompt whole; a prompt that fills it is dropped.
    short = cfg.data.model_copy(update={"max_seq_length": 64})
    cut = instruction.train_features(train, tok, short)
    assert 0 < len(cut) < len(train)
    assert all(len(r["input_ids"]) <= 64 and r["labels"][-1] != -100 for r in cut)


def test_evaluate_gives_token_weighted_loss_perplexity_and_answers(tiny_model_dir, tmp_path):
    cfg, mcfg, tok = _setup(tiny_model_dir, tmp_path, finetune="full", data__max_answer_length=6)
    _, held = instruction.load_train_eval(cfg.data)
    feats = instruction.eval_features(held, tok, cfg.data)
    model = _model(mcfg)
    cpu = torch.device("cpu")
    out = instruction.evaluate(model, held, feats, tok, cfg.data, cpu, 4, contextlib.nullcontext)
    # The model's own loss, record by record, weighted by each record's response tokens.
    collate = instruction.collator(tok)
    total = tokens = 0
    with torch.no_grad():
        for i in range(len(feats)):
            one = collate([feats[i]])
            n = int((one["labels"] != -100).sum())
            total += model(**one).loss.item() * n
            tokens += n
    assert out.scores["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert out.scores["perplexity"] == pytest.approx(math.exp(out.scores["loss"]), rel=1e-6)
    assert list(out.predictions) == list(instruction.QUALITATIVE_QUESTIONS)
    assert len(instruction.QUALITATIVE_QUESTIONS) == 14
    assert all(isinstance(a, str) for a in out.predictions.values())


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
