"""The sweep file: the trial blocks plus search, objectives, tracking and storage.

qa-ray validate sweeps/quickstart.yaml
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qa_ray import metrics as m
from qa_ray.config.files import apply_overrides, load_yaml, validate_model
from qa_ray.config.paths import absolutize_paths, check_local_paths
from qa_ray.config.trial import (
    Block,
    DataConfig,
    ModelConfig,
    ResourcesConfig,
    TrainConfig,
    TrialConfig,
    check_precision,
    check_windows,
    parse_constraints,
)
from qa_ray.errors import ConfigError
from qa_ray.search.space import SearchSpace, invalid_axis_values
from qa_ray.sweep.shipped import shipped_space
from qa_ray.tasks import FACTS

__all__ = [
    "Objective",
    "SchedulerConfig",
    "SearchConfig",
    "SweepConfig",
    "TrackingConfig",
    "load_sweep_config",
]

OBJECTIVE_METRICS = m.OBJECTIVES


class Objective(Block):
    """One objective of the search: a metric the task reports and its direction."""

    metric: str = Field(description="a metric name of qa_ray.metrics.OBJECTIVES")
    mode: Literal["min", "max"] = Field(description="minimize or maximize it")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {v!r}, expected one of {list(OBJECTIVE_METRICS)}")
        return v


class SchedulerConfig(Block):
    """Multi-objective early stopping: ``mo_asha`` (successive halving on Pareto rank) or
    ``memory_aware`` (stop only behind a trial with no more memory, by ``noise_floor``)."""

    type: Literal["mo_asha", "memory_aware"] = Field(
        "mo_asha",
        description="mo_asha: keep the best 1/rf by Pareto rank at each rung; memory_aware: "
        "stop only behind a trial with no more memory",
    )
    time_attr: Literal["step", "train_seconds"] = Field(
        "step", description="what the rungs count: optimizer steps or seconds of training"
    )
    grace: float = Field(
        gt=0, description="the first rung: no trial is stopped before it (in time_attr units)"
    )
    reduction_factor: float = Field(
        3.0,
        gt=1,
        description="rungs at grace x rf^k; a trial goes on past a rung if it is in "
        "the best 1/rf of the trials that reached it",
    )
    noise_floor: float = Field(
        1.0,
        ge=0,
        description="memory_aware: how far ahead (F1 points) a trial with no more memory "
        "must be to stop another",
    )
    memory_slack: float = Field(
        0.0,
        ge=0,
        description="memory_aware: the trial ahead may use up to this fraction more memory "
        "(0: no more)",
    )
    min_signal: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="memory_aware: a rung judges only once the trials run to their end rank "
        "there as at their end, by at least this rank correlation (null: always judges)",
    )
    signal_trials: int = Field(
        5, ge=3, description="memory_aware: the trials run to their end that min_signal needs"
    )
    warmup: float = Field(
        0.0, ge=0, description="memory_aware: no trial is judged at a rung below it"
    )


class SearchConfig(Block):
    """What to search and how: a space (file path or inline), sampler, budget."""

    space: str | SearchSpace = Field(description="a search_spaces/*.yaml path, or inline")
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe", description="Optuna's TPE (multi-objective, constrained), NSGA-II, or random"
    )
    seed: int = Field(0, description="the sampler's seed")
    num_samples: int = Field(8, ge=1, description="trials in the sweep")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="default: as many as the cluster's resources allow"
    )
    initial_points: list[dict[str, Any]] = Field(
        default_factory=list,
        description="configurations to try first (axis: value), e.g. a known-good baseline",
    )
    scheduler: SchedulerConfig | None = Field(
        None, description="early stopping of trials that trail the others at a rung"
    )
    memory_admission: bool = Field(
        True,
        description="with a `peak_memory_mb` budget, sampled configurations predicted over it "
        "beyond the prediction's uncertainty are not launched (told to Optuna infeasible); "
        "false launches every one and the loop's budget check stops those that break it",
    )


class TrackingConfig(Block):
    """Where the MLflow runs go."""

    tracking_uri: str | None = Field(
        None, description="MLflow URI; else --tracking-uri, MLFLOW_TRACKING_URI, then local"
    )
    experiment_name: str = Field(
        "qa-ray", description="the MLflow experiment holding the sweep's parent run"
    )


class SweepConfig(Block):
    """One sweep: trial blocks shared by every trial, plus the search around them."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the sweep's name: its MLflow parent run, its folder under storage_path",
    )
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    search: SearchConfig
    objectives: list[Objective] = Field(
        default_factory=lambda: [
            Objective(metric=m.EVAL_F1, mode="max"),
            Objective(metric=m.PEAK_MEMORY_MB, mode="min"),
        ],
        min_length=1,
        description="what the search optimizes, each with its direction",
    )
    constraints: list[str] = Field(
        default_factory=list,
        description="budgets the search knows, e.g. ['peak_memory_mb <= 22000']: the sampler "
        "learns them, and a trial that breaks one stops at that measurement",
    )
    tracking: TrackingConfig = TrackingConfig()
    storage_path: str = Field(
        "runs",
        description="Ray results (and, for a local folder, the Optuna study) live here: a "
        "folder, or a bucket URI (s3://, gs://) that every node of a cluster can reach",
    )

    @model_validator(mode="after")
    def _distinct_objectives(self) -> SweepConfig:
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"`objectives` must name distinct metrics, but got {names}")
        scores = {m.eval_key(s) for s in FACTS[self.model.task].scores}
        never = [n for n in names if n.startswith("eval_") and n != m.EVAL_LATENCY_MS]
        never = [n for n in never if n not in scores]
        if never:
            raise ValueError(
                f"`objectives`: task {self.model.task!r} never reports {never} (its scores: "
                f"{sorted(scores)}), but got {names}"
            )
        try:
            parse_constraints(self.constraints, self.model.task)
        except ValueError as exc:
            raise ValueError(f"`constraints`: {exc}") from None
        check_windows(self.model, self.data)
        check_precision(self.model, self.train)
        return self

    def trial_config(self) -> TrialConfig:
        """The trial blocks as a :class:`TrialConfig` (what every trial starts from).

        With MO-ASHA on steps and neither ``train.eval_steps`` nor ``train.eval_at_steps``
        set, trials evaluate at the rungs (up to ``train.max_steps``, or the first 12), so
        each is judged where it reaches one and no evaluation is spent in between.
        """
        train = self.train
        sc = self.search.scheduler
        if sc and sc.time_attr == m.STEP and not train.eval_steps and not train.eval_at_steps:
            rungs = [sc.grace * sc.reduction_factor**k for k in range(12)]
            steps = sorted({math.ceil(r) for r in rungs if r <= (train.max_steps or math.inf)})
            train = train.model_copy(update={"eval_at_steps": steps})
        return TrialConfig(
            name=self.name,
            model=self.model,
            data=self.data,
            train=train,
            resources=self.resources,
            constraints=self.constraints,
        )

    @property
    def space(self) -> SearchSpace:
        assert isinstance(self.search.space, SearchSpace), "call load_sweep_config()"
        return self.search.space


