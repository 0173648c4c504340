"""The rules a replay compares: the two schedulers a sweep can run (from a ``search.scheduler``
block), and baselines from the literature, each a Ray Tune scheduler driven as a sweep drives
one (:mod:`qa_ray.report.replay`).

    from qa_ray.report.replay_rules import baselines, from_block
    rule = from_block({"type": "memory_aware", "grace": 8, "noise_floor": 1.5})

Baselines, against running everything:

- a random 40 % of the configurations, run to their end (the rest not at all);
- the top third on the first objective after the first rung;
- **start many, stop early** (Dodge et al. 2020, arXiv:2002.06305): every trial trains to a
  fraction ``f`` of its steps (0.2 and 0.3), the best ``p`` of them go on to the end;
- **one epoch, then the top K** (Egele et al. 2023, arXiv:2307.15422): every trial trains one
  epoch, the best ``K`` (a quarter of the draw's configurations) go on. A table whose rows
  record no epoch judges at the first evaluation, the cheapest fidelity it holds, and says so.

Both papers judge all trials at once, after all of them reached the point; a stopping scheduler
cannot wait, so a trial is judged against those that reached the point before it (as ASHA
judges a rung), and the first ones always go on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from qa_ray import metrics as m
from qa_ray.report.replay import Rule, Table

__all__ = ["TopAtPoint", "baselines", "block_name", "from_block", "scheduler_from_block"]

# A block's fields and their defaults (qa_ray.sweep.config.SchedulerConfig's), for its name.
_DEFAULTS = {"time_attr": m.STEP, "reduction_factor": 3.0, "noise_floor": 1.0,
             "memory_slack": 0.0, "min_signal": None, "signal_trials": 5, "warmup": 0.0,
             "alpha": 0.05, "test": "sign"}  # fmt: skip
_MEMORY_AWARE = ("noise_floor", "memory_slack", "min_signal", "signal_trials", "warmup")
_RACE = ("alpha", "test", "warmup")


class TopAtPoint(FIFOScheduler):
    """At its first result at or past a point, a trial goes on if it is among the best of the
    trials that reached the point so far (by the first objective); it is never judged again.

    Args:
        objective: ``(metric, mode)``.
        step: the point, in steps; or ``fraction``: of the steps the trial plans; or
            ``epoch``: the point in epochs, where results carry one (else ``step``).
        keep: the share that goes on (place ``i``, 0 best, of ``n``: ``i <= keep * n``);
            or ``top_k``: the best ``top_k`` go on.
    """

    def __init__(
        self,
        objective: tuple[str, str],
        *,
        step: float | None = None,
        fraction: float | None = None,
        epoch: float | None = None,
        keep: float | None = None,
        top_k: int | None = None,
    ):
        super().__init__()
        self.objective, self.step, self.fraction, self.epoch = objective, step, fraction, epoch
        self.keep, self.top_k = keep, top_k
        self.seen: dict[str, float] = {}

    def _reached(self, result: Mapping[str, Any]) -> bool:
        if self.epoch is not None and result.get(m.EPOCH) is not None:
            return result[m.EPOCH] >= self.epoch
        if self.fraction is not None:
            return result.get(m.STEP, 0) >= self.fraction * (result.get(m.PLANNED_STEPS) or 0)
        return result.get(m.STEP, 0) >= (self.step or 0)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        if trial.trial_id in self.seen or not self._reached(result):
            return TrialScheduler.CONTINUE
        metric, mode = self.objective
        v = result.get(metric)
        v = -math.inf if v is None else v * (1 if mode == "max" else -1)
        self.seen[trial.trial_id] = v
        place = sorted(self.seen.values(), reverse=True).index(v)
        if self.top_k is not None:
            goes_on = place < self.top_k
        else:
            goes_on = place <= (self.keep or 0) * len(self.seen)
        go = result.get(m.FINAL_REPORT) or goes_on
        return TrialScheduler.CONTINUE if go else TrialScheduler.STOP


def _has_epochs(table: Table) -> bool:
    return any(r.get(m.EPOCH) is not None for t in table.trials for r in t["rows"])


def baselines(table: Table, top_rung: float, fractions: Sequence[float] = (0.2, 0.3),
              keep: float = 0.25) -> list[Rule]:  # fmt: skip
    """Run everything, a random 40 %, the top third after ``top_rung``, start many / stop
    early at each fraction, one epoch then the top K."""
    obj = table.objectives[0]
    first = min(r[m.STEP] for t in table.trials for r in t["rows"]) if table.trials else 1
    epochs = _has_epochs(table)
    egele = "1 epoch, top K" if epochs else f"1st eval ({first:g}), top K"
    rules = [
        Rule("run everything", lambda t, n: FIFOScheduler()),
        Rule("random 40 %", lambda t, n: FIFOScheduler(), fraction=0.4),
        Rule(
            f"top third after {top_rung:g}", lambda t, n: TopAtPoint(obj, step=top_rung, keep=1 / 3)
        ),  # fmt: skip
    ]
    for f in fractions:
        rules.append(Rule(f"all to {f:.0%}, top {keep:.0%}",
                          lambda t, n, f=f: TopAtPoint(obj, fraction=f, keep=keep)))  # fmt: skip
    rules.append(
        Rule(
            egele,
            lambda t, n: TopAtPoint(
                obj, step=first, epoch=1.0 if epochs else None, top_k=max(1, math.ceil(n / 4))
            ),
        )  # fmt: skip
    )
    return rules


def scheduler_from_block(block: Mapping[str, Any], table: Table) -> TrialScheduler:
    """The scheduler a ``search.scheduler`` block names, built as a sweep builds it
    (``qa_ray.sweep.tuner.build_scheduler``; no state file)."""
    from qa_ray.search.schedulers.mo_asha import MOASHA

    b = {**_DEFAULTS, **block}
    common = {"time_attr": b["time_attr"], "grace": b["grace"],
              "reduction_factor": b["reduction_factor"], "constraints": table.constraints}  # fmt: skip
    kind = b.get("type", "mo_asha")
    if kind == "memory_aware":
        from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping

        return MemoryAwareStopping(table.objectives, **common,
                                   **{k: b[k] for k in _MEMORY_AWARE})  # fmt: skip
    if kind == "race":
        from qa_ray.search.schedulers.race import PairedRace

        return PairedRace(table.objectives, **common, **{k: b[k] for k in _RACE})
    return MOASHA(table.objectives, **common)


def block_name(block: Mapping[str, Any]) -> str:
    """A block as one short line: its type, grace and reduction factor (and memory_aware's
    noise floor and slack), then the other fields not at their defaults."""
    b = {**_DEFAULTS, **block}
    kind = b.pop("type", "mo_asha")
    shown = ["reduction_factor"] + {
        "memory_aware": ["noise_floor", "memory_slack"], "race": ["alpha", "test"]
    }.get(kind, [])  # fmt: skip
    label = {"reduction_factor": "rf", "noise_floor": "nf", "memory_slack": "slack"}
    parts = [str(kind), f"grace {b.pop('grace'):g}"]
    for k, v in b.items():
        if k in shown or v != _DEFAULTS.get(k):
            parts.append(f"{label.get(k, k)} {v:g}" if isinstance(v, float | int) else f"{k} {v}")
    return " ".join(parts)


def from_block(block: Mapping[str, Any], name: str | None = None) -> Rule:
    """A rule that runs what a ``search.scheduler`` block names."""
    block = dict(block)
    return Rule(name or block_name(block), lambda t, n: scheduler_from_block(block, t),
                block=block)  # fmt: skip
