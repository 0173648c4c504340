"""Which precision a trial trains in, on GPU and CPU."""

import pytest
import torch

from qa_ray.config.trial import TrialConfig
from qa_ray.training.precision import Precision, resolve_precision


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
