"""Resources: the plan (trials at once, CPUs and GPUs per trial) from the cluster's resources,
Ray start-up, packing trials on GPUs by predicted memory, and keeping credentials in the driver.

Packing (``resources.pack_by_memory``): Ray schedules GPUs by fraction, never by memory, so
every GPU node offers its device memory as a custom resource, :data:`GPU_MEMORY_RESOURCE` (MB,
the sum over its GPUs): a local Ray started here declares what ``nvidia-smi`` reports, a
cluster's node types declare theirs (``cluster.yaml``). A packed trial's workers each ask for
their request in it and for the same share of one GPU of the cluster's largest
(:func:`worker_resources`): Ray then places them only where both are free, so the requests on
a node never sum over its memory, and on one-GPU nodes never over the GPU's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_ray import metrics as m
from qa_ray.errors import ConfigError
from qa_ray.search.space import grid_size
from qa_ray.storage import is_uri

if TYPE_CHECKING:
    from qa_ray.sweep.config import SweepConfig

__all__ = ["GPU_MEMORY_RESOURCE", "device_memory_mb", "plan", "worker_resources"]

GPU_MEMORY_RESOURCE = m.GPU_MEMORY_RESOURCE

logger = logging.getLogger(__name__)


def plan(
    cfg: SweepConfig,
    cluster: dict[str, float] | None = None,
    *,
    elastic: bool = False,
    nodes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The resource plan: per-trial resources and how many trials run at once.

    Args:
        cluster: the CPUs and GPUs Ray has now; ``None`` when unknown (``--dry-run``).
        elastic: a cluster joined by address, whose autoscaler may add nodes: what it has now
            neither caps an explicit ``max_concurrent_trials`` nor rules a trial out. Without
            one, as many trials run at once as fit now (at least one): set it to let the
            autoscaler add nodes for more.
        nodes: the nodes up now (``ray.nodes()``): packing is refused where their GPUs differ
            (:func:`device_memory_mb`).
    """
    r = cfg.resources
    if r.pack_by_memory and nodes is not None:
        device_memory_mb(nodes)
    per_trial = {"CPU": r.num_workers * r.cpus_per_worker, "GPU": r.num_workers * r.gpus_per_worker}
    fit = None
    if (
        cluster is not None
        and r.pack_by_memory
        and not elastic  # an autoscaler may add the GPU nodes later
        and not cluster.get(GPU_MEMORY_RESOURCE)
    ):
        raise ConfigError(
            "resources.pack_by_memory",
            [
                f"packs trials by GPU memory, but no node offers a `{GPU_MEMORY_RESOURCE}` "
                f"resource (the cluster has {cluster}): a local Ray declares it from nvidia-smi "
                f"when it sees a GPU; on a cluster, give each GPU node type "
                f"`resources: {{GPU: 1, {GPU_MEMORY_RESOURCE}: MB}}` (cluster.yaml)"
            ],
        )
    if cluster is not None:
        # Packed: a trial's GPU share follows its prediction, known when it is sampled; the
        # CPUs set how many run at once, and Ray holds the rest back until memory frees.
        counted = {"CPU": per_trial["CPU"]} if r.pack_by_memory else per_trial
        fits = [cluster.get(k, 0) // v for k, v in counted.items() if v > 0]
        fit = int(min(fits)) if fits else None
        if fit == 0 and not elastic:
            raise ConfigError(
                "resources",
                [
                    f"one trial needs {per_trial} but this machine has "
                    f"{ {k: cluster.get(k, 0) for k in per_trial} }"
                ],
            )
    if cfg.search.max_concurrent_trials:
        concurrent = cfg.search.max_concurrent_trials
        if fit and not elastic:
            concurrent = min(concurrent, fit)
    else:
        concurrent = fit or 1
    if r.pack_by_memory:
        per_trial = {**per_trial, "GPU": f"by predicted memory, at most {per_trial['GPU']}"}
    return {
        "per_trial": per_trial,
        "workers_per_trial": r.num_workers,
        "cluster": cluster,
        "elastic": elastic,
        "max_concurrent_trials": concurrent,
        "num_samples": cfg.search.num_samples,
        "distinct_configurations": grid_size(cfg.space),
    }


def init_ray(address: str | None, verbose: bool = False) -> dict[str, float]:
    """Joins ``address`` or starts Ray embedded with what this machine has; returns resources.

    Workers' own output (weight-loading reports, library warnings, per-step logs) goes to
    Ray's session logs, and to this console only when ``verbose``.
    """
    import ray

    if not ray.is_initialized():
        if address:
            ctx = ray.init(address=address, log_to_driver=verbose)
        else:
            # Ray counts the GPUs itself (CUDA_VISIBLE_DEVICES honoured): importing torch here
            # for torch.cuda.device_count() would cost the driver a second and a half.
            # With the dashboard (on 127.0.0.1): Ray Train's placement-group cleaner polls the
            # State API it serves, and warns every few seconds without it.
            gpu_mb = detect_gpu_memory_mb()
            ctx = ray.init(
                num_cpus=os.cpu_count(),
                resources={GPU_MEMORY_RESOURCE: gpu_mb} if gpu_mb else None,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=verbose,
            )
        if not verbose:
            logs = Path(ctx.address_info["session_dir"]) / "logs"
            print(f"[qa-ray] worker logs: {logs} (`qa-ray sweep ... -v` shows them)", flush=True)
    return {
        k: float(v)
        for k, v in ray.cluster_resources().items()
        if k in ("CPU", "GPU", GPU_MEMORY_RESOURCE)
    }


def detect_gpu_memory_mb() -> float | None:
    """The memory of this machine's visible NVIDIA GPUs in MB (``nvidia-smi``; no torch
    import), or None without one: as many times the smallest visible card as there are
    cards. Ray shares GPUs by fraction, not by card: counted at their sizes (a 24 GB and a
    48 GB card as 2 x 36 GB), three 15 GB trials fitted "0.42 GPU" each on the 24 GB card.
    ``CUDA_VISIBLE_DEVICES`` may name cards by index or by UUID."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = None if visible is None else {v.strip() for v in visible.split(",") if v.strip()}
    sizes = []
    for line in out.strip().splitlines():
        index, uuid, mb = (x.strip() for x in line.split(",", 2))
        if keep is None or index in keep or uuid in keep:
            try:
                sizes.append(float(mb))
            except ValueError:  # "[N/A]" (some MIG and vGPU set-ups): not countable here
                return None
    if sizes and len(set(sizes)) > 1:
        logger.warning(
            "GPUs of different sizes (%s MB): packing counts each as the smallest",
            ", ".join(f"{s:.0f}" for s in sizes),
        )
    return min(sizes) * len(sizes) if sizes else None


def device_memory_mb(nodes: list[dict[str, Any]]) -> float | None:
    """The largest per-GPU memory among the alive nodes (``ray.nodes()``) that offer
    :data:`GPU_MEMORY_RESOURCE`: a packed worker's GPU share is its request over this.

    On a one-GPU node the node's memory resource bounds its trials whatever their share. On a
    node of several GPUs it does not: Ray may put every share on one card, so a card there
    smaller than the largest would take more than it holds.

    Raises:
        ConfigError: a node of several GPUs with cards smaller than the largest.
    """
    per_gpu = [
        (n["Resources"][GPU_MEMORY_RESOURCE] / n["Resources"]["GPU"], n["Resources"]["GPU"], n)
        for n in nodes
        if n.get("Alive")
        and n.get("Resources", {}).get("GPU")
        and n["Resources"].get(GPU_MEMORY_RESOURCE)
    ]
    if not per_gpu:
        return None
    largest = max(size for size, _, _ in per_gpu)
    small = [
        f"{n.get('NodeManagerAddress', '?')} ({gpus:g} GPUs of {size:.0f} MB)"
        for size, gpus, n in per_gpu
        if gpus > 1 and size < largest
    ]
    if small:
        raise ConfigError(
            "resources.pack_by_memory",
            [
                f"packs trials by GPU memory, but GPUs differ: the largest holds {largest:.0f} MB "
                f"and {', '.join(small)} hold less, on nodes of several GPUs where Ray may put "
                "every share on one card; pack on nodes whose GPUs are all alike (one node type "
                "for the sweep), or set `pack_by_memory: false`"
            ],
        )
    return largest


def worker_resources(
    cpus: float, gpus: float, request_mb: float | None, device_mb: float | None
) -> dict[str, float]:
    """What one Ray Train worker asks for: its CPUs and ``gpus``; packed (a ``request_mb`` and
    the cluster's ``device_mb``), ``request_mb`` of :data:`GPU_MEMORY_RESOURCE` and the same
    share of a GPU (rounded up to Ray's 1e-4 resolution). A request over ``gpus`` of the
    largest GPU asks for those whole: the trial runs alone there and, if it needs more, runs out
    of memory itself (infeasible), instead of waiting for a node that does not exist."""
    if request_mb is None or device_mb is None or gpus <= 0:
        return {"CPU": cpus, "GPU": gpus}
    request_mb = min(float(request_mb), gpus * device_mb)
    share = min(gpus, math.ceil(request_mb / device_mb * 1e4) / 1e4)
    return {"CPU": cpus, "GPU": share, GPU_MEMORY_RESOURCE: request_mb}


def cluster_notes(cfg: SweepConfig, exp_path: str) -> list[str]:
    """What to change for a sweep on a (multi-node, autoscaling) cluster to go as expected."""
    import ray

    notes = []
    if not cfg.search.max_concurrent_trials:
        notes.append(
            "search.max_concurrent_trials is unset: trials run as many at once as fit on the "
            "nodes up now; set it to let the autoscaler add nodes for more"
        )
    if not is_uri(exp_path) and sum(n["Alive"] for n in ray.nodes()) > 1:
        notes.append(
            f"storage_path {exp_path} is a local folder on a multi-node cluster: checkpoints "
            "written on worker nodes need storage every node reaches (s3://..., gs://..., NFS)"
        )
    return notes


# Ray Tune 2.60 copies these from the driver's environment into every trial actor's
# runtime_env (tune/execution/class_cache.py), and Ray's runtime_env_agent logs each runtime_env
# at INFO: the secret key ends up in the session logs of every node. Trial actors of a local
# sweep inherit the driver's environment anyway (Ray's processes start from it); on a cluster,
# nodes use their own credentials (cluster.yaml: the instance profile).
_CREDENTIALS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
)


@contextlib.contextmanager
def credentials_stay_in_the_driver():
    from ray.tune.execution import class_cache

    saved = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = set(saved) - _CREDENTIALS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = saved
