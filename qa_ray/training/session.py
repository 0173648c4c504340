"""Where a worker runs: a Ray Train worker (:class:`RaySession`) or in-process
(:class:`LocalSession`), both following :class:`Session`, so the loop never asks which.

Also the worker's device and the collectives the loop needs across ranks (from rank 0, reduce).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from qa_ray import metrics as m
from qa_ray.training.checkpoint import TRAINING_STATE

if TYPE_CHECKING:
    from qa_ray.config.trial import TrialConfig

    pass

__all__ = ["LocalSession", "RaySession", "Session", "latest_local_checkpoint"]

logger = logging.getLogger(__name__)


# ---- sessions --------------------------------------------------------------------------------


class Session(Protocol):
    """Where a worker runs and where its reports go: Ray Train, or in-process."""

    world_rank: int
    world_size: int
    device: torch.device

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model ready for this worker (DDP-wrapped across several workers)."""
        ...

    def latest_checkpoint(self) -> str | None:
        """A local folder holding the checkpoint to resume from, or ``None``."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Reports metrics (every rank) and a checkpoint (rank 0, or ``None``)."""
        ...

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        """Keeps the final metrics and predictions (rank 0) where the user reads them."""
        ...

    def leave_note(self, name: str, payload: dict[str, Any]) -> None:
        """Writes a small JSON note that outlives this attempt of the trial (any rank)."""
        ...

    def read_note(self, name: str) -> dict[str, Any] | None:
        """A note an earlier attempt of this trial left, or ``None``."""
        ...


class LocalSession:
    """Stands in for Ray Train when the loop runs in-process: one worker, files in ``output_dir``.

    Keeps the newest ``keep`` checkpoints under ``output_dir/checkpoints`` and prints one
    progress line per report. With ``resume``, the newest of them is the one to resume from.
    """

    world_rank, world_size = 0, 1

    def __init__(self, output_dir: str, keep: int, device: torch.device, resume: bool = False):
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.device = device
        self.resume = resume

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def latest_checkpoint(self) -> str | None:
        if not self.resume:
            return None
        newest = latest_local_checkpoint(self.output_dir)
        if newest is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {self.output_dir / 'checkpoints'} "
                "(`output_dir`); run without --resume to start from step 0"
            )
        return str(newest)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        print(progress_line(metrics), flush=True)
        if checkpoint_dir is None:
            return
        root = self.output_dir / "checkpoints"
        target = root / f"step_{metrics[m.STEP]:06d}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir, target)
        for old in _local_checkpoints(self.output_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if predictions is not None:
            (self.output_dir / "predictions.json").write_text(json.dumps(predictions, indent=2))

    def leave_note(self, name: str, payload: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / name).write_text(json.dumps(payload))

    def read_note(self, name: str) -> dict[str, Any] | None:
        # One worker, never restarted: only a resumed run has attempts before it.
        path = self.output_dir / name
        return json.loads(path.read_text()) if self.resume and path.is_file() else None


def _local_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step_*") if (p / TRAINING_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step_")))


