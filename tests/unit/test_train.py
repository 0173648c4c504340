import pytest
import torch

from qa_ray.config import TrainConfig, TrialConfig
from qa_ray.train import Precision, ResumableSampler, TimeBudget, lr_factor, resolve_precision


def test_warmup_then_linear_decay_to_zero():
    cfg = TrainConfig(warmup_steps=4)
    assert [round(lr_factor(s, cfg, 14), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_factor(4, cfg, 14) == 1.0
    assert lr_factor(9, cfg, 14) == pytest.approx(0.5)
    assert lr_factor(14, cfg, 14) == 0.0 and lr_factor(20, cfg, 14) == 0.0


def test_cosine_and_constant_and_replanned_horizon():
    cos = TrainConfig(lr_scheduler="cosine", warmup_ratio=0.0)
    assert lr_factor(5, cos, 10) == pytest.approx(0.5)
    const = TrainConfig(lr_scheduler="constant_with_warmup", warmup_steps=2)
    assert lr_factor(50, const, 10) == 1.0
    # a time budget shortens the horizon mid-run: the same step is later in the schedule
    lin = TrainConfig()
    assert lr_factor(40, lin, 50) < lr_factor(40, lin, 100)


def test_time_budget_replans_from_the_running_step_time_and_resumes_its_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("qa_ray.train.time.perf_counter", lambda: now[0])
    budget = TimeBudget(seconds=60.0, planned_steps=1000)
    budget.start()
    now[0] += 6.0  # 3 steps of 2 s
    budget.replan(3)
    assert budget.horizon == 30 and not budget.expired()
    state = budget.state_dict()
    resumed = TimeBudget(seconds=60.0, planned_steps=1000)
    resumed.load_state_dict(state)
    now[0] += 1000.0  # a restart takes a while: not counted
    resumed.start()
    now[0] += 54.0
    assert resumed.elapsed() == pytest.approx(60.0) and resumed.expired()
    assert resumed.horizon == 30
    unbudgeted = TimeBudget(seconds=None, planned_steps=7)
    unbudgeted.replan(5)
    assert unbudgeted.horizon == 7 and not unbudgeted.expired()


def test_the_sampler_follows_train_seed_and_skips_where_a_resumed_trial_left_off():
    data = list(range(40))
    order = {s: list(ResumableSampler(data, num_replicas=1, rank=0, seed=s)) for s in (1, 2)}
    assert order[1] != order[2] and sorted(order[1]) == data
    again = ResumableSampler(data, num_replicas=1, rank=0, seed=1)
    assert list(again) == order[1]
    again.skip = 15
    assert list(again) == order[1][15:]
    assert list(again) == order[1]  # the skip applies once
    ranks = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == data


def _trial(bits=32, finetune="full", precision="auto") -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"name_or_path": "m", "quantization_bits": bits, "finetune": finetune},
            "data": {"path": "d.json"},
            "train": {"precision": precision},
        }
    )


@pytest.mark.parametrize(
    "bits, finetune, precision, bf16_ok, want",
    [
        (32, "full", "auto", True, torch.bfloat16),
        (32, "full", "auto", False, torch.float16),
        (32, "full", "fp32", True, None),
        (16, "full", "auto", True, torch.bfloat16),
        (4, "lora", "fp16", True, torch.float16),
        (4, "lora", "bf16", True, torch.bfloat16),
    ],
)
def test_precision_on_gpu(monkeypatch, bits, finetune, precision, bf16_ok, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    p = resolve_precision(_trial(bits, finetune, precision), torch.device("cuda"))
    assert p == Precision("cuda", want)
    assert p.compute_dtype == (want or torch.float32)
    assert p.scales_loss == (want == torch.float16)  # GradScaler enabled only for fp16


@pytest.mark.parametrize("bits, want", [(32, None), (4, None), (8, None), (16, torch.bfloat16)])
def test_precision_on_cpu_autocasts_only_16_bit_trials(bits, want):
    finetune = "lora" if bits in (4, 8) else "full"
    p = resolve_precision(_trial(bits, finetune, "bf16"), torch.device("cpu"))
    assert p.dtype == want and not p.scaler().is_enabled()


def test_16_bit_weights_with_fp32_precision_is_a_validation_error():
    with pytest.raises(ValueError, match="precision fp32 cannot hold"):
        _trial(16, "lora", "fp32")


# ---- knowledge distillation ------------------------------------------------------------------


def test_distillation_loss_is_the_softened_kl_by_hand():
    import math

    from qa_ray.train import distillation_loss

    s = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 2.0

    def kl(p_logits, q_logits):  # KL(p || q) of softmax(x / T), by hand
        p = [math.exp(x / T) for x in p_logits]
        q = [math.exp(x / T) for x in q_logits]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    rows = [kl(t[i].tolist(), s[i].tolist()) for i in range(2)]
    want = T**2 * sum(rows) / 2  # batchmean over rows
    assert distillation_loss([s], [t], T).item() == pytest.approx(want, rel=1e-6)
    # two pairs (start, end): their mean
    both = distillation_loss([s, s], [t, s], T).item()
    assert both == pytest.approx(want / 2, rel=1e-6)
    assert distillation_loss([t], [t], T).item() == pytest.approx(0.0, abs=1e-7)


def test_a_distilled_trial_trains_the_student_and_never_the_teacher(tiny_model_dir, tmp_path):
    from qa_ray.config import TrialConfig
    from qa_ray.train import setup, train
    from tests.helpers import RecordingSession, param_checksum, trial_dict

    teacher = str(tiny_model_dir("bert"))
    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, train__max_steps=3,
                     data__max_eval_examples=4)  # fmt: skip
    cfg["train"]["distill"] = {"teacher": teacher, "alpha": 0.7, "temperature": 2.0}
    trial, meters = setup(TrialConfig.model_validate(cfg), RecordingSession())
    assert trial.teacher is not None and not trial.teacher.training
    assert not any(p.requires_grad for p in trial.teacher.parameters())
    before_teacher, before_student = param_checksum(trial.teacher), param_checksum(trial.model)
    out = train(trial, meters)
    assert out["step"] == 3
    assert param_checksum(trial.teacher) == before_teacher
    assert all(p.grad is None for p in trial.teacher.parameters())
    assert param_checksum(trial.model) != before_student


def test_a_smaller_student_learns_from_the_whole_teacher(tiny_model_dir, tmp_path):
    """The student keeps 1 of 2 layers and prunes heads: the teacher keeps all of its own."""
    from qa_ray.config import TrialConfig
    from qa_ray.train import setup
    from tests.helpers import RecordingSession, trial_dict

    teacher = tiny_model_dir("bert")
    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, model__keep_layers=1,
                     model__prune={"heads": 0.5, "batches": 1})  # fmt: skip
    cfg["train"]["distill"] = {"teacher": str(teacher)}
    trial, _ = setup(TrialConfig.model_validate(cfg), RecordingSession())
    assert len(trial.unwrapped.bert.encoder.layer) == 1
    assert len(trial.teacher.bert.encoder.layer) == 2
    assert trial.teacher.bert.encoder.layer[0].attention.self.query.out_features == 64


def test_a_teacher_with_another_vocabulary_is_refused(tiny_model_dir, tmp_path):
    from qa_ray.config import TrialConfig
    from qa_ray.train import setup
    from tests.helpers import RecordingSession, trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path)
    cfg["train"]["distill"] = {"teacher": str(tiny_model_dir("llama", causal=True))}
    with pytest.raises(ValueError, match="another vocabulary"):
        setup(TrialConfig.model_validate(cfg), RecordingSession())
