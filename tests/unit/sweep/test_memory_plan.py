"""`qa-ray plan`: the space's memory corners and a sample, predicted, against device sizes
and the sweep's budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qa_ray.cli import main
from qa_ray.search.memory import MemoryModel
from qa_ray.sweep.config import load_sweep_config
from qa_ray.sweep.memory_plan import format_plan, plan_memory
from tests.helpers import ASSETS
from tests.hf_cache import MINILM_L6, use_hf_cache


def _sweep(tmp_path, model, constraints=(), gpus=0):
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
        "resources": {"gpus_per_worker": gpus},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_plan_predicts_every_corner_once_and_counts_fits(tiny_model_dir, tmp_path):
    cfg = load_sweep_config(_sweep(tmp_path, tiny_model_dir("bert"), gpus=1))
    plan = plan_memory(cfg, (1500.0, 80000.0), samples=16)
    corners = [c for c in plan.configs if c.kind == "corner"]
    # batch {4, 16, 64} x finetune {full, lora} x rank {4, 64}; a full fine-tune has no rank
    assert len(corners) == 3 + 6
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
    path = _sweep(tmp_path, tiny_model_dir("bert"), gpus=1)
    assert main(["plan", str(path), "--gpu-memory", "24000,48000", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "GPU 24000 MB:" in out and "GPU 48000 MB:" in out and "corner" in out
    assert main(["plan", str(path), f"model.name_or_path={ASSETS / 'wordpiece'}"]) == 2
    assert "no config.json there" in capsys.readouterr().err


# ---- the shipped sweeps, their hub models in a local Hugging Face cache ------------------------

ROOT = Path(__file__).resolve().parents[3]
# What `qa-ray plan` does with each shipped sweep: "planned" (exit 0), or exit 2 with a line
# that names why. A new sweep file fails the test until it is listed here.
SHIPPED_PLANS = {
    "albert_base_squad_v1_full_lora_f1_memory.yaml": "planned",
    "alpaca_qlora_llama3b_bloom3b_falcon1b_eval_loss_memory.yaml": "planned",
    "bert_base_squad_v1_1gpu_full_lora_int8_f1_memory.yaml": "planned",
    "bert_base_squad_v2_full_lora_f1_memory.yaml": "planned",
    "bert_base_squad_v2_pruned_f1_memory.yaml": "planned",
    "llama32_1b_qlora_extractive_squad_v1_f1_memory.yaml": "planned",
    "llama32_1b_qlora_generative_squad_v1_f1_memory.yaml": "planned",
    "quickstart.yaml": "planned",
    # its teacher is trained first (see the file's header): until then, a line saying where
    "bert_base_squad_v2_distilled_f1_memory.yaml": "models/bert-base-squad-v2-teacher",
    "lstm_attention_squad_v2_f1_memory.yaml": "planned",
    "mamba_130m_squad_v2_generative_f1_memory.yaml": "planned",
    "t5_base_squad_v2_full_lora_int8_qlora_f1_memory.yaml": "planned",
}


def test_every_shipped_sweep_is_listed():
    assert sorted(SHIPPED_PLANS) == sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(SHIPPED_PLANS))
def test_qa_ray_plan_on_a_shipped_sweep_reads_its_hub_models_from_the_cache(
    name, tmp_path, monkeypatch, capsys
):
    """With the hub models' config.json in a local Hugging Face cache and HF_HUB_OFFLINE=1,
    as a user who downloaded them would: every shipped sweep is planned, or says in one line
    why not."""
    use_hf_cache(monkeypatch, tmp_path / "hf")
    monkeypatch.chdir(ROOT)
    overrides = []
    if name == "quickstart.yaml":  # a local folder (scripts/stage_minilm.sh) and local data
        minilm = tmp_path / "all-MiniLM-L6-v2"
        minilm.mkdir()
        (minilm / "config.json").write_text(json.dumps(MINILM_L6))
        overrides = [f"model.name_or_path={minilm}", f"data.path={ASSETS / 'squad_v1_tiny.json'}"]
    code = main(["plan", f"sweeps/{name}", *overrides, "--samples", "8"])
    out, err = capsys.readouterr()
    if SHIPPED_PLANS[name] == "planned":
        assert code == 0, err
        assert "corner" in out and "not predicted" not in out
        if name == "quickstart.yaml":  # CPU trials: the peak RSS the loop measures there
            assert out.startswith("predicted peak memory (cpu: peak RSS") and "RAM 24000 MB:" in out
        else:
            assert (
                out.startswith("predicted peak memory (cuda: CUDA memory")
                and "GPU 24000 MB:" in out
            )
    else:
        assert code == 2 and SHIPPED_PLANS[name] in err, err
        assert "Traceback" not in err


def test_a_model_axis_plans_every_model_and_each_choice_of_bits(tmp_path, monkeypatch):
    """The Alpaca sweep's `model` axis: Llama-3.2-3B, BLOOM-3B and Falcon-RW-1B, each at 4, 8
    and 16 bits (the 8-bit choice was listed only when the random sample drew it)."""
    use_hf_cache(monkeypatch, tmp_path / "hf")
    monkeypatch.chdir(ROOT)
    cfg = load_sweep_config("sweeps/alpaca_qlora_llama3b_bloom3b_falcon1b_eval_loss_memory.yaml")
    plan = plan_memory(cfg, (24000.0,), samples=0)
    corners = {(c.params["model"], c.params["quantization_bits"]) for c in plan.configs}
    models = ("meta-llama/Llama-3.2-3B", "bigscience/bloom-3b", "tiiuae/falcon-rw-1b")
    assert corners == {(m, b) for m in models for b in (4, 8, 16)}
    assert plan.not_accounted == ()
    by = {(c.params["model"], c.params["quantization_bits"], c.params["per_device_batch_size"],
           c.params["lora_r"]): c.prediction.peak_mb for c in plan.configs}  # fmt: skip
    for m in models:  # more bits, more memory; never less with batch or rank
        assert by[m, 4, 8, 8] < by[m, 8, 8, 8] < by[m, 16, 8, 8]
        assert by[m, 16, 4, 8] <= by[m, 16, 8, 8] and by[m, 16, 8, 8] < by[m, 16, 8, 64]


def test_a_model_the_account_lacks_is_named_and_the_rest_planned(tiny_model_dir, tmp_path):
    other = tmp_path / "neox"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    path = _sweep(tmp_path, tiny_model_dir("bert"))
    sweep = yaml.safe_load(path.read_text())
    sweep["search"]["space"]["params"]["model"] = {
        "type": "categorical", "choices": [str(tiny_model_dir("bert")), str(other)]}  # fmt: skip
    path.write_text(yaml.safe_dump(sweep))
    plan = plan_memory(load_sweep_config(path), (24000.0,), samples=0)
    assert {c.params["model"] for c in plan.configs} == {str(tiny_model_dir("bert"))}
    text = format_plan(plan)
    assert text.count("not predicted (") == 1 and "model_type 'gpt_neox' is not one" in text


def test_every_choice_of_a_discrete_knob_is_a_corner(tiny_model_dir, tmp_path):
    """Bits 4/8/16/32, full and LoRA, each batch, each end of the rank: every combination is
    listed (4/8 bits are LoRA), whatever a sample draws; the fixed knobs head the plan."""
    path = _sweep(tmp_path, tiny_model_dir("bert"))
    sweep = yaml.safe_load(path.read_text())
    sweep["search"]["space"]["params"]["quantization_bits"] = {
        "type": "categorical", "choices": [4, 8, 16, 32]}  # fmt: skip
    sweep["train"]["precision"] = "bf16"
    path.write_text(yaml.safe_dump(sweep))
    plan = plan_memory(load_sweep_config(path), (24000.0,), samples=0)
    seen = {(c.params["quantization_bits"], c.params["finetune"], c.params.get("lora_r"),
             c.params["per_device_batch_size"]) for c in plan.configs}  # fmt: skip
    full = {(b, "full", None, n) for b in (16, 32) for n in (4, 16, 64)}
    lora = {(b, "lora", r, n) for b in (4, 8, 16, 32) for r in (4, 64) for n in (4, 16, 64)}
    assert seen == full | lora
    assert "  fixed: model " in format_plan(plan) and "sequence 384" in format_plan(plan)


def test_a_cpu_sweep_is_planned_as_cpu_memory(tiny_model_dir, tmp_path):
    """No GPU per trial: the trials measure the worker's peak RSS and compute in fp32, and the
    plan predicts that (it predicted CUDA memory for the CPU quickstart)."""
    from qa_ray.sweep.memory_plan import plan_device

    cfg = load_sweep_config(_sweep(tmp_path, tiny_model_dir("bert")))
    assert cfg.resources.gpus_per_worker == 0 and plan_device(cfg) == "cpu"
    plan = plan_memory(cfg, (24000.0,), samples=0)
    assert plan.device == "cpu" and "RAM 24000 MB" in format_plan(plan)
    gpu = cfg.model_copy(
        update={"resources": cfg.resources.model_copy(update={"gpus_per_worker": 1})}
    )
    assert plan_device(gpu) == "cuda"
    by_cpu = {tuple(sorted(c.params.items())): c.prediction.peak_mb for c in plan.configs}
    on_gpu = plan_memory(gpu, (24000.0,), samples=0)
    assert all(
        by_cpu[tuple(sorted(c.params.items()))] > c.prediction.peak_mb for c in on_gpu.configs
    )
