"""Knowledge distillation: the teacher (built as its folder holds it, frozen, in eval mode) and
the loss that mixes the task loss with the teacher's softened logits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qa_ray import storage
from qa_ray.models.build import build_model

if TYPE_CHECKING:
    from qa_ray.config.trial import TrialConfig
    from qa_ray.tasks import Tokenizer
    from qa_ray.training.precision import Precision

__all__ = ["distillation_loss"]

logger = logging.getLogger(__name__)


def build_teacher(
    cfg: TrialConfig, tokenizer: Tokenizer, device: torch.device, precision: Precision
) -> torch.nn.Module:
    """The distillation teacher: the model at ``train.distill.teacher`` for the same task, in
    the student's precision (16-bit weights when the student autocasts), frozen, in eval mode.
    It lives in the trial's process, so its memory counts in the trial's peak.

    Raises:
        ValueError: the teacher's tokenizer is not the student's (their logits would not
            line up), or the folder is a LoRA adapter (merge it into its base model first).
    """
    from transformers import AutoTokenizer

    assert cfg.train.distill is not None
    # A teacher in a bucket (a trial of a sweep stored there) is fetched to this machine once.
    path = storage.fetch_folder(cfg.train.distill.teacher)
    if (Path(path) / "adapter_config.json").is_file():
        raise ValueError(
            f"`train.distill.teacher` = {path!r} is a LoRA adapter: distill from a full model "
            "folder (merge the adapter into its base model, peft's merge_and_unload)"
        )
    if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"`train.distill.teacher` = {path!r} has another vocabulary than "
            f"`model.name_or_path` = {cfg.model.name_or_path!r}: their logits do not line up"
        )
    bits = 16 if precision.dtype is not None else 32
    # The teacher as its folder holds it: none of the student's own shaping (fewer layers,
    # pruned heads) or training settings.
    teacher_cfg = cfg.model.model_copy(
        update={
            "name_or_path": path,
            "finetune": "full",
            "quantization_bits": bits,
            "keep_layers": None,
            "prune": None,
            "gradient_checkpointing": False,
        }
    )
    teacher = build_model(teacher_cfg, device, precision.compute_dtype, frozen=True)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per row of each pair of
    logits (the distribution is over the last dimension), averaged over rows, then over pairs
    (``T^2`` keeps the gradient's scale independent of ``T``, Hinton et al. 2015)."""
    f = torch.nn.functional
    terms = [
        f.kl_div(
            f.log_softmax(s.float() / temperature, dim=-1),
            f.log_softmax(t.float() / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(terms).mean() * temperature**2
