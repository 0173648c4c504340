"""The CUDA branches of the loop, on a real GPU (skipped without one): autocast and master
weights, the fp16 loss scaler, CUDA peak memory, a 4-bit LoRA trial, an NCCL process group.

    .venv/bin/python -m pytest -m gpu -q      # on a machine with a CUDA GPU
"""

from __future__ import annotations

import os

import torch

from qa_ray import metrics as m
from qa_ray.config.trial import TrialConfig
from qa_ray.training.loop import setup, train, train_loop_per_worker
from qa_ray.training.memory import CONTEXT_SOURCES
from qa_ray.training.precision import resolve_precision
from tests.helpers import RecordingSession, requires_cuda, trial_dict


def _cfg(tiny_model_dir, tmp_path, kind="bert", **over):
    return trial_dict(
        tiny_model_dir(kind), tmp_path,
        **{"train__max_steps": 3, "data__max_eval_examples": 8, "train__device": "cuda", **over},
    )  # fmt: skip


@requires_cuda
def test_16_bit_full_fine_tune_autocasts_with_fp32_master_weights(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, model__quantization_bits=16)
    session = RecordingSession(device="cuda")
    trial, meters = setup(TrialConfig.model_validate(cfg), session)
    assert trial.precision.dtype in (torch.bfloat16, torch.float16)
    trained = [p for p in trial.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and p.is_cuda for p in trained)
    before = [p.detach().clone() for p in trained]
    out = train(trial, meters)
    assert out[m.STEP] == 3 and torch.isfinite(torch.tensor(out[m.TRAIN_LOSS]))
    moved = sum(int(not torch.equal(a, b)) for a, b in zip(before, trained, strict=True))
    assert moved >= 0.9 * len(trained)


@requires_cuda
def test_fp16_uses_the_loss_scaler(tiny_model_dir, tmp_path):
    cfg = TrialConfig.model_validate(_cfg(tiny_model_dir, tmp_path, train__precision="fp16"))
    precision = resolve_precision(cfg, torch.device("cuda"))
    assert precision.dtype == torch.float16 and precision.scaler().is_enabled()
    session = RecordingSession(device="cuda")
    out = train_loop_per_worker(cfg.model_dump(), session)
    assert out[m.STEP] == 3 and out[m.TRAIN_LOSS] == out[m.TRAIN_LOSS]  # not NaN


@requires_cuda
def test_peak_memory_is_the_reserve_plus_the_context(tiny_model_dir, tmp_path):
    session = RecordingSession(device="cuda")
    out = train_loop_per_worker(_cfg(tiny_model_dir, tmp_path), session)
    # peak_memory_mb: the allocator's reserve at its peak plus what the process holds outside
    # it (the CUDA context, read as memory_context_source says); the tensors' own peak beside
    assert out[m.MEMORY_CONTEXT_SOURCE] in CONTEXT_SOURCES
    assert 0 < out[m.MODEL_FOOTPRINT_MB] <= out[m.PEAK_ALLOCATED_MB] < out[m.PEAK_MEMORY_MB]


@requires_cuda
def test_a_4_bit_lora_trial_trains_on_the_gpu(tiny_model_dir, tmp_path):
    cfg = _cfg(
        tiny_model_dir, tmp_path, "llama", model__finetune="lora", model__quantization_bits=4
    )
    session = RecordingSession(device="cuda")
    out = train_loop_per_worker(cfg, session)
    assert out[m.STEP] == 3 and out[m.TRAINABLE_PARAMS] < out[m.TOTAL_PARAMS]
    linear4 = [type(mod).__name__ for mod in session.model.modules()]
    assert "Linear4bit" in linear4


@requires_cuda
def test_collectives_of_an_nccl_group_run_on_the_gpu(tmp_path):
    """A one-rank NCCL group (one GPU): the loop's reductions go on CUDA tensors."""
    import torch.distributed as dist

    from qa_ray.training import loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        assert loop.collective_device(torch.device("cuda:0")).type == "cuda"
        session = RecordingSession(device="cuda:0")
        session.world_size = 1
        assert loop.reduce_values([3.0], dist.ReduceOp.MAX, session) == [3.0]
        t = torch.tensor([1.0, 2.0], device="cuda:0")
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 2.0]
    finally:
        dist.destroy_process_group()
