"""Metric and tag names shared by the loop, the sweep, tracking and the Pareto code.

Constants only (plus two small helpers): a metric is spelled once, here, and every layer reads
it from here. SQuAD scoring lives in :mod:`qa_ray.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Reported by the training loop on every `ray.train.report`; read by sweep, tracking, Pareto.
EVAL_EXACT = "eval_exact"
EVAL_F1 = "eval_f1"
EVAL_HAS_ANS_F1 = "eval_HasAns_f1"
EVAL_NO_ANS_F1 = "eval_NoAns_f1"
EVAL_HAS_ANS_EXACT = "eval_HasAns_exact"
EVAL_NO_ANS_EXACT = "eval_NoAns_exact"


# SQuAD 2.0 with no-answer scores (extractive): at the best no-answer threshold, and that threshold
EVAL_BEST_EXACT = "eval_best_exact"


EVAL_BEST_F1 = "eval_best_f1"


EVAL_BEST_EXACT_THRESH = "eval_best_exact_thresh"


EVAL_BEST_F1_THRESH = "eval_best_f1_thresh"
# The error breakdown of a QA trial's predictions (qa_ray.scoring.breakdown): the whole of it
# as JSON text (not a number; the final one is an MLflow artifact), and its few numbers.
ERROR_BREAKDOWN = "error_breakdown"
ERRORS_PARTIAL = "errors_partial_pct"  # answerable, answered with a partial overlap
ERRORS_NO_OVERLAP = "errors_no_overlap_pct"  # answerable, answered sharing no token
ERRORS_ANSWERABLE_EMPTY = "errors_answerable_empty_pct"  # answerable, answered empty
ERRORS_UNANSWERABLE_ANSWERED = "errors_unanswerable_answered_pct"  # SQuAD 2.0
ERRORS_LENGTH_DIFF = "errors_length_diff_tokens"  # mean predicted - reference answer tokens
EVAL_LOSS = "eval_loss"  # instruction tuning: mean cross-entropy per response token, held out
EVAL_PERPLEXITY = "eval_perplexity"  # exp(eval_loss)
QUALITATIVE = "qualitative_answers"  # instruction tuning: [{"question", "answer"}] (not a number)
# QA families, at every evaluation: each question's scores, {"ids": [...], "exact": [0 | 1],
# "f1": [0..1]} in the eval set's order (not a number): two trials evaluated on the same
# questions compare paired (qa_ray.search.schedulers.race). An MLflow table on the run.
PER_QUESTION = "per_question"
TRAIN_LOSS = "train_loss"
# What a trial needs (GPU: the caching allocator's peak reserve + the CUDA context and NCCL
# buffers; CPU: peak RSS), the largest over training, evaluations and restarts: what budgets
# and the objective use. Beside it: the tensors' own peak (CUDA max allocated; CPU: the same),
# and the peaks of training and of evaluation apart (qa_ray.training.memory).
PEAK_MEMORY_MB = "peak_memory_mb"
PEAK_ALLOCATED_MB = "peak_allocated_mb"
PEAK_TRAIN_MEMORY_MB = "peak_train_memory_mb"
PEAK_EVAL_MEMORY_MB = "peak_eval_memory_mb"
# GPU: how peak_memory_mb counted what the process holds outside the allocator (the CUDA
# context): "nvml_process", "measured" or "default" (qa_ray.training.memory). Text, not a
# number: the MLflow callback logs it as the run's param.
MEMORY_CONTEXT_SOURCE = "memory_context_source"
# Logged by the driver on every child run, before the trial runs (qa_ray.search.memory): the
# predicted peak_memory_mb and its standard deviation, beside the measured one.
PREDICTED_PEAK_MEMORY_MB = "predicted_peak_memory_mb"
PREDICTED_PEAK_MEMORY_SD_MB = "predicted_peak_memory_sd_mb"
# A packed trial's request (resources.pack_by_memory): the GPU memory each worker asked Ray for
# and caps itself at (the prediction's upper end plus a margin); a key of the sampled config.
MEMORY_REQUEST_MB = "memory_request_mb"
# Ray's custom node resource packing counts in: the GPU memory, in MB, a node offers trials.
GPU_MEMORY_RESOURCE = "gpu_memory_mb"
MODEL_FOOTPRINT_MB = "model_footprint_mb"
TRAINABLE_PARAMS = "trainable_params"
TOTAL_PARAMS = "total_params"
TRAIN_SAMPLES_PER_SECOND = "train_samples_per_second"
EVAL_LATENCY_MS = "eval_latency_ms_per_example"
LEARNING_RATE = "lr"
STEP = "step"
EPOCH = "epoch"
TRAIN_SECONDS = "train_seconds"
EVAL_QUESTIONS = "eval_questions"
EVAL_SECONDS = "eval_seconds"  # wall time of this evaluation (short trials: as long as training)
PLANNED_STEPS = "planned_steps"  # the trial's step budget (max_steps or its epochs)
# The learning-rate warmup the loop uses now, in steps: over the horizon it re-plans to under
# train.max_train_seconds, not over max_steps (memory_aware judges no trial inside it).
WARMUP_STEPS = "warmup_steps"
TIME_BUDGET_SECONDS = "time_budget_seconds"  # train.max_train_seconds, when set
FINAL_REPORT = "final_report"  # 1.0 on a trial's last report: it ends whatever is decided
# A trial that broke a budget (a constraint on one of BUDGET_METRICS, or out of memory): 1.0,
# with the reason as text. Its final report may lack the scores (None): it stopped unscored.
INFEASIBLE = "infeasible"
INFEASIBLE_REASON = "infeasible_reason"
# A trial the early-stopping scheduler stopped: the value of its time attribute at that point.
STOPPED_EARLY_AT = "stopped_early_at"

# Metrics that never decrease during a trial: a budget on one of them (``peak_memory_mb <=
# 22000``) broken once is broken for good, so the loop stops the trial at that measurement.
BUDGET_METRICS = (PEAK_MEMORY_MB, MODEL_FOOTPRINT_MB, TRAINABLE_PARAMS, TOTAL_PARAMS)

# Where a Ray Train worker's report came from (rank 0's): node and process, for the MLflow
# node tags and the trial's worker log.
WORKER_NODE_IP = "worker_node_ip"
WORKER_NODE_ID = "worker_node_id"
WORKER_PID = "worker_pid"
TRAINING_ITERATION = "training_iteration"  # Ray Tune's own counter of a trial's results

# The first report after a resume: the run's curve so far, [{step, timestamp, CURVES...}], so
# the sweep logs the points it never received (a killed driver's last ones). Not a number.
CURVE_SO_FAR = "curve_so_far"
# Logged as curves on every trial's MLflow run.
CURVES = (
    EVAL_EXACT,
    EVAL_F1,
    EVAL_HAS_ANS_F1,
    EVAL_NO_ANS_F1,
    EVAL_HAS_ANS_EXACT,
    EVAL_NO_ANS_EXACT,
    EVAL_BEST_EXACT,
    EVAL_BEST_F1,
    EVAL_BEST_EXACT_THRESH,
    EVAL_BEST_F1_THRESH,
    ERRORS_PARTIAL,
    ERRORS_NO_OVERLAP,
    ERRORS_ANSWERABLE_EMPTY,
    ERRORS_UNANSWERABLE_ANSWERED,
    ERRORS_LENGTH_DIFF,
    EVAL_LOSS,
    EVAL_PERPLEXITY,
    TRAIN_LOSS,
    LEARNING_RATE,
    PEAK_MEMORY_MB,
    PEAK_ALLOCATED_MB,
    PEAK_TRAIN_MEMORY_MB,
    PEAK_EVAL_MEMORY_MB,
    MODEL_FOOTPRINT_MB,
    TRAINABLE_PARAMS,
    TOTAL_PARAMS,
    TRAIN_SAMPLES_PER_SECOND,
    EVAL_LATENCY_MS,
    EVAL_SECONDS,
    EPOCH,
    STEP,
    TRAIN_SECONDS,
)

# How the console, the progress log and the tables name a metric.
LABELS = {
    EVAL_F1: "F1",
    EVAL_EXACT: "EM",
    EVAL_LOSS: "eval loss",
    EVAL_PERPLEXITY: "perplexity",
    PEAK_MEMORY_MB: "peak memory MB",
    PREDICTED_PEAK_MEMORY_MB: "predicted MB",
    MODEL_FOOTPRINT_MB: "weights MB",
    EVAL_LATENCY_MS: "latency ms/q",
}

# MLflow tags (a trial's run, the sweep's parent run).
TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP = "qa_ray.sweep"
TAG_TRIAL_ID = "qa_ray.trial_id"
TAG_TRIAL_NAME = "qa_ray.trial_name"
TAG_NODE = "qa_ray.node_ip"
TAG_NODE_ID = "qa_ray.node_id"  # several Ray nodes can share one IP (and do, in the tests)
TAG_ROLE = "qa_ray.role"
# How a trial ended: complete | pruned (stopped early by the scheduler) | infeasible (over a
# budget, or out of memory: the reason is in TAG_INFEASIBLE); pruned trials carry the value of
# the scheduler's time attribute where they stopped in TAG_STOPPED_EARLY_AT.
TAG_OUTCOME = "qa_ray.outcome"
TAG_INFEASIBLE = "qa_ray.infeasible"
TAG_STOPPED_EARLY_AT = "qa_ray.stopped_early_at"
TAG_ERROR = "error"  # a failed trial's exception, first 4000 characters
TAG_CHECKPOINT = "qa_ray.checkpoint"  # the trial's newest checkpoint, where Ray Train keeps it
# The key Ray's TuneReportCallback adds to a Tune result that came with a checkpoint
# (ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY; importing it loads Ray Train).
CHECKPOINT_PATH = "checkpoint_path"
# On a trial's run: what its peak taught the sweep's memory model (JSON: the sampled config,
# the peak, the steps taken, whether it is a lower bound), so a resumed sweep learns it again.
TAG_MEMORY_SEEN = "qa_ray.memory_seen"
# On the parent run: the reference point (JSON list) its hypervolume curve was logged against.
TAG_HYPERVOLUME_REFERENCE = "qa_ray.hypervolume_reference"
TAG_PARETO_OPTIMAL = "pareto_optimal"  # "true" | "false", on every scored trial
TAG_PARETO_RANK = "pareto_rank"  # 0 is the front; absent when the trial is not ranked
PARETO_FRONT_SIZE = "pareto_front_size"  # parent-run metrics
HYPERVOLUME = "hypervolume"

# Metrics a sweep may optimize or constrain: what the training loop reports as numbers.
OBJECTIVES = (
    EVAL_F1,
    EVAL_EXACT,
    EVAL_HAS_ANS_F1,
    EVAL_NO_ANS_F1,
    EVAL_LOSS,
    EVAL_PERPLEXITY,
    PEAK_MEMORY_MB,
    MODEL_FOOTPRINT_MB,
    TRAINABLE_PARAMS,
    EVAL_LATENCY_MS,
    TRAIN_LOSS,
    TRAIN_SAMPLES_PER_SECOND,
)

# The objectives a higher value is better on (the others: lower is better).
HIGHER_IS_BETTER = (EVAL_F1, EVAL_EXACT, EVAL_HAS_ANS_F1, EVAL_NO_ANS_F1, TRAIN_SAMPLES_PER_SECOND)


def finite_numbers(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a reported result, as floats (no bools, NaN, inf, text or None)."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def eval_key(score_name: str) -> str:
    """The reported metric of a task's score: ``f1`` -> ``eval_f1``."""
    return f"eval_{score_name}"