def load_sweep_config(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    """Loads a sweep file, applies overrides, resolves its search-space file, validates all,
    and loads local data files to validate their records too.

    Raises:
        ConfigError: every problem, in the sweep file and in its search-space file, or
            (:class:`~qa_ray.data.DataError`) in a local data file.
    """
    data = apply_overrides(load_yaml(path), list(overrides))
    cfg = validate_model(SweepConfig, data, str(path))
    space = cfg.search.space
    if isinstance(space, str):
        space_path = Path(space)
        if not space_path.is_file():
            # Not here: the shipped space of that name, so a copied shipped sweep runs anywhere.
            space_path = shipped_space(space) or space_path
        if not space_path.is_file():
            raise ConfigError(
                str(path),
                [
                    f"`search.space`: search-space file not found, but got {space!r} (relative "
                    f"to {os.getcwd()}, and qa-ray ships no space by that file name: "
                    "`qa-ray sweeps list`)"
                ],
            )
        space = validate_model(SearchSpace, load_yaml(space_path), str(space_path))
    unknown = [
        f"`search.initial_points[{i}].{k}`: not an axis of the search space {sorted(space.params)}"
        for i, point in enumerate(cfg.search.initial_points)
        for k in point
        if k not in space.params
    ]
    distill_axes = sorted(a for a in space.params if a.startswith("distill_"))
    if distill_axes and cfg.train.distill is None:
        unknown.append(
            f"`search.space`: the axes {distill_axes} need `train.distill` (its teacher), but "
            "got (train.distill=None)"
        )
    unknown += invalid_axis_values(space, cfg.trial_config())
    if unknown:
        raise ConfigError(str(path), unknown)
    check_local_paths(cfg.trial_config(), str(path))
    trial = absolutize_paths(cfg.trial_config())
    # Local data are loaded and validated now, so a bad record is reported (exit 2) before any
    # cluster work; hub datasets are checked where the trials load them.
    sources = [p for p in (trial.data.path, trial.data.eval_path) if p is not None]
    if all(os.path.exists(p) for p in sources):
        FACTS[trial.model.task].load_train_eval(trial.data)
    return cfg.model_copy(
        update={
            "search": cfg.search.model_copy(update={"space": space}),
            "model": trial.model,
            "data": trial.data,
            "train": cfg.train.model_copy(update={"distill": trial.train.distill}),
            "storage_path": cfg.storage_path
            if "://" in cfg.storage_path
            else os.path.abspath(os.path.expanduser(cfg.storage_path)),
        }
    )
