"""Mixed precision: which dtype a trial computes in, its autocast context and gradient scaler.

On CPU the loop trains in fp32 (no autocast) and says so in one log line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from qa_ray.config.trial import TrialConfig

    pass

__all__ = ["Precision"]

logger = logging.getLogger(__name__)


# ---- precision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Autocast dtype and loss scaling of a trial; trained parameters always stay fp32.

    On GPU, ``train.precision`` picks the autocast dtype (``auto``: bf16 where supported). On
    CPU only 16-bit trials autocast (bf16: their frozen weights are bf16); the rest compute fp32.
    fp16 scales the loss (``GradScaler``); the scaler is a no-op otherwise.
    """

    device_type: str
    dtype: torch.dtype | None  # None: no autocast, fp32 compute

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """What k-bit layers compute in, and the dtype of frozen non-quantized weights."""
        return self.dtype or torch.float32

    @property
    def scales_loss(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.dtype == torch.float16

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_loss)


def resolve_precision(cfg: TrialConfig, device: torch.device) -> Precision:
    """The trial's :class:`Precision` on ``device`` (see its docstring for the rules)."""
    bits, asked = cfg.model.quantization_bits, cfg.train.precision
    if device.type != "cuda":
        return Precision(device.type, torch.bfloat16 if bits == 16 else None)
    if asked == "fp32":
        return Precision("cuda", None)
    if asked == "fp16" or (asked == "auto" and not torch.cuda.is_bf16_supported()):
        return Precision("cuda", torch.float16)
    return Precision("cuda", torch.bfloat16)
