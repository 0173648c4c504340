"""Distillation: the loss by hand, the teacher frozen, a smaller student, a mismatched vocabulary."""

import pytest
import torch

from qa_ray.config.trial import TrialConfig
from qa_ray.errors import ConfigError

# ---- knowledge distillation ------------------------------------------------------------------


def test_distillation_loss_is_the_softened_kl_by_hand():
    import math

    from qa_ray.training.distill import distillation_loss

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
    from qa_ray.training.loop import setup, train
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


@pytest.mark.parametrize(("bits", "teacher_dtype"), [(16, torch.bfloat16), (32, torch.float32)])
def test_the_teacher_is_built_in_the_students_precision(tiny_model_dir, tmp_path, bits,
                                                        teacher_dtype):  # fmt: skip
    """A 16-bit full fine-tune autocasts (bf16 on CPU): its teacher's weights are all bf16,
    the student's trained weights stay fp32 masters; a 32-bit student's teacher is fp32."""
    from qa_ray.config.trial import TrialConfig
    from qa_ray.training.loop import setup
    from tests.helpers import RecordingSession, trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path, data__max_eval_examples=4)
    cfg["model"].update(finetune="full", quantization_bits=bits)
    cfg["train"]["distill"] = {"teacher": str(tiny_model_dir("bert"))}
    trial, _ = setup(TrialConfig.model_validate(cfg), RecordingSession())
    assert trial.teacher is not None
    assert {p.dtype for p in trial.teacher.parameters()} == {teacher_dtype}
    assert {p.dtype for p in trial.model.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in trial.teacher.parameters())


def test_a_smaller_student_learns_from_the_whole_teacher(tiny_model_dir, tmp_path):
    """The student keeps 1 of 2 layers and prunes heads: the teacher keeps all of its own."""
    from qa_ray.training.loop import setup
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
    from qa_ray.training.loop import setup
    from tests.helpers import RecordingSession, trial_dict

    cfg = trial_dict(tiny_model_dir("bert"), tmp_path)
    cfg["train"]["distill"] = {"teacher": str(tiny_model_dir("llama", causal=True))}
    with pytest.raises(ValueError, match="another vocabulary"):
        setup(TrialConfig.model_validate(cfg), RecordingSession())


def test_a_teacher_in_a_bucket_is_fetched_where_the_trial_runs(
    tiny_model_dir, tmp_path, s3_bucket, monkeypatch
):
    """A teacher named by its bucket URI (a trial checkpoint of a sweep stored in S3) passes
    validation there and is downloaded once into the local cache the trial builds it from."""
    from qa_ray import storage
    from qa_ray.config.paths import check_local_paths
    from qa_ray.config.trial import TrialConfig
    from qa_ray.training.loop import setup
    from tests.helpers import RecordingSession, trial_dict

    folder = tiny_model_dir("bert")
    uri = f"s3://{s3_bucket}/sweeps/teacher/checkpoint_000002"
    for f in folder.rglob("*"):
        if f.is_file():
            storage.write_bytes(f"{uri}/{f.relative_to(folder)}", f.read_bytes())
    monkeypatch.setenv("QA_RAY_CACHE_DIR", str(tmp_path / "cache-here"))
    cfg = trial_dict(folder, tmp_path, data__max_eval_examples=4)
    cfg["train"]["distill"] = {"teacher": uri}
    trial_cfg = TrialConfig.model_validate(cfg)
    check_local_paths(trial_cfg, "trial.yaml")  # a URI that is there passes
    trial, _ = setup(trial_cfg, RecordingSession())
    assert trial.teacher is not None
    assert len(list((tmp_path / "cache-here" / "remote").iterdir())) == 1
    missing = TrialConfig.model_validate(
        {**cfg, "train": {**cfg["train"], "distill": {"teacher": f"s3://{s3_bucket}/none"}}}
    )
    with pytest.raises(ConfigError, match="`train.distill.teacher`: no such model folder"):
        check_local_paths(missing, "trial.yaml")
