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
    if task != "instruction":  # QA: each question's scores, paired comparisons need them
        scored = final["per_question"]
        assert len(scored["ids"]) == len(scored["f1"]) == len(scored["exact"]) == 2
        assert 100 * sum(scored["f1"]) / 2 == pytest.approx(final["eval_f1"], abs=0.01)
        assert 100 * sum(scored["exact"]) / 2 == pytest.approx(final["eval_exact"])
    assert final["trainable_params"] <= final["total_params"]
    if finetune == "lora":
        assert final["trainable_params"] < final["total_params"] / 3


# (task, architecture): every family, on a span head of each kind (encoder, decoder, LSTM).
EVAL_BATCH_VARIANTS = [
    ("extractive", "bert"),
    ("extractive", "llama"),
    # The BiLSTM trains its own embeddings: about 80 s on 2 cores (pytest -m slow).
    pytest.param("extractive", "bilstm_attention", marks=pytest.mark.slow),
    ("generative", "llama"),
    ("seq2seq", "t5"),
    ("instruction", "llama"),
]


@pytest.mark.parametrize("task, kind", EVAL_BATCH_VARIANTS)
def test_scores_do_not_depend_on_eval_batch_size(tiny_model_dir, tmp_path, task, kind):
    """Same configuration, same seed: the same scores and answers whatever the
    eval_batch_size (1, 3, 16 over 10 questions: batches of mixed window lengths), and for the
    span heads the same logits per window, within float tolerance."""
    import torch

    from qa_ray.config.trial import TrialConfig
    from qa_ray.tasks import extractive
    from qa_ray.training.loop import setup

    over: dict = {"model__task": task, "data__max_eval_examples": 10, "data__max_answer_length": 4}
    if kind == "bilstm_attention":
        over.update(model__architecture=kind, model__lstm={"hidden_size": 16, "embedding_dim": 16})
        kind = "bert"  # its tokenizer and vocabulary
    if task == "instruction":
        over.update(data__path=str(ASSETS / "alpaca_tiny.json"), data__max_seq_length=160)
    else:
        over["data__path"] = str(ASSETS / "squad_v2_tiny.json")  # the no-answer path too
    causal = task in ("generative", "instruction")
    cfg = trial_dict(tiny_model_dir(kind, causal=causal), tmp_path, **over)
    trial, _ = setup(TrialConfig.model_validate(cfg), RecordingSession())
    model = trial.unwrapped

    def evaluate(batch_size: int):
        return trial.task.evaluate(model, trial.eval_examples, trial.eval_features,
                                   trial.tokenizer, trial.cfg.data, trial.session.device,
                                   batch_size, trial.precision.autocast)  # fmt: skip

    outs = {b: evaluate(b) for b in (1, 3, 16)}
    for b, out in outs.items():
        assert out.predictions == outs[1].predictions, b
        assert out.scores == pytest.approx(outs[1].scores, rel=1e-5, abs=1e-6), b
    if task != "extractive":
        return
    inputs = trial.eval_features.select_columns(
        [c for c in ("input_ids", "attention_mask", "token_type_ids")
         if c in trial.eval_features.column_names]
    )  # fmt: skip
    collate = extractive.collator(trial.tokenizer)
    rows = [inputs[i] for i in range(len(inputs))]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding does happen

    model.eval()  # (evaluate put it back in training mode: dropout)

    def logits(batch_size: int) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for b in range(0, len(rows), batch_size):
                batch = collate(rows[b : b + batch_size])
                o = model(**batch)
                for j, n in enumerate(batch["attention_mask"].sum(1).tolist()):
                    out.append(torch.stack([o.start_logits[j, :n], o.end_logits[j, :n]]))
        return out

    one = logits(1)
    for b in (3, 16):
        for w, (x, y) in enumerate(zip(logits(b), one, strict=True)):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=f"batch {b} window {w}")
