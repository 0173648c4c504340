"""The sweep file: the trial blocks plus search, objectives, tracking and storage.

qa-ray validate sweeps/quickstart.yaml
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from qa_ray import metrics as m
from qa_ray.config.files import (
    check_file_kind,
    did_you_mean,
    load_yaml,
    overridden,
    validate_model,
)
from qa_ray.config.paths import absolutize_paths, local_path_errors
from qa_ray.config.trial import (
    Block,
    Budget,
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
from qa_ray.search.checks import axis_errors, initial_point_errors
from qa_ray.search.space import SearchSpace, valid_axes
from qa_ray.sweep.shipped import shipped_space
from qa_ray.tasks import FACTS

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Objective",
    "SchedulerConfig",
    "SearchConfig",
    "SweepConfig",
    "TrackingConfig",
    "load_sweep_config",
    "overrides_without_credentials",
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
            raise ValueError(
                f"unknown metric, expected one of {list(OBJECTIVE_METRICS)}, but got {v!r}"
                + did_you_mean(v, OBJECTIVE_METRICS)
            )
        return v


# The fields of SchedulerConfig that only the memory_aware rule reads, and the race's.
MEMORY_AWARE_ONLY = ("noise_floor", "memory_slack", "min_signal", "signal_trials", "warmup")
RACE_ONLY = ("alpha", "test", "warmup")
OWN_FIELDS = {"mo_asha": (), "memory_aware": MEMORY_AWARE_ONLY, "race": RACE_ONLY}


class SchedulerConfig(Block):
    """Multi-objective early stopping: ``mo_asha`` (successive halving on Pareto rank),
    ``memory_aware`` (stop only behind a trial with no more memory, by ``noise_floor``) or
    ``race`` (stop only behind a trial with no more memory that wins per question, by a
    paired test at level ``alpha``)."""

    type: Literal["mo_asha", "memory_aware", "race"] = Field(
        "mo_asha",
        description="mo_asha: keep the best 1/rf by Pareto rank at each rung; memory_aware: "
        "stop only behind a trial with no more memory; race: stop only behind a trial with "
        "no more memory that beats it on the same questions (paired test)",
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
        0.0, ge=0, description="memory_aware, race: no trial is judged at a rung below it"
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="race: the chance, per trial, of a stop while no trial with no more "
        "memory is ahead of it",
    )
    test: Literal["sign", "t"] = Field(
        "sign",
        description="race: the paired test over per-question scores: sign (exact) or t "
        "(paired t-test)",
    )

    @model_validator(mode="after")
    def _own_fields(self) -> SchedulerConfig:
        # Another type's field is refused when it would matter (not at its default): dumps of
        # a sweep's config (its resume state, its curve table) hold every field at its
        # default and are validated again.
        fields = type(self).model_fields
        for kind, own in OWN_FIELDS.items():
            if kind == self.type:
                continue
            foreign = [
                k
                for k in own
                if k not in OWN_FIELDS[self.type] and getattr(self, k) != fields[k].default
            ]
            if foreign:
                raise ValueError(
                    f"{kind}'s fields ({', '.join(f'`{k}`' for k in foreign)}) are ignored by "
                    f"type {self.type!r}: remove them or set `type: {kind}`, but got "
                    f"({', '.join(f'{k}={getattr(self, k)!r}' for k in foreign)})"
                )
        return self


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
        None,
        description="MLflow URI; --tracking-uri wins over it; with neither, MLFLOW_TRACKING_URI, "
        "then sqlite:///mlflow.db",
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
    constraints: list[Budget] = Field(
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
        sc = self.search.scheduler
        if sc is not None and sc.type == "race":
            learning = [n for n in names if n not in m.BUDGET_METRICS]
            if not learning or learning[0] not in (m.EVAL_F1, m.EVAL_EXACT):
                raise ValueError(
                    "`search.scheduler`: a race compares trials per question, so the first "
                    "objective that learns must be eval_f1 or eval_exact, but got objectives "
                    f"{names}"
                )
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


def load_sweep_config(
    path: str | os.PathLike, overrides: list[str] = (), constraints: list[str] = ()
) -> SweepConfig:
    """Loads a sweep file, applies overrides, resolves its search-space file, validates all,
    and loads local data files to validate their records too.

    Every stage runs whatever the others found, so one report holds every problem: the sweep
    file's fields, its search space, the trials its axes and initial points would sample
    (each checked as a whole trial config), missing local files and bad data records.

    Args:
        path: the sweep file.
        overrides: ``dotted.key=value`` overrides, validated like the file.
        constraints: budgets from ``--constraint``, added to the file's and named by the flag.

    Raises:
        ConfigError: every problem, in the sweep file, its search-space file, the command
            line and its local data files (a trial file is refused with the command that runs
            it).
    """
    source = str(path)
    raw = load_yaml(path)
    check_file_kind(raw, source, "sweep")
    data, errors = overridden(raw, list(overrides))
    data, flagged = _with_flag_constraints(data, list(constraints))
    errors += flagged
    cfg = None
    try:
        cfg = validate_model(SweepConfig, data, source)
    except ConfigError as exc:
        errors += exc.errors
    search = data.get("search") if isinstance(data.get("search"), dict) else {}
    space = _search_space(search.get("space"), cfg)
    errors += space.errors
    base = cfg.trial_config().model_dump() if cfg is not None else _trial_blocks(data)
    if base is not None:
        errors += axis_errors(space.params, base)
        points = search.get("initial_points")
        if isinstance(points, list) and space.names is not None:
            errors += initial_point_errors(points, space.params, space.names, base)
    path_errors = local_path_errors(base if base is not None else {})
    errors += path_errors
    if cfg is not None and not path_errors:
        errors += _data_errors(cfg.trial_config())
    if errors:
        raise ConfigError(source, errors)
    trial = absolutize_paths(cfg.trial_config())
    return cfg.model_copy(
        update={
            "search": cfg.search.model_copy(update={"space": space.space}),
            "model": trial.model,
            "data": trial.data,
            "train": cfg.train.model_copy(update={"distill": trial.train.distill}),
            "storage_path": cfg.storage_path
            if "://" in cfg.storage_path
            else os.path.abspath(os.path.expanduser(cfg.storage_path)),
        }
    )


def _with_flag_constraints(data: dict[str, Any], flags: list[str]) -> tuple[dict, list[str]]:
    """The sweep with the ``--constraint`` budgets added to its own, and one error, naming
    the flag, for each budget that is malformed or on a metric the task never reports."""
    if not flags:
        return data, []
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    task = model.get("task", "extractive")
    good, errors = [], []
    for text in flags:
        try:
            parse_constraints([text], task if task in FACTS else None)
            good.append(text)
        except ValueError as exc:
            errors.append(f"`--constraint`: {exc}")
    own = data.get("constraints")
    if own is None or isinstance(own, list):
        data = {**data, "constraints": [*(own or []), *good]}
    return data, errors


@dataclass(frozen=True)
class _Space:
    """A sweep's search space as far as it validates."""

    space: SearchSpace | None  # None: invalid
    names: list[str] | None  # every axis name, valid or not (None: no params to read)
    params: dict[str, Any]  # the axes valid on their own
    errors: list[str]  # those the sweep's own validation did not report


