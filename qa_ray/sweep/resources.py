"""Resources: the plan (trials at once, CPUs and GPUs per trial) from the cluster's resources,
Ray start-up, and keeping credentials in the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_ray.errors import ConfigError
from qa_ray.search.space import grid_size
from qa_ray.storage import is_uri

if TYPE_CHECKING:
    from qa_ray.sweep.config import SweepConfig

__all__ = ["plan"]

logger = logging.getLogger(__name__)


def plan(
    cfg: SweepConfig, cluster: dict[str, float] | None = None, *, elastic: bool = False
) -> dict[str, Any]:
    """The resource plan: per-trial resources and how many trials run at once.

    Args:
        cluster: the CPUs and GPUs Ray has now; ``None`` when unknown (``--dry-run``).
        elastic: a cluster joined by address, whose autoscaler may add nodes: what it has now
            neither caps an explicit ``max_concurrent_trials`` nor rules a trial out. Without
            one, as many trials run at once as fit now (at least one): set it to let the
            autoscaler add nodes for more.
    """
    r = cfg.resources
    per_trial = {"CPU": r.num_workers * r.cpus_per_worker, "GPU": r.num_workers * r.gpus_per_worker}
    fit = None
    if cluster is not None:
        fits = [cluster.get(k, 0) // v for k, v in per_trial.items() if v > 0]
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
            ctx = ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=verbose,
            )
        if not verbose:
            logs = Path(ctx.address_info["session_dir"]) / "logs"
            print(f"[qa-ray] worker logs: {logs} (`qa-ray sweep ... -v` shows them)", flush=True)
    return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


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
