"""`qa-ray plan`: the space's memory corners and a sample, predicted, against device sizes
and the sweep's budgets."""

from __future__ import annotations

import yaml

from qa_ray.cli import main
from qa_ray.search.memory import MemoryModel
from qa_ray.sweep.config import load_sweep_config
from qa_ray.sweep.memory_plan import format_plan, plan_memory
from tests.helpers import ASSETS


def _sweep(tmp_path, model, constraints=()):
    data = {
        "name": "plan",
        "model": {"name_or_path": str(model)},
        "data": {"path": str(ASSETS / "squad_v1_tiny.json"), "max_seq_length": 384},
        "train": {"max_steps": 2, "precision": "fp32"},
        "search": {
            "num_samples": 4,
            "space": {
                "params": {
                    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                    "per_device_batch_size": {"type": "categorical", "choices": [4, 16, 64]},
                    "finetune": {"type": "categorical", "choices": ["full", "lora"]},
                    "lora_r": {"type": "int", "low": 4, "high": 64, "log": True},
                }
            },
        },
        "constraints": list(constraints),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_plan_predicts_every_corner_once_and_counts_fits(tiny_model_dir, tmp_path):
    cfg = load_sweep_config(_sweep(tmp_path, tiny_model_dir("bert")))
    plan = plan_memory(cfg, (1500.0, 80000.0), samples=16)
    corners = [c for c in plan.configs if c.kind == "corner"]
    # batch {4, 64} x finetune {full, lora} x rank {4, 64}; a full fine-tune has no rank
    assert len(corners) == 2 + 4
    by_batch = {
        c.params["per_device_batch_size"]: c.prediction.peak_mb
        for c in corners
        if c.params["finetune"] == "full"
    }
    assert by_batch[4] < by_batch[64]
    assert all(c.kind == "sample" for c in plan.configs[len(corners) :])
    text = format_plan(plan)
    for size in (1500.0, 80000.0):
        verdicts = [c.prediction.fits(size) for c in plan.configs]
        assert (
            f"GPU {size:.0f} MB: {verdicts.count(True)} fit, {verdicts.count(None)} uncertain, "
            f"{verdicts.count(False)} over;" in text
        )
    smallest = min((c.prediction for c in plan.configs), key=lambda p: p.peak_mb + 2 * p.sd_mb)
    assert f"max {int(80000 // (smallest.peak_mb + 2 * smallest.sd_mb))}" in text


def test_the_plan_names_the_sweep_budgets(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    cfg = load_sweep_config(_sweep(tmp_path, model, ["peak_memory_mb <= 900"]))
    plan = plan_memory(cfg, (24000.0,), samples=4, model=MemoryModel("cuda"))
    assert plan.budgets == (900.0,)
    verdicts = [c.prediction.fits(900.0) for c in plan.configs]
    assert (
        f"budget peak_memory_mb <= 900: {verdicts.count(True)} fit, {verdicts.count(None)} "
        f"uncertain, {verdicts.count(False)} over"
    ) in format_plan(plan)


def test_qa_ray_plan_prints_the_plan_and_exits_2_on_a_model_it_cannot_read(
    tiny_model_dir, tmp_path, capsys
):
    path = _sweep(tmp_path, tiny_model_dir("bert"))
    assert main(["plan", str(path), "--gpu-memory", "24000,48000", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "GPU 24000 MB:" in out and "GPU 48000 MB:" in out and "corner" in out
    assert main(["plan", str(path), f"model.name_or_path={ASSETS / 'wordpiece'}"]) == 2
    assert "no config.json there" in capsys.readouterr().err
