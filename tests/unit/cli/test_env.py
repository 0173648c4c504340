"""``qa-ray env``: works without a GPU, lists GPUs and their memory when there are some, and
starts no Ray unless asked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import ray
import torch

from qa_ray.cli import env, main


def test_env_reports_without_a_gpu_and_starts_no_ray(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("qa-ray", "python", "torch", "CUDA", "GPUs", "bitsandbytes", "ray"):
        assert any(line.split("  ")[0] == name for line in out.splitlines()), (name, out)
    assert "GPUs          none" in out and "nothing started" in out
    assert not ray.is_initialized()


def test_env_lists_each_gpu_with_its_memory(monkeypatch):
    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"NVIDIA L4 #{i}", major=8, minor=9))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (20 * gib, 24 * gib))
    info = env.collect()
    assert [g["name"] for g in info["torch"]["gpus"]] == ["NVIDIA L4 #0", "NVIDIA L4 #1"]
    assert info["ray"]["resources"]["GPU"] == 2.0
    text = env.render(info)
    assert "GPU 1         NVIDIA L4 #1, 24.0 GiB (20.0 GiB free), compute 8.9, bf16 yes" in text
    assert "CUDA          available, 2 GPU(s)" in text


def test_env_as_json(capsys):
    assert main(["env", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"]["version"] == torch.__version__
    assert set(info["ray"]["resources"]) == {"CPU", "GPU", "memory_gib"}
    assert not ray.is_initialized()
