"""The task-family contract (``qa_ray.tasks.TaskFamily``), checked over the registry: every
family defines every member, and every family x architecture x fine-tune x bit width learns
through the real training loop (gradient accumulation, clipping, warmup and decay), on tiny
random-init models (CPU, no hub)."""

from __future__ import annotations

import inspect
import math

import pytest

from qa_ray.tasks import FACTS, TASKS, TaskFamily
from qa_ray.training.loop import train_loop_per_worker
from tests.helpers import ASSETS, RecordingSession, trial_dict

pytestmark = pytest.mark.integration

_MEMBERS = sorted(set(TaskFamily.__annotations__) | {
    n for n, v in vars(TaskFamily).items() if callable(v) and not n.startswith("_")
})  # fmt: skip


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_family_defines_every_member_of_the_contract(name):
    family = TASKS[name]
    for member in _MEMBERS:
        assert hasattr(family, member), f"{name} lacks {member}"
    for member, proto in vars(TaskFamily).items():
        if callable(proto) and not member.startswith("_"):
            want = list(inspect.signature(proto).parameters)[1:]  # without self
            got = list(inspect.signature(getattr(family, member)).parameters)
            assert got[: len(want)] == want, f"{name}.{member}{got} vs {want}"
    assert isinstance(family.FRESH_HEADS, tuple)
    assert isinstance(family.QUALITATIVE_QUESTIONS, tuple)
    # What the driver reads without importing the family is what the family uses.
    facts = FACTS[name]
    assert facts.scores == family.SCORES
    assert facts.qualitative_questions == family.QUALITATIVE_QUESTIONS
    assert family.load_train_eval is facts.load_train_eval


# (task, architecture, finetune, bits): the offline tiny-model matrix.
VARIANTS = [
    *[("extractive", k, f, b) for k in ("bert", "albert", "llama")
      for f, b in (("full", 32), ("lora", 32), ("lora", 8), ("lora", 4))],
    *[("generative", k, f, b) for k in ("llama", "falcon", "bloom", "gpt2", "mamba")
      for f, b in (("full", 32), ("lora", 32), ("lora", 8), ("lora", 4))],
    *[("seq2seq", "t5", f, b) for f, b in (("full", 32), ("lora", 32), ("lora", 8), ("lora", 4))],
    ("instruction", "llama", "lora", 4),
    ("instruction", "falcon", "lora", 4),
    ("instruction", "bloom", "lora", 8),
    ("instruction", "llama", "full", 16),
]  # fmt: skip


@pytest.mark.parametrize("task, kind, finetune, bits", VARIANTS)
def test_the_real_loop_learns(tiny_model_dir, tmp_path, task, kind, finetune, bits):
    """10 optimizer steps of 2 accumulated micro-batches of 8 over 16 training examples (each
    step sees about all of them), linear schedule with one warmup step, gradients clipped at 1:
    the step loss goes down."""
    over = {
        "model__task": task,
        "model__finetune": finetune,
        "model__quantization_bits": bits,
        "model__dropout": 0.0,
        "data__max_train_examples": 16,
        "data__max_eval_examples": 2,
        "data__max_answer_length": 3,
        "train__max_steps": 10,
        "train__per_device_batch_size": 8,
        "train__gradient_accumulation_steps": 2,
        "train__warmup_steps": 1,
        "train__learning_rate": 5e-2 if finetune == "lora" else 1e-2,
        "train__max_grad_norm": 1.0,
        "train__checkpoint_steps": 1,  # a report (with its train loss) after every step
    }
    if task == "extractive":
        over["data__drop_windows_missing_answer"] = True  # ~1 window per example
    if task == "instruction":
        over.update(data__path=str(ASSETS / "alpaca_tiny.json"), data__max_seq_length=160)
    causal = task in ("generative", "instruction")
    cfg = trial_dict(tiny_model_dir(kind, causal=causal), tmp_path, **over)
    session = RecordingSession()
    final = train_loop_per_worker(cfg, session)

    losses = session.losses()
    assert [r["step"] for r in session.reports] == list(range(1, 11))
    assert all(math.isfinite(v) for v in losses), losses
    late = sum(losses[-3:]) / 3
    if finetune == "full":
        assert late < losses[0] * 0.9, losses
    else:  # adapters on the attention only (a random LM head frozen) move the loss less
        assert late < losses[0] - 0.05, losses
    assert final["step"] == 10 and final["lr"] == 0.0  # the schedule decayed to its end
    assert final["trainable_params"] <= final["total_params"]
    if finetune == "lora":
        assert final["trainable_params"] < final["total_params"] / 3
