"""The Tune callback that mirrors trials into MLflow child runs (:class:`MLflowSweepCallback`).

Ray's ``MLflowLoggerCallback`` makes flat runs; this one makes the nested layout a team reads,
with the worker's node, the failure reason of a failed trial and its worker log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from typing import Any

from mlflow.entities import Metric
from ray.tune import Callback

from qa_ray import live
from qa_ray import metrics as m

# The tag names live with the metric names; re-exported here for readers of this module.
from qa_ray.metrics import (
    CHECKPOINT_PATH,
    TAG_CHECKPOINT,
    TAG_ERROR,
    TAG_INFEASIBLE,
    TAG_MEMORY_SEEN,
    TAG_NODE,
    TAG_NODE_ID,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STOPPED_EARLY_AT,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    TAG_TRIAL_NAME,
)
from qa_ray.search.memory import MemoryModel, Prediction
from qa_ray.search.space import apply_params, axis_values
from qa_ray.tracking.runs import (
    ERROR_BREAKDOWN_FILE,
    PER_QUESTION_TABLE,
    QUALITATIVE_TABLE,
    child_runs,
    mlflow_client,
    mlflow_params,
)

__all__ = ["MLflowSweepCallback", "failure_reason", "learn_memory"]

logger = logging.getLogger(__name__)


def _learn(memory: MemoryModel, base: dict[str, Any], seen: dict[str, Any]) -> None:
    config = apply_params(base, seen["config"])
    if seen["lower_bound"]:
        memory.observe_at_least(config, seen["peak_mb"])
    else:
        memory.observe(config, seen["peak_mb"], steps=seen["steps"])


def learn_memory(uri: str, parent_run_id: str, base: dict[str, Any], memory: MemoryModel) -> int:
    """Teaches ``memory`` every peak the sweep's trials taught it so far (their runs keep
    what they taught, :data:`~qa_ray.metrics.TAG_MEMORY_SEEN`), in the order they started:
    a resumed or extended sweep predicts as the sweep had learned, and keeps configurations
    known over a budget from running again. Returns how many peaks it took."""
    n = 0
    for r in child_runs(uri, parent_run_id):
        if (text := r.data.tags.get(TAG_MEMORY_SEEN)) is not None:
            _learn(memory, base, json.loads(text))
            n += 1
    return n


class MLflowSweepCallback(Callback):
    """Logs every Tune trial as a nested child run of the sweep's parent run.

    Args:
        tracking_uri: the MLflow tracking URI.
        parent_run_id: the sweep's parent run (see :func:`start_parent_run`).
        metric_keys: the metrics worth logging as curves (the loop's metric names).
        base_config: the sweep's trial config, which each trial's sampled values complete.
        memory: the sweep's memory model: each child run gets its predicted peak
            (``predicted_peak_memory_mb`` and its sd) when it starts, and every trial that
            ends with a measured peak (complete or stopped early after an optimizer step, not
            infeasible) refines the model for the trials after it; the others' peaks are
            lower bounds of their own configuration.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        metric_keys: tuple[str, ...],
        base_config: dict[str, Any] | None = None,
        memory: MemoryModel | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.metric_keys = tuple(metric_keys)
        self.base_config = base_config or {}
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}  # run id -> newest step logged
        self._client = None
        self.memory = memory

    def __setstate__(self, state):  # callbacks pickled by an earlier qa-ray lack newer fields
        state.setdefault("_last_step", {})
        state.setdefault("memory", None)
        self.__dict__.update(state)

    def setup(self, **info):
        """Joins the sweep this driver runs (a callback Tune restored too): its one memory
        model, shared with the searcher, and the rejections the admission makes."""
        d = live.current()
        if d is not None:
            self.memory = d.memory if d.memory is not None else self.memory
            d.on_rejected = self.record_predicted_infeasible

    def __getstate__(self):  # pickled into Tune's experiment state; the client is not
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def _run_for(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        existing = [
            r
            for r in child_runs(self.tracking_uri, self.parent_run_id)
            if r.data.tags.get(TAG_TRIAL_ID) == trial.trial_id
        ]
        if existing:  # resumed sweep: keep logging into the trial's run
            rid = existing[0].info.run_id
            self.client.update_run(rid, status="RUNNING")
            logged = self.client.get_metric_history(rid, m.STEP)
            self._last_step[rid] = max((int(h.value) for h in logged), default=-1)
        else:
            parent = self.client.get_run(self.parent_run_id)
            run = self.client.create_run(
                parent.info.experiment_id,
                run_name=trial.trial_name if hasattr(trial, "trial_name") else str(trial),
                tags={
                    TAG_PARENT: self.parent_run_id,
                    TAG_TRIAL_ID: trial.trial_id,
                    TAG_TRIAL_NAME: str(trial),
                    TAG_SWEEP: parent.data.tags.get(TAG_SWEEP, ""),
                    TAG_ROLE: "trial",
                },
            )
            rid = run.info.run_id
            # The sampled axes, plus the fixed ones (bits, finetune, ...) resolved from the
            # sweep's base config, so every child says what it trained.
            params = axis_values(self.base_config, trial.config) if self.base_config else {}
            self.client.log_batch(rid, params=mlflow_params({**params, **trial.config}))
            self._log_prediction(rid, trial)
        self._runs[trial.trial_id] = rid
        return rid

    def _log_prediction(self, rid: str, trial) -> None:
        if self.memory is None or not self.base_config:
            return
        try:
            p = self.memory.predict(apply_params(self.base_config, trial.config))
        except ValueError as exc:  # a model the account cannot read (a hub name): say once
            logger.warning("no memory prediction (%s); predictions are off for this sweep", exc)
            self.memory = None
            return
        now = int(time.time() * 1000)
        self.client.log_batch(
            rid,
            metrics=[
                Metric(m.PREDICTED_PEAK_MEMORY_MB, p.peak_mb, now, 0),
                Metric(m.PREDICTED_PEAK_MEMORY_SD_MB, p.sd_mb, now, 0),
            ],
        )

    def record_predicted_infeasible(
        self, config: dict[str, Any], prediction: Prediction, reason: str
    ) -> None:
        """A child run for a sampled configuration that was not launched: predicted over a
        memory budget (outcome ``predicted_infeasible``, its prediction, its axes)."""
        self._rejected = getattr(self, "_rejected", 0) + 1
        parent = self.client.get_run(self.parent_run_id)
        name = f"predicted-infeasible-{self._rejected}"
        run = self.client.create_run(
            parent.info.experiment_id,
            run_name=name,
            tags={
                TAG_PARENT: self.parent_run_id,
                TAG_TRIAL_NAME: name,
                TAG_SWEEP: parent.data.tags.get(TAG_SWEEP, ""),
                TAG_ROLE: "trial",
                TAG_OUTCOME: "predicted_infeasible",
                TAG_INFEASIBLE: reason[:4000],
            },
        )
        rid = run.info.run_id
        params = axis_values(self.base_config, config) if self.base_config else {}
        now = int(time.time() * 1000)
        self.client.log_batch(
            rid,
            metrics=[
                Metric(m.PREDICTED_PEAK_MEMORY_MB, prediction.peak_mb, now, 0),
                Metric(m.PREDICTED_PEAK_MEMORY_SD_MB, prediction.sd_mb, now, 0),
            ],
            params=mlflow_params({**params, **config}),
        )
        self.client.set_terminated(rid, status="FINISHED")

    def _observe_memory(self, rid: str, trial, final: dict[str, Any]) -> None:
        peak = final.get(m.PEAK_MEMORY_MB)
        if self.memory is None or not self.base_config:
            return
        if isinstance(peak, int | float) and peak > 0:
            seen = {
                "config": {k: v for k, v in trial.config.items() if k != m.MEMORY_REQUEST_MB},
                "peak_mb": float(peak),
                "steps": final.get(m.STEP),
                # over budget or out of memory: a lower bound
                "lower_bound": bool(final.get(m.INFEASIBLE)),
            }
            _learn(self.memory, self.base_config, seen)
            self.client.set_tag(rid, TAG_MEMORY_SEEN, json.dumps(seen, default=str))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def _log_worker_output(self, rid: str, result: dict[str, Any]) -> None:
        """The trial's worker log as artifacts of its run (what ``-v`` would have shown)."""
        try:
            logs = _worker_output(result)
        except Exception as exc:  # a node gone (preempted), no dashboard: the run still ends
            logger.warning("could not fetch the worker log of run %s: %s", rid, exc)
            return
        for name, text in logs.items():
            self.client.log_text(rid, text, name)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = self._run_for(trial)
        # A resumed run's curve up to its checkpoint: the points this driver has not logged
        # (a driver killed while the run went on never received them).
        for point in result.get(m.CURVE_SO_FAR) or ():
            self._log_curve(rid, point)
        if not self._log_curve(rid, result):
            return
        step = int(result.get(m.STEP, result.get(m.TRAINING_ITERATION, 0)))
        answers = result.get(m.QUALITATIVE)
        if answers:  # appended to the table on every evaluation, so none is lost on a crash
            self.client.log_table(
                rid,
                {
                    "step": [step] * len(answers),
                    "question": [a["question"] for a in answers],
                    "answer": [a["answer"] for a in answers],
                },
                QUALITATIVE_TABLE,
            )
        scored = result.get(m.PER_QUESTION)
        if scored:  # appended at every evaluation, as the answers above
            n = len(scored["ids"])
            self.client.log_table(
                rid,
                {
                    "step": [step] * n,
                    "id": scored["ids"],
                    "exact": scored["exact"],
                    "f1": scored["f1"],
                },
                PER_QUESTION_TABLE,
            )
        for tag, key in ((TAG_NODE, m.WORKER_NODE_IP), (TAG_NODE_ID, m.WORKER_NODE_ID)):
            if result.get(key):
                self.client.set_tag(rid, tag, str(result[key]))
        if result.get(CHECKPOINT_PATH):  # Ray Train keeps the newest (num_to_keep counts back)
            self.client.set_tag(rid, TAG_CHECKPOINT, str(result[CHECKPOINT_PATH]))

    def _log_curve(self, rid: str, result: dict[str, Any]) -> bool:
        """Logs a report's curve metrics at its step; False for a step already logged."""
        from mlflow.entities import Metric

        step = int(result.get(m.STEP, result.get(m.TRAINING_ITERATION, 0)))
        if step <= self._last_step.get(rid, -1):
            # A resumed trial with no checkpoint to resume from starts over: its history is
            # already logged up to here, and is not written a second time.
            return False
        self._last_step[rid] = step
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(k, v, ts, step)
            for k, v in m.finite_numbers(result).items()
            if k in self.metric_keys
        ]
        self.client.log_batch(rid, metrics=metrics)
        return True

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = self._run_for(trial)
        final = trial.last_result or {}
        self.client.log_text(rid, json.dumps(final, indent=2, default=str), "final_result.json")
        if final.get(m.ERROR_BREAKDOWN):
            self.client.log_text(rid, final[m.ERROR_BREAKDOWN], ERROR_BREAKDOWN_FILE)
        if final.get(m.INFEASIBLE):
            tags = {TAG_OUTCOME: "infeasible", TAG_INFEASIBLE: str(final.get(m.INFEASIBLE_REASON))}
        elif final.get(m.STOPPED_EARLY_AT) is not None:
            tags = {TAG_OUTCOME: "pruned", TAG_STOPPED_EARLY_AT: f"{final[m.STOPPED_EARLY_AT]:g}"}
        else:
            tags = {TAG_OUTCOME: "complete"}
        for tag, value in tags.items():
            self.client.set_tag(rid, tag, value[:4000])
        if final.get(m.MEMORY_CONTEXT_SOURCE):  # GPU: how its peak counted the CUDA context
            self.client.log_batch(
                rid, params=mlflow_params({m.MEMORY_CONTEXT_SOURCE: final[m.MEMORY_CONTEXT_SOURCE]})
            )
        self._observe_memory(rid, trial, final)
        self._log_worker_output(rid, final)
        self.client.set_terminated(rid, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self._run_for(trial)
        message = trial_error_text(trial)
        self.client.set_tag(rid, TAG_ERROR, message[:4000])
        self.client.log_text(rid, message, "error.txt")
        self._log_worker_output(rid, trial.last_result or {})
        self.client.set_terminated(rid, status="FAILED")


def _worker_output(result: dict[str, Any]) -> dict[str, str]:
    """The output of the trial's rank-0 worker process (``worker_pid`` on ``worker_node_id``,
    from its reports), read through Ray's State API from whichever node ran it:
    ``{"worker/rank0.out": ..., "worker/rank0.err": ...}`` (Python logging is on stderr)."""
    from ray.util.state import get_log

    node, pid = result.get(m.WORKER_NODE_ID), result.get(m.WORKER_PID)
    if not node or not pid:
        return {}
    return {
        f"worker/rank0.{suffix}": "".join(
            get_log(
                node_id=node,
                pid=int(pid),
                suffix=suffix,
                tail=-1,
                timeout=10,
                filter_ansi_code=True,
            )
        )
        for suffix in ("out", "err")
    }


_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))(?:\([\w.]*\))?: (.+)$"
)


def failure_reason(text: str) -> str:
    """The reason a trial failed, from its error text (a traceback, Ray's wrapping included):
    the last exception's type and the first line of its message, e.g. ``OSError: ... is not
    a local folder and is not a valid model identifier ...``. Later lines of a message (hints
    such as "Check your internet connection ...") and traceback frames are left out."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1)}: {match.group(2)}"[:400]
    return (lines[-1] if lines else "unknown error")[:400]


def trial_error_text(trial) -> str:
    """The failed trial's error as Tune recorded it (its error file, else the exception)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        if path and os.path.exists(path):
            with open(path) as f:
                return f.read()
    except OSError:
        pass
    with contextlib.suppress(Exception):
        err = trial.get_error()
        if err is not None:
            return str(err)
    return "trial failed (no error text recorded)"
