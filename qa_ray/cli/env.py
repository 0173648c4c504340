"""``qa-ray env``: what this machine offers a sweep, without starting anything.

    qa-ray env                 # qa-ray, torch, CUDA, GPUs and their memory, bitsandbytes, Ray
    qa-ray env --format json
    qa-ray env --ray           # also start a local Ray (as a sweep does) and show its resources
    qa-ray env --ray auto      # or join a running cluster and show its resources

Nothing here needs a GPU; no Ray cluster is started or joined unless ``--ray`` asks for it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from typing import Any

from qa_ray.cli.codes import EXIT_OK

_GIB = 1024**3


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"version": None, "cuda_build": None, "cuda_available": False, "gpus": []}
    gpus = []
    available = torch.cuda.is_available()
    for i in range(torch.cuda.device_count() if available else 0):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(
            {
                "index": i,
                "name": props.name,
                "memory_total_gib": round(total / _GIB, 1),
                "memory_free_gib": round(free / _GIB, 1),
                "compute_capability": f"{props.major}.{props.minor}",
                "bf16": props.major >= 8,  # Ampere and later: train.precision bf16
            }
        )
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,  # None on a CPU build
        "cuda_available": available,
        "gpus": gpus,
    }


def _ray(address: str | None, gpus: int) -> dict[str, Any]:
    """Ray's resources: without ``address``, what a local sweep would give Ray (it starts Ray
    with ``num_cpus=os.cpu_count()`` and lets it count the GPUs); with one, what the cluster
    reports (``local``: a local Ray started for the purpose, as a sweep does)."""
    import psutil

    out: dict[str, Any] = {"version": _version("ray"), "address": address}
    if address is None:
        out["source"] = "what a local sweep would give Ray here; nothing started, --ray asks Ray"
        out["resources"] = {
            "CPU": float(os.cpu_count() or 1),
            "GPU": float(gpus),
            "memory_gib": round(psutil.virtual_memory().total / _GIB, 1),
        }
        return out
    import ray

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        res = ray.cluster_resources()
        out["source"] = "a local Ray started for this" if address == "local" else "the cluster"
        out["resources"] = {
            "CPU": float(res.get("CPU", 0)),
            "GPU": float(res.get("GPU", 0)),
            "memory_gib": round(res.get("memory", 0) / _GIB, 1),
        }
        out["nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
    finally:
        if started:
            ray.shutdown()
    return out


def collect(ray_address: str | None = None) -> dict[str, Any]:
    """Everything ``qa-ray env`` reports, as plain data."""
    import qa_ray

    torch = _torch()
    bnb = _version("bitsandbytes")
    return {
        "qa_ray": {"version": qa_ray.__version__, "path": os.path.dirname(qa_ray.__file__)},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": torch,
        "bitsandbytes": {
            "version": bnb,
            # 4/8-bit weights need bitsandbytes' CUDA kernels: a GPU, and a CUDA torch
            "usable_for_k_bit": bool(bnb and torch["cuda_available"]),
        },
        "ray": _ray(ray_address, len(torch["gpus"])),
    }


def render(info: dict[str, Any]) -> str:
    """The report as aligned ``name  value`` lines."""
    t, b, r = info["torch"], info["bitsandbytes"], info["ray"]
    if t["version"] is None:
        torch_line = "not installed (bash scripts/setup.sh; QA_RAY_TORCH=cu128 for CUDA 12.8)"
    else:
        torch_line = (
            f"{t['version']} ({'CUDA ' + t['cuda_build'] if t['cuda_build'] else 'CPU build'})"
        )
    if t["cuda_available"]:
        cuda_line = f"available, {len(t['gpus'])} GPU(s)"
    elif t["cuda_build"]:
        cuda_line = "not available (CUDA build, but no GPU visible: driver? CUDA_VISIBLE_DEVICES?)"
    else:
        cuda_line = "not available (a CPU build of torch)"
    rows = [
        ("qa-ray", f"{info['qa_ray']['version']} ({info['qa_ray']['path']})"),
        ("python", f"{info['python']['version']} ({info['python']['executable']})"),
        ("platform", info["platform"]),
        ("torch", torch_line),
        ("CUDA", cuda_line),
    ]
    for g in t["gpus"]:
        rows.append(
            (
                f"GPU {g['index']}",
                f"{g['name']}, {g['memory_total_gib']} GiB ({g['memory_free_gib']} GiB free), "
                f"compute {g['compute_capability']}, bf16 {'yes' if g['bf16'] else 'no'}",
            )
        )
    if not t["gpus"]:
        rows.append(("GPUs", "none"))
    rows.append(
        (
            "bitsandbytes",
            (b["version"] or "not installed")
            + ("" if b["usable_for_k_bit"] else " (4/8-bit trials need a CUDA GPU)"),
        )
    )
    res = r["resources"]
    ray_line = (
        f"{r['version']}: CPU {res['CPU']:g}, GPU {res['GPU']:g}, memory {res['memory_gib']} GiB"
    )
    ray_line += f" ({r['source']}" + (f", {r['nodes']} node(s))" if "nodes" in r else ")")
    rows.append(("ray", ray_line))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def cmd_env(args) -> int:
    info = collect(args.ray)
    print(json.dumps(info, indent=2) if args.format == "json" else render(info))
    return EXIT_OK
