"""Checkpoints: weights (or LoRA adapters), optimizer, scheduler, scaler, RNG states and the
loop's position, written by rank 0 and read back on resume.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qa_ray.models.build import load_weights
from qa_ray.models.pruning import PLAN_FILE, PLAN_KEY
from qa_ray.training.trial import Meters, Trial

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)

TRAINING_STATE = "training_state.json"  # step, epoch, position, meters, budget (readable)
TRAINING_TENSORS = "training_state.pt"  # optimizer, scheduler, scaler, RNG states
CURVE_FILE = "curve.json"  # a point per report so far (step, time, the CURVES metrics)


# ---- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(
    trial: Trial,
    meters: Meters,
    metrics: dict[str, Any],
    predictions: dict[str, str] | None,
) -> str:
    """Writes a checkpoint to a new temporary folder (the caller reports, then removes it).

    It holds the model (adapter and trained heads only, for LoRA) and tokenizer as
    ``save_pretrained`` writes them, so it loads with ``from_pretrained`` /
    ``PeftModel.from_pretrained``; the trial config; the metrics and predictions of the report;
    and what resuming needs: optimizer, scheduler and scaler state, RNG states, the loop's
    meters and position, and the time budget.
    """
    path = tempfile.mkdtemp(prefix="qa-ray-ckpt-")
    trial.unwrapped.save_pretrained(path)
    trial.tokenizer.save_pretrained(path)
    files = {
        "trial_config.json": trial.cfg.model_dump(),
        # The pruned heads and units (a LoRA checkpoint has no base config.json to hold them).
        **({PLAN_FILE: plan} if (plan := getattr(trial.unwrapped.config, PLAN_KEY, None)) else {}),
        "metrics.json": metrics,
        CURVE_FILE: trial.curve,
        TRAINING_STATE: {"meters": asdict(meters), "budget": trial.budget.state_dict()},
    }
    if predictions is not None:
        files["predictions.json"] = predictions
    for name, payload in files.items():
        Path(path, name).write_text(json.dumps(payload, indent=2))
    torch.save(
        {
            "optimizer": trial.optimizer.state_dict(),
            "scheduler": trial.scheduler.state_dict(),
            "scaler": trial.scaler.state_dict(),
            "rng": _rng_state(),
        },
        Path(path, TRAINING_TENSORS),
    )
    return path


def load_checkpoint(trial: Trial, path: str) -> Meters:
    """Restores weights, optimizer, scheduler, scaler, RNG, budget from a checkpoint folder
    written by :func:`save_checkpoint`; returns the meters to continue with."""
    _load_weights(trial.unwrapped, Path(path))
    tensors = torch.load(Path(path, TRAINING_TENSORS), map_location="cpu", weights_only=False)
    trial.optimizer.load_state_dict(tensors["optimizer"])
    trial.scheduler.load_state_dict(tensors["scheduler"])
    trial.scaler.load_state_dict(tensors["scaler"])
    state = json.loads(Path(path, TRAINING_STATE).read_text())
    trial.budget.load_state_dict(state["budget"])
    _set_rng_state(tensors["rng"])
    return Meters(**state["meters"])


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    adapter = path / "adapter_model.safetensors"
    if adapter.is_file():  # LoRA: the adapters and the heads peft saves with them
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(model, load_file(adapter))
        if result.unexpected_keys:
            raise ValueError(f"{adapter}: unexpected keys {result.unexpected_keys[:5]}")
        return
    load_weights(model, path)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
