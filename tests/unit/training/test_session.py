"""Notes that outlive an attempt of a trial: written where every attempt and node finds them
(a Ray Train run's folder on its storage), read back by the next attempt."""

from __future__ import annotations

import types

import pyarrow.fs
import ray.train

from qa_ray.training.session import LocalSession, RaySession


def test_a_ray_worker_note_lives_in_the_train_run_folder_on_its_storage(tmp_path, monkeypatch):
    run = tmp_path / "storage" / "sweep-train-trial_1"
    storage = types.SimpleNamespace(
        storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(run)
    )
    context = types.SimpleNamespace(get_storage=lambda: storage)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    session = object.__new__(RaySession)  # its context is the emulated one
    assert session.read_note("out_of_memory.json") is None
    session.leave_note("out_of_memory.json", {"peak_memory_mb": 123.0, "reason": "r"})
    assert (run / "out_of_memory.json").is_file()
    again = object.__new__(RaySession)  # the next attempt
    assert again.read_note("out_of_memory.json") == {"peak_memory_mb": 123.0, "reason": "r"}


def test_a_local_note_is_read_by_a_resumed_run_only(tmp_path):
    import torch

    LocalSession(str(tmp_path), 1, torch.device("cpu")).leave_note("n.json", {"a": 1})
    assert LocalSession(str(tmp_path), 1, torch.device("cpu")).read_note("n.json") is None
    resumed = LocalSession(str(tmp_path), 1, torch.device("cpu"), resume=True)
    assert resumed.read_note("n.json") == {"a": 1}