def latest_local_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint that ``qa-ray train`` wrote under ``output_dir``."""
    found = _local_checkpoints(Path(output_dir))
    return found[-1] if found else None


class RaySession:
    """A Ray Train worker: rank and device from its context; reports go to Ray Train."""

    def __init__(self, device: str = "auto") -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        # `train.device: cpu` keeps the loop on the CPU even where Ray assigned the worker a
        # GPU (its get_device() answers cuda then, whether or not torch can use one).
        self.device = torch.device("cpu") if device == "cpu" else ray.train.torch.get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        # k-bit weights are placed by bitsandbytes at load time; moving them again is an error.
        kbit = any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())
        return ray.train.torch.prepare_model(model, move_to_device=False if kbit else self.device)

    def latest_checkpoint(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # after a worker failure, or a resumed sweep
        return checkpoint.to_directory() if checkpoint is not None else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        metrics = dict(
            metrics,
            **{
                m.WORKER_NODE_IP: ray.util.get_node_ip_address(),
                m.WORKER_NODE_ID: ray.get_runtime_context().get_node_id(),
                m.WORKER_PID: os.getpid(),  # its output: the trial's worker log (MLflow)
            },
        )
        ray.train.report(metrics, checkpoint=checkpoint)

    def save_results(self, metrics: dict[str, Any], predictions: dict[str, str] | None) -> None:
        pass  # the final report's checkpoint holds them (metrics.json, predictions.json)

    # Notes live in the Train run's folder on its storage (RunConfig.storage_path / name),
    # which every attempt of the trial shares and every node of the cluster reaches.
    def leave_note(self, name: str, payload: dict[str, Any]) -> None:
        fs, path = self._note_path(name)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(payload).encode())

    def read_note(self, name: str) -> dict[str, Any] | None:
        import pyarrow.fs

        fs, path = self._note_path(name)
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def _note_path(self, name: str) -> tuple[Any, str]:
        import ray.train

        storage = ray.train.get_context().get_storage()  # a DeveloperAPI (Ray 2.60)
        fs = storage.storage_filesystem
        fs.create_dir(storage.experiment_fs_path, recursive=True)
        return fs, f"{storage.experiment_fs_path}/{name}"


def _in_ray_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


def open_session(cfg: TrialConfig, resume: bool = False) -> Session:
    """Ray Train's session inside a Ray worker, else a :class:`LocalSession` on ``output_dir``."""
    if _in_ray_worker():
        return RaySession(cfg.train.device)
    return LocalSession(
        cfg.output_dir, cfg.train.checkpoints_to_keep, _resolve_device(cfg), resume=resume
    )


def _resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("`train.device` is 'cuda' but no CUDA device is visible")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# ---- collectives: every tensor on a device the process group's backend serves ----------------


def collective_device(device: torch.device) -> torch.device:
    """The device a collective's tensor must live on in this worker's process group.

    Ray Train's process group is NCCL on GPU workers (``"cuda:nccl"``), which serves CUDA
    tensors only, and gloo on CPU workers (``"cpu:gloo,cuda:gloo"``). A CPU tensor goes where a
    backend serves the CPU; otherwise the worker's own device.
    """
    served = {part.split(":")[0] for part in dist.get_backend_config().split(",") if ":" in part}
    if "cpu" in served:
        return torch.device("cpu")
    if device.type not in served:
        raise RuntimeError(
            f"the process group serves {sorted(served)} tensors, but this worker's device is "
            f"{device}"
        )
    return device


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_initialized()


def from_rank0(values: list[float], session: Session) -> list[float]:
    """Rank 0's values on every rank (decisions all ranks must share)."""
    if not _distributed(session.world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(session.device))
    dist.broadcast(t, src=0)
    return t.tolist()


def reduce_values(
    values: list[float], op: dist.ReduceOp.RedOpType, session: Session
) -> list[float]:
    if not _distributed(session.world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(session.device))
    dist.all_reduce(t, op=op)
    return t.tolist()


PROGRESS_EVAL = ((m.EVAL_EXACT, ".2f"), (m.EVAL_F1, ".2f"), (m.EVAL_LOSS, ".4f"),
                  (m.EVAL_PERPLEXITY, ".2f"))  # fmt: skip


def progress_line(r: dict[str, Any]) -> str:
    evals = " ".join(f"{m.LABELS[k]} {r[k]:{fmt}}" for k, fmt in PROGRESS_EVAL if k in r)
    return (
        f"step {r[m.STEP]} epoch {r[m.EPOCH]:.2f} | loss {r[m.TRAIN_LOSS]:.4f} | "
        f"lr {r[m.LEARNING_RATE]:.2e} | {evals or 'no eval'} | "
        f"peak {r[m.PEAK_MEMORY_MB]:.0f} MB | {r[m.TRAIN_SAMPLES_PER_SECOND]:.1f} samples/s"
    )
