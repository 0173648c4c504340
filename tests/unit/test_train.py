import pytest

from qa_ray.config import TrainConfig
from qa_ray.train import lr_factor


def test_warmup_then_linear_decay_to_zero():
    cfg = TrainConfig(warmup_steps=4)
    h = {"total": 14}
    assert [round(lr_factor(s, cfg, h), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_factor(4, cfg, h) == 1.0
    assert lr_factor(9, cfg, h) == pytest.approx(0.5)
    assert lr_factor(14, cfg, h) == 0.0 and lr_factor(20, cfg, h) == 0.0


def test_cosine_and_constant_and_replanned_horizon():
    cos = TrainConfig(lr_scheduler="cosine", warmup_ratio=0.0)
    assert lr_factor(5, cos, {"total": 10}) == pytest.approx(0.5)
    const = TrainConfig(lr_scheduler="constant_with_warmup", warmup_steps=2)
    assert lr_factor(50, const, {"total": 10}) == 1.0
    # a time budget shortens the horizon mid-run: the same step is later in the schedule
    lin = TrainConfig()
    h = {"total": 100}
    before = lr_factor(40, lin, h)
    h["total"] = 50
    assert lr_factor(40, lin, h) < before
