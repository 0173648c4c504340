"""Generative QA with causal LMs (Llama, Falcon, Bloom, GPT-2, Mamba) on tiny random-init models
(CPU, no hub; learning in full / LoRA / 8-bit / 4-bit is the task-contract test):
generate -> extract -> score gives EM/F1, and a sweep of generative trials lands in MLflow with
its Pareto artifacts."""

import contextlib

import pytest
import torch
import yaml

from qa_ray.cli import main
from qa_ray.config.trial import ModelConfig, TrialConfig
from qa_ray.data.squad import load_train_eval
from qa_ray.models.build import build_model, build_tokenizer
from qa_ray.tasks import generative
from qa_ray.tracking.runs import child_runs, find_parent_run
from tests.helpers import official_scores, tiny_sweep, trial_dict

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bits", [4, 8])
def test_falcon_is_quantized_and_a_model_bnb_cannot_quantize_is_an_error(
    tiny_model_dir, bits, monkeypatch
):
    # Falcon's projections are FalconLinear, which transformers 5 does not swap for bnb layers;
    # qa-ray builds them as nn.Linear for k-bit. Without that, a "4-bit" trial would silently
    # train full-precision weights: that is an error.
    from qa_ray.models import build as models

    mcfg = ModelConfig(
        name_or_path=str(tiny_model_dir("falcon", causal=True)),
        task="generative",
        finetune="lora",
        quantization_bits=bits,
    )
    model = build_model(mcfg, torch.device("cpu"))
    kbit = [m for m in model.modules() if type(m).__module__.startswith("bitsandbytes")]
    assert len(kbit) == 2 * 4  # 2 layers x (query_key_value, dense, dense_h_to_4h, dense_4h_to_h)
    from transformers.models.falcon import modeling_falcon

    assert modeling_falcon.FalconLinear is not torch.nn.Linear  # restored after loading
    monkeypatch.setattr(models, "_PLAIN_LINEAR_SUBCLASSES", {})
    with pytest.raises(ValueError, match="quantized no layer.*falcon"):
        build_model(mcfg, torch.device("cpu"))


def _setup(tiny_model_dir, tmp_path, kind, finetune="full", bits=32, **over):
    cfg = TrialConfig.model_validate(
        trial_dict(tiny_model_dir(kind, causal=True), tmp_path, model__task="generative", **over)
    )
    mcfg = cfg.model.model_copy(update={"finetune": finetune, "quantization_bits": bits})
    return cfg, mcfg, build_tokenizer(mcfg)


@pytest.mark.parametrize("kind, finetune", [("llama", "lora"), ("falcon", "full"), ("bloom", "full"),
                                            ("gpt2", "lora"), ("mamba", "lora")])  # fmt: skip
def test_answer_only_logits_give_the_models_own_loss(tiny_model_dir, tmp_path, kind, finetune):
    cfg, mcfg, tok = _setup(tiny_model_dir, tmp_path, kind, finetune)
    train, _ = load_train_eval(cfg.data)
    feats = generative.train_features(train[:6], tok, cfg.data)
    batch = generative.collator(tok)([feats[i] for i in range(6)])  # right-padded, mixed lengths
    model = build_model(mcfg, torch.device("cpu"))
    ours = generative.loss(model, batch)
    theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    ours.backward()  # gradients flow through the kept positions
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_training_sequences_put_the_loss_on_the_answer_only(tiny_model_dir, tmp_path):
    cfg, _, tok = _setup(
        tiny_model_dir, tmp_path, "llama", data__max_seq_length=96, data__doc_stride=32
    )
    train, _ = load_train_eval(cfg.data)
    feats = generative.train_features(train[:20], tok, cfg.data)
    for ex, row in zip(train[:20], feats, strict=True):
        assert len(row["input_ids"]) <= 96
        labelled = [t for t in row["labels"] if t != -100]
        assert labelled[-1] == tok.eos_token_id
        assert tok.decode(labelled[:-1]).strip() == ex.answers[0].strip()
        # The prompt (possibly a window of the context) holds the answer it is trained on.
        pairs = zip(row["input_ids"], row["labels"], strict=True)
        prompt = tok.decode([t for t, lab in pairs if lab == -100])
        assert "Question:" in prompt and prompt.rstrip().endswith("Answer:")
        assert ex.answers[0].strip() in prompt


def test_unanswerable_questions_learn_the_no_answer_text(tiny_model_dir, tmp_path):
    from tests.helpers import ASSETS

    cfg, _, tok = _setup(
        tiny_model_dir, tmp_path, "llama", data__path=str(ASSETS / "squad_v2_tiny.json")
    )
    train, _ = load_train_eval(cfg.data)
    impossible = [i for i, ex in enumerate(train) if ex.is_impossible]
    assert impossible
    feats = generative.train_features(train, tok, cfg.data)
    labelled = [t for t in feats[impossible[0]]["labels"] if t != -100][:-1]
    assert tok.decode(labelled).strip() == "unanswerable"


@pytest.mark.parametrize("kind", ["llama", "falcon", "bloom", "gpt2", "mamba"])
def test_generate_extract_score_gives_squad_metrics(tiny_model_dir, tmp_path, kind):
    cfg, mcfg, tok = _setup(tiny_model_dir, tmp_path, kind, data__max_answer_length=5)
    _, evals = load_train_eval(cfg.data)
    evals = evals[:6]
    feats = generative.eval_features(evals, tok, cfg.data)
    model = build_model(mcfg, torch.device("cpu"))
    cpu = torch.device("cpu")
    out = generative.evaluate(model, evals, feats, tok, cfg.data, cpu, 4, contextlib.nullcontext)
    assert set(out.predictions) == {ex.id for ex in evals}
    assert {"exact", "f1", "total"} <= set(out.scores) and out.scores["total"] == 6
    assert out.scores == pytest.approx(official_scores(evals, out.predictions))
    assert out.latency_ms_per_example > 0


def test_train_cli_runs_a_generative_trial(tiny_model_dir, tmp_path, capsys):
    cfg = trial_dict(
        tiny_model_dir("llama", causal=True),
        tmp_path,
        model__task="generative",
        model__finetune="lora",
        data__max_eval_examples=8,
        data__max_answer_length=4,
        train__eval_on_start=True,
    )
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    out = tmp_path / "out"
    assert (out / "predictions.json").is_file() and (out / "metrics.json").is_file()
    printed = capsys.readouterr().out
    assert "step 0 epoch 0.00 | loss nan" in printed and "step 4 " in printed  # baseline first
    assert [c.name for c in (out / "checkpoints").iterdir()] == ["step_000004"]


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_generative_sweep_lands_in_mlflow(tiny_model_dir, tmp_path, ray_2cpu):
    models = [tiny_model_dir("llama", causal=True), tiny_model_dir("gpt2", causal=True)]
    path, uri = tiny_sweep(tmp_path, models, num_samples=2)
    data = yaml.safe_load(path.read_text())
    data["model"]["task"] = "generative"
    data["data"].update(max_eval_examples=6, max_answer_length=4)
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path)]) == 0
    parent = find_parent_run(uri, "tiny-sweep")
    runs = child_runs(uri, parent)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all("eval_f1" in r.data.metrics for r in runs)
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(parent).data.params["task"] == "generative"
