"""The training loop and model builders on tiny random-init models (CPU, no hub)."""

import json
from pathlib import Path

import pytest
import torch

from qa_ray.cli import main
from qa_ray.config.trial import ModelConfig, TrialConfig
from qa_ray.data.squad import load_train_eval
from qa_ray.models.build import build_model, build_tokenizer
from qa_ray.tasks import TASKS, extractive
from qa_ray.training.loop import train_loop_per_worker
from tests.helpers import official_scores, trial_dict

pytestmark = pytest.mark.integration


def test_train_cli_writes_predictions_metrics_and_checkpoints(tiny_model_dir, tmp_path, capsys):
    import yaml

    cfg = trial_dict(
        tiny_model_dir("bert"),
        tmp_path,
        train__eval_steps=2,
        train__max_steps=6,
        train__checkpoints_to_keep=2,
    )
    cfg["model"]["finetune"] = "lora"
    p = tmp_path / "trial.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(p), "train.seed=7"]) == 0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert {
        "eval_exact",
        "eval_f1",
        "peak_memory_mb",
        "model_footprint_mb",
        "trainable_params",
        "train_samples_per_second",
        "eval_latency_ms_per_example",
        "lr",
        "step",
    } <= set(metrics)
    assert metrics["step"] == 6 and metrics["peak_memory_mb"] > 50
    assert len(preds) == metrics["eval_questions"]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_000004", "step_000006"]  # retention: newest 2
    assert (ckpts[-1] / "adapter_model.safetensors").exists()  # LoRA: adapter only
    assert not (ckpts[-1] / "model.safetensors").exists()
    assert "step 2 " in capsys.readouterr().out  # progress line per evaluation


def test_seeded_tiny_run_is_reproducible_and_the_seed_matters(tiny_model_dir, tmp_path):
    """Same seed, same run (data order, initialization of the fresh head, dropout); another
    seed, another run."""
    cfg = trial_dict(
        tiny_model_dir("bert"), tmp_path, train__max_steps=3, train__save_checkpoints=False
    )
    a = train_loop_per_worker(cfg)
    b = train_loop_per_worker(cfg)
    c = train_loop_per_worker(dict(cfg, train={**cfg["train"], "seed": 7}))
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert abs(a["train_loss"] - c["train_loss"]) > 1e-4


@pytest.mark.slow  # over 30 s on 2 cores: in `pytest -m slow`, not the default suite
def test_two_workers_gloo_ray_train(tiny_model_dir, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, train__max_steps=4, train__eval_steps=2)
    cfg["resources"] = {"num_workers": 2}
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    try:
        result = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(name="two-workers", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    assert result.error is None
    m = result.metrics
    assert m["step"] == 4 and m["peak_memory_mb"] > 50
    # the reported scores are those of the predictions rank 0 saved with its checkpoint
    with result.checkpoint.as_directory() as d:
        predictions = json.loads((Path(d) / "predictions.json").read_text())
    _, evals = TASKS["extractive"].load_train_eval(TrialConfig.model_validate(cfg).data)
    official = official_scores(evals, predictions)
    assert (m["eval_f1"], m["eval_exact"]) == pytest.approx((official["f1"], official["exact"]))
    # 2 workers x batch 8 per step: one epoch of 104 windows is 7 steps, so 4 steps = 4/7 epoch
    assert m["epoch"] == pytest.approx(4 / 7, rel=1e-6)
    assert result.checkpoint is not None
    assert (tmp_path / "ray").exists()


@pytest.mark.parametrize("kind", ["bert", "albert", "llama"])
def test_model_dropout_sets_every_dropout_of_the_architecture(tiny_model_dir, kind):
    mcfg = ModelConfig(name_or_path=str(tiny_model_dir(kind)), dropout=0.25)
    model = build_model(mcfg, torch.device("cpu"))
    fields = {k: v for k, v in model.config.to_dict().items() if "dropout" in k}
    assert fields and all(v in (0.25, None) for v in fields.values()), fields
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(m.p == 0.25 for m in layers)
    if kind != "llama":  # Llama's only dropout is the attention probability in its config
        assert layers


def test_zero_dropout_makes_training_forward_deterministic(tiny_model_dir):
    path = str(tiny_model_dir("bert"))
    x = torch.arange(1, 17).reshape(2, 8)
    outs = {}
    for dropout in (None, 0.0):
        model = build_model(ModelConfig(name_or_path=path, dropout=dropout), torch.device("cpu"))
        model.train()
        a, b = (model(input_ids=x).start_logits for _ in range(2))
        outs[dropout] = torch.equal(a, b)
    assert outs == {None: False, 0.0: True}


@pytest.mark.parametrize("kind", ["albert", "bert", "llama"])
def test_4bit_layers_evaluate_and_keep_training_on_the_avx512_bf16_path(
    tiny_model_dir, tmp_path, monkeypatch, kind
):
    """bitsandbytes repacks a 4-bit weight in place on CPUs with AVX512-BF16 when a layer runs
    in eval mode without grad. The path is forced here, so the test takes it on every CPU: an
    evaluation must compute what training computes, leave the weights as they were, and the
    adapters must still get gradients afterwards."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    cfg = TrialConfig.model_validate(trial_dict(tiny_model_dir(kind), tmp_path))
    mcfg = ModelConfig(
        name_or_path=cfg.model.name_or_path, finetune="lora", quantization_bits=4, dropout=0.0
    )
    tok = build_tokenizer(mcfg)
    train, _ = load_train_eval(cfg.data)
    feats = extractive.train_features(train[:8], tok, cfg.data)
    batch = extractive.collator(tok)([feats[i] for i in range(8)])
    inputs = {k: v for k, v in batch.items() if not k.endswith("_positions")}
    model = build_model(mcfg, torch.device("cpu"))
    kbit = {n: p for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
    before = {n: p.data.clone() for n, p in kbit.items()}

    model.eval()
    with torch.no_grad():
        evaluated = model(**inputs).start_logits
    assert all(torch.equal(p.data, before[n]) for n, p in kbit.items())  # not repacked
    model.train()
    out = model(**batch)
    torch.testing.assert_close(out.start_logits, evaluated)  # same maths in both modes
    out.loss.backward()
    # lora_B starts at zero, so lora_A gets no gradient at the first step; lora_B of every
    # adapted layer does, through the 4-bit layers above it.
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_4bit_trial_with_evaluations_mid_training_on_the_avx512_bf16_path(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The real loop, evaluating every 2 steps, on the forced AVX512-BF16 path: it runs to the
    end and gives the same losses and scores as the path every CPU takes."""
    import bitsandbytes.nn.modules as bnb_modules

    cfg = trial_dict(
        tiny_model_dir("albert"), tmp_path, train__max_steps=4, train__eval_steps=2,
        train__save_checkpoints=False,
    )  # fmt: skip
    cfg["model"].update(finetune="lora", quantization_bits=4)
    plain = train_loop_per_worker(cfg)
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    forced = train_loop_per_worker(cfg)
    for key in ("train_loss", "eval_f1", "eval_exact"):
        assert forced[key] == pytest.approx(plain[key], rel=1e-6), key
