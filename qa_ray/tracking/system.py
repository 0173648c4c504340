"""A trial's system metrics over time (CPU, memory, disk, network; GPU utilisation and memory
where there is one), logged by MLflow's own monitor into the trial's child run from the worker
that trains (rank 0).

The child run is created by the driver (:class:`~qa_ray.tracking.callback.MLflowSweepCallback`,
when Tune starts the trial); the trial function finds it by the trial's id
(:func:`trial_run_id`) and hands it to its workers. Off, with one log line, where psutil is
missing; GPU metrics need ``nvidia-ml-py`` (``pynvml``), and MLflow leaves them out without it.
Nothing here ever fails a trial. MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds)
overrides the sampling interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from qa_ray.metrics import TAG_PARENT, TAG_TRIAL_ID

__all__ = ["SAMPLING_SECONDS", "start_system_metrics", "trial_run_id"]

logger = logging.getLogger(__name__)

# One sample every 10 s (MLflow's default): a point per 10 s of a trial's curve, a few
# hundred points for an hour-long trial.
SAMPLING_SECONDS = 10.0


def trial_run_id(uri: str, parent_run_id: str, trial_id: str, wait_s: float = 10.0) -> str | None:
    """The child run of Tune trial ``trial_id`` under ``parent_run_id``, or None (after
    ``wait_s`` seconds, or when the store cannot be read: the trial goes on without it)."""
    try:
        from qa_ray.tracking.runs import mlflow_client

        client = mlflow_client(uri)
        experiment = client.get_run(parent_run_id).info.experiment_id
        deadline = time.monotonic() + wait_s
        while True:
            # Tune calls the callback that creates the run before the trial function runs;
            # the wait covers a store that is slow to show it.
            runs = client.search_runs(
                [experiment],
                filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and "
                f"tags.`{TAG_TRIAL_ID}` = '{trial_id}'",
                max_results=1,
            )
            if runs:
                return runs[0].info.run_id
            if time.monotonic() > deadline:
                logger.warning("no MLflow run for trial %s yet: no system metrics", trial_id)
                return None
            time.sleep(0.5)
    except Exception as exc:  # the store unreachable from here: the trial still trains
        logger.warning("no system metrics for trial %s: %s", trial_id, exc)
        return None


def start_system_metrics(uri: str, run_id: str) -> Any:
    """MLflow's ``SystemMetricsMonitor`` logging into ``run_id``, started; ``None`` where it
    cannot run (psutil missing, the store unreachable). Call ``finish()`` on it at the end."""
    try:
        import psutil  # noqa: F401  (MLflow's CPU and memory monitor)
    except ImportError:
        logger.info("psutil is not installed: no system metrics (pip install psutil)")
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a restarted worker group continues the run's steps, not from 0.
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=SAMPLING_SECONDS, resume_logging=True, tracking_uri=uri
        )
        monitor.start()
        return monitor
    except Exception as exc:
        logger.warning("no system metrics for run %s: %s", run_id, exc)
        return None


def stop_system_metrics(monitor: Any) -> None:
    """Stops ``monitor`` and flushes what it sampled; never raises."""
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception as exc:
        logger.warning("system metrics did not stop cleanly: %s", exc)
