"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

ASSETS = Path(__file__).parent / "assets"
SHARED_SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


class RecordingSession:
    """A :class:`qa_ray.training.session.Session` that keeps every report in memory (one worker, or one
    rank of a process group the test set up), and can hand the loop a checkpoint to resume."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        resume_from: str | None = None,
        keep_checkpoints: str | None = None,
    ):
        self.world_rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.resume_from = resume_from
        self.keep_checkpoints = keep_checkpoints  # a folder to copy every checkpoint into
        self.reports: list[dict[str, Any]] = []
        self.model: torch.nn.Module | None = None
        self.notes: dict[str, dict[str, Any]] = {}  # outlive an attempt: reuse the session

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        self.model = model
        return model

    def latest_checkpoint(self) -> str | None:
        return self.resume_from

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.keep_checkpoints:
            import shutil
            from pathlib import Path

            target = Path(self.keep_checkpoints) / f"step_{metrics['step']:06d}"
            shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)

    def save_results(self, metrics, predictions) -> None:
        self.results = (metrics, predictions)

    def leave_note(self, name: str, payload: dict[str, Any]) -> None:
        self.notes[name] = dict(payload)

    def read_note(self, name: str) -> dict[str, Any] | None:
        return self.notes.get(name)

    def losses(self) -> list[float]:
        return [r["train_loss"] for r in self.reports]


def param_checksum(model: torch.nn.Module) -> float:
    """A float that changes when any trained parameter changes."""
    module = getattr(model, "module", model)
    with torch.no_grad():
        return float(
            sum(
                (p.double() * (i + 1)).sum()
                for i, p in enumerate(q for q in module.parameters() if q.requires_grad)
            )
        )


def count_gradient_syncs(model: torch.nn.Module, counter: list[int]) -> None:
    """Counts DDP's gradient all-reduces (one per bucket per synchronizing backward)."""

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        counter[0] += 1
        return allreduce_hook(None, bucket)

    model.register_comm_hook(None, hook)


def ddp_rank(rank: int, world_size: int, init_file: str, cfg: dict, out_dir: str) -> None:
    """One rank of a gloo process group running the real loop (``torch.multiprocessing``)."""
    import json

    import torch.distributed as dist

    from qa_ray.training.loop import train_loop_per_worker

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    syncs = [0]

    class Session(RecordingSession):
        def prepare(self, model):
            model = super().prepare(model)
            count_gradient_syncs(model, syncs)
            return model

    session = Session(rank, world_size)
    try:
        train_loop_per_worker(cfg, session)
        result = {
            "reports": session.reports,
            "checksum": param_checksum(session.model),
            "syncs": syncs[0],
            # what model.prune kept on this rank, if it pruned
            "pruned": getattr(
                getattr(session.model, "module", session.model).config, "qa_ray_pruning", None
            ),
        }
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def cuda_only_group_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank of a process group whose only backend serves CUDA tensors, as NCCL's does
    (here gloo mapped to ``cuda``): what a CPU tensor and :func:`collective_device` meet."""
    import json

    import torch.distributed as dist

    from qa_ray.training.session import collective_device

    dist.init_process_group(
        "cuda:gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    out: dict[str, str] = {"backend": dist.get_backend_config()}
    try:
        dist.broadcast(torch.zeros(1), src=0)
        out["cpu_tensor"] = "accepted"
    except Exception as exc:  # what the loop's old CPU-tensor collectives met under NCCL
        out["cpu_tensor"] = f"rejected: {exc}"
    out["worker_on_cuda"] = str(collective_device(torch.device("cuda", rank)))
    try:
        collective_device(torch.device("cpu"))
        out["worker_on_cpu"] = "accepted"
    except RuntimeError as exc:
        out["worker_on_cpu"] = f"rejected: {exc}"
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


def trial_dict(model_dir, tmp_path, **over) -> dict:
    """A small trial config dict on the tiny SQuAD v1.1 fixture."""
    cfg = {
        "name": "t",
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        # No progress reports unless a test asks: the reports a test counts are then the same
        # on a slow machine.
        "train": {
            "max_steps": 4,
            "per_device_batch_size": 8,
            "learning_rate": 1e-3,
            "progress_seconds": 0,
        },  # fmt: skip
        "output_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        block, _, field = key.partition("__")
        cfg.setdefault(block, {})[field] = value
    return cfg


def tiny_sweep(tmp_path, models, *, num_samples=4, tracking_uri=None) -> tuple[Path, str]:
    """A sweep file over tiny ``models`` (the first is the base model); returns (path, MLflow URI)."""
    good = models[0]
    data = {
        "name": "tiny-sweep",
        "model": {"name_or_path": str(good), "finetune": "lora"},
        "data": {
            "path": str(ASSETS / "squad_v1_tiny.json"),
            "max_seq_length": 128,
            "doc_stride": 32,
            "cache_dir": str(tmp_path / "cache"),
            "max_eval_examples": 20,
        },
        "train": {
            "max_steps": 2,
            "per_device_batch_size": 8,
            "save_checkpoints": False,
            "progress_seconds": 0,
        },  # fmt: skip
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": {
            "num_samples": num_samples,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "seed": 3,
            "space": {
                "params": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "lora_r": {"type": "int", "low": 2, "high": 8},
                    "quantization_bits": {"type": "categorical", "choices": [8, 32]},
                    "model": {"type": "categorical", "choices": [str(m) for m in models]},
                }
            },
        },
        "storage_path": str(tmp_path / "runs"),
        "tracking": {
            "tracking_uri": tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment_name": "t",
        },
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(data))
    return p, data["tracking"]["tracking_uri"]


def official_scores(examples, predictions: dict[str, str]) -> dict[str, float]:
    """The SQuAD v2.0 evaluation of ``predictions`` against ``examples`` (``exact``, ``f1``,
    ``total``, ...): what a task's own scores must equal for the answers it returned."""
    from qa_ray.scoring.squad import GoldQuestion, score

    return score([GoldQuestion(e.id, tuple(e.answers)) for e in examples], predictions).scores


def requires_cuda(test):
    """Marks a test ``gpu`` and skips it where no CUDA GPU is visible (``-m gpu`` selects the
    GPU tier on a GPU machine; the default suite runs them there too)."""
    import pytest

    return pytest.mark.gpu(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    )