def _search_space(space: Any, cfg: SweepConfig | None) -> _Space:
    """The sweep's search space, inline or in a file (a shipped one by its file name)."""
    if isinstance(space, dict):  # inline: the sweep's validation reported its errors
        if cfg is not None:
            return _Space(cfg.space, sorted(cfg.space.params), cfg.space.params, [])
        params = space.get("params")
        names = sorted(params) if isinstance(params, dict) else None
        return _Space(None, names, valid_axes(params), [])
    if not isinstance(space, str):
        return _Space(None, None, {}, [])  # missing or not a path: the sweep's validation
    space_path = Path(space)
    if not space_path.is_file():
        # Not here: the shipped space of that name, so a copied shipped sweep runs anywhere.
        space_path = shipped_space(space) or space_path
    if not space_path.is_file():
        return _Space(None, None, {}, [
            f"`search.space`: search-space file not found, but got {space!r} (relative to "
            f"{os.getcwd()}, and qa-ray ships no space by that file name: `qa-ray sweeps list`)"
        ])  # fmt: skip
    try:
        raw = load_yaml(space_path)
    except ConfigError as exc:
        return _Space(None, None, {}, [f"{exc.source}: {e}" for e in exc.errors])
    params = raw.get("params")
    names = sorted(params) if isinstance(params, dict) else None
    try:
        valid = validate_model(SearchSpace, raw, str(space_path))
    except ConfigError as exc:
        return _Space(None, names, valid_axes(params), [f"{exc.source}: {e}" for e in exc.errors])
    return _Space(valid, names, valid.params, [])


def _trial_blocks(data: dict[str, Any]) -> dict[str, Any] | None:
    """The trial part of a raw sweep mapping that failed validation, without its unknown keys
    (reported already), so a misspelt key hides no rule between two fields; None when a block
    is not even a mapping."""
    from pydantic import ValidationError

    names = ("model", "data", "train", "resources")
    if any(not isinstance(data.get(k, {}), dict) for k in names):
        return None
    blocks = {k: dict(data[k]) for k in names if k in data}
    blocks |= {k: data[k] for k in ("name", "constraints") if k in data}
    try:
        TrialConfig.model_validate(blocks)
    except ValidationError as exc:
        for e in exc.errors():
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 2 and e["loc"][0] in names:
                del blocks[e["loc"][0]][e["loc"][1]]
    return blocks


def _data_errors(trial: TrialConfig) -> list[str]:
    """Local data are loaded and validated now, so a bad record is reported (exit 2) before
    any cluster work; hub datasets are checked where the trials load them."""
    trial = absolutize_paths(trial)
    sources = [p for p in (trial.data.path, trial.data.eval_path) if p is not None]
    if not all(os.path.exists(p) for p in sources):
        return []
    try:
        FACTS[trial.model.task].load_train_eval(trial.data)
    except ConfigError as exc:  # a DataError: its file is its source
        return [f"{exc.source}: {e}" for e in exc.errors]
    return []


def overrides_without_credentials(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The overrides with their credentials taken out, as ``--tracking-uri`` has them taken
    out: ``tracking.tracking_uri=http://user:secret@host`` becomes ``...=http://host`` and its
    credentials MLflow's environment variables (returned); a password in any other URL is
    masked (``user:***@host``), as nothing reads it from the environment.

    For what is printed (the command that resumes a sweep) and sent (a Ray job's command
    line, which Ray shows).
    """
    from qa_ray.tracking.runs import redact_uri, split_credentials

    clean, env = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "@" not in value or "://" not in value:
            clean.append(item)
            continue
        try:
            if key == "tracking.tracking_uri":
                value, found = split_credentials(value)
                env.update(found)
            else:
                value = redact_uri(value)
        except ValueError:  # not a URL after all (urlsplit refused it)
            pass
        clean.append(f"{key}={value}")
    return clean, env
