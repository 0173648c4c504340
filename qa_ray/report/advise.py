"""Advice for the next sweep from the last one: which ``search.scheduler`` block (or none),
chosen by cross-validation over the sweep's own configurations, and the report
``qa-ray replay`` prints.

    qa-ray replay benchmarks/curves/minilm_squad_v1_a.json

Cross-validation: the configurations are split in two halves at random, many times. On one half
every candidate block (MO-ASHA and memory_aware over the table's evaluation steps, reduction
factors, noise floors and memory slacks) is replayed (:mod:`qa_ray.report.replay`: the real
schedulers, 1 and 4 workers, random orders), and the cheapest in seconds that keeps ``keep``
(0.95) of running everything's hypervolume, as the IQM over draws in each worker cell, is
chosen; the choice is then replayed on the other half. The block chosen on most splits is the
recommendation, with what it kept and saved on the halves it was not chosen on; it is withheld
("none") when none was chosen most often, or when it loses more than ``1 - keep`` of the
hypervolume, as its IQM over the held-out halves or replayed on every configuration (a half
holds fewer trials per rung than the sweep did).
"""

from __future__ import annotations

import collections
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qa_ray import metrics as m
from qa_ray.report.replay import MEASURED, Costs, Rule, Table, TableError, config_key, iqm, replay
from qa_ray.report.replay_rules import from_block

__all__ = [
    "MIN_TRIALS",
    "Advice",
    "candidate_blocks",
    "cross_validate",
    "format_advice",
    "has_per_question",
    "pool",
    "separation_step",
]

MIN_TRIALS = 8  # fewer run-to-end trials than this: halves of 4 say nothing
SEPARATES = 0.5  # the rank correlation with the end at which curves are said to separate


@dataclass
class Advice:
    """What cross-validation found: the block to run (``None``: none) and its held-out
    figures over the splits (hypervolume kept and seconds spent, relative to running
    everything), and what each split chose."""

    block: dict[str, Any] | None
    reason: str
    splits: int
    half: int
    chosen: list[str | None] = field(default_factory=list)  # per split, block_name or None
    held_hv: list[float] = field(default_factory=list)  # the recommended block's, per split
    held_seconds: list[float] = field(default_factory=list)
    held_steps: list[float] = field(default_factory=list)
    procedure_hv: list[float] = field(default_factory=list)  # each split's own choice's
    procedure_seconds: list[float] = field(default_factory=list)
    whole: tuple[float, float, float] | None = None  # the block on every configuration
    # per split, per candidate: (hypervolume IQM of the worst cell, seconds, steps)
    tuned: list[dict[str, tuple[float, float, float]]] = field(default_factory=list)
    held: list[dict[str, tuple[float, float, float]]] = field(default_factory=list)


def eval_steps(table: Table) -> list[float]:
    """The steps at which the table's trials were evaluated, before the last."""
    last = max(t["rows"][-1][m.STEP] for t in table.trials)
    return sorted({r[m.STEP] for t in table.trials for r in t["rows"] if r[m.STEP] < last})


def has_per_question(table: Table) -> bool:
    """Whether the table's trials carry per-question scores (what a race compares)."""
    return any(r.get(m.PER_QUESTION) for t in table.trials for r in t["rows"])


def candidate_blocks(table: Table, noise: float | None = None) -> list[dict[str, Any]]:
    """The blocks cross-validation chooses among: graces at the table's evaluation steps up
    to half its last step; MO-ASHA at rf 2 and 3; memory_aware at rf 3, noise floors 1, 2, 4
    F1 (and the measured seed-to-seed gap) and memory slack 0 and 0.3; where the table holds
    per-question scores, the race at rf 2, alpha 0.05, with the sign test and the t-test."""
    last = max(t["rows"][-1][m.STEP] for t in table.trials)
    graces = [s for s in eval_steps(table) if s <= last / 2] or [last / 2]
    floors = sorted({1.0, 2.0, 4.0, *([round(noise, 1)] if noise else [])})
    blocks: list[dict[str, Any]] = []
    for g in graces:
        blocks += [{"type": "mo_asha", "grace": g, "reduction_factor": rf} for rf in (2.0, 3.0)]
        blocks += [
            {
                "type": "memory_aware",
                "grace": g,
                "reduction_factor": 3.0,
                "noise_floor": nf,
                "memory_slack": sl,
            }  # fmt: skip
            for nf in floors
            for sl in (0.0, 0.3)
        ]
        if has_per_question(table):
            blocks += [
                {"type": "race", "grace": g, "reduction_factor": 2.0, "alpha": 0.05, "test": t}
                for t in ("sign", "t")
            ]
    return blocks


def _scores(
    table: Table, rules: Sequence[Rule], workers: Sequence[int], draws: int, seed: int, costs: Costs
) -> dict[str, tuple[float, float, float]]:
    """Per rule on ``table``: the worst cell's hypervolume IQM, the mean seconds and steps."""
    cells = [replay(table, rules, len(table.trials), w, draws, seed, costs, bootstrap=False)
             for w in workers]  # fmt: skip
    return {
        r.name: (
            min(c[r.name]["hv_iqm"] for c in cells),
            statistics.fmean(c[r.name]["seconds"] for c in cells),
            statistics.fmean(c[r.name]["steps"] for c in cells),
        )
        for r in rules
    }


def cross_validate(
    table: Table,
    blocks: Sequence[Mapping[str, Any]],
    splits: int = 20,
    draws: int = 10,
    workers: Sequence[int] = (1, 4),
    keep: float = 0.95,
    seed: int = 0,
    costs: Costs = MEASURED,
) -> Advice:
    """Chooses a block on one half of the configurations, judges it on the other, ``splits``
    times; recommends the block chosen most often if its held-out IQM keeps ``keep``."""
    n = len(table.trials)
    if n < MIN_TRIALS:
        raise TableError(table.source, [f"`trials`: a replay needs at least {MIN_TRIALS} "
                                        f"complete or infeasible trials, but got {n}"])  # fmt: skip
    rules = [from_block(b) for b in blocks]
    rng = random.Random(seed)
    chosen: list[str | None] = []
    tuned, held = [], []
    for s in range(splits):
        order = rng.sample(range(n), n)
        tune, judge = table.subset(order[: n // 2]), table.subset(order[n // 2 :])
        on_tune = _scores(tune, rules, workers, draws, seed + s, costs)
        ok = [(sec, name) for name, (hv, sec, _) in on_tune.items() if hv >= keep and sec < 1]
        chosen.append(min(ok)[1] if ok else None)
        tuned.append(on_tune)
        held.append(_scores(judge, rules, workers, draws, seed + s, costs))
    advice = Advice(None, "", splits, n // 2, chosen, tuned=tuned, held=held)
    for name, h in zip(chosen, held, strict=True):
        hv, sec, _ = h[name] if name else (1.0, 1.0, 1.0)
        advice.procedure_hv.append(hv)
        advice.procedure_seconds.append(sec)
    votes = collections.Counter(chosen).most_common()
    best = min(votes, key=lambda v: (-v[1], v[0] is not None))[0]  # a tie: none
    if best is None:
        advice.reason = (f"on {chosen.count(None)} of {splits} tuning halves no block kept "
                         f"{keep:.2f} of the hypervolume for less compute, and no block was "
                         f"chosen more often")  # fmt: skip
        return advice
    advice.held_hv = [h[best][0] for h in held]
    advice.held_seconds = [h[best][1] for h in held]
    advice.held_steps = [h[best][2] for h in held]
    if iqm(advice.held_hv) < keep:
        advice.reason = (f"{best}, chosen most often, kept {iqm(advice.held_hv):.3f} of the "
                         f"hypervolume on the held-out halves, below {keep:.2f}")  # fmt: skip
        return advice
    rule = next(r for r in rules if r.name == best)
    whole = _scores(table, [rule], workers, 4 * draws, seed, costs)[best]
    advice.whole = whole
    if whole[0] < keep:  # halves hold fewer trials per rung than the sweep did
        advice.reason = (f"{best} kept {iqm(advice.held_hv):.3f} on the held-out halves but "
                         f"{whole[0]:.3f} on all {n} configurations, below {keep:.2f}")  # fmt: skip
        return advice
    advice.block = dict(rule.block)
    return advice


def separation_step(signal: Mapping[float, float], last: float) -> float:
    """The first evaluation step whose rank correlation with the end reaches 0.5 (else the
    last step): before it, a rung's ranking says little of the end."""
    return next((s for s, rho in signal.items() if rho >= SEPARATES), last)


def _spread(values: Sequence[float]) -> str:
    v = sorted(values)
    lo, hi = v[int(0.1 * (len(v) - 1))], v[math.ceil(0.9 * (len(v) - 1))]
    return f"{lo:.2f}-{hi:.2f}"


def format_advice(advice: Advice, separation: float, workers: Sequence[int], draws: int) -> str:
    """The recommendation (a YAML block, or "none: ..."), with its held-out figures."""
    w = " and ".join(str(x) for x in workers)
    chosen = collections.Counter(c or "none" for c in advice.chosen)
    head = (
        f"cross-validation: {advice.splits} splits, each chosen on {advice.half} configurations "
        f"and judged on the others ({w} workers, {draws} orders each); chosen: "
        + ", ".join(f"{k} x{v}" for k, v in chosen.most_common(4))
    )
    proc = (
        f"the choice made on each split, judged on its other half: hypervolume kept IQM "
        f"{iqm(advice.procedure_hv):.3f} (10-90 %: {_spread(advice.procedure_hv)}), seconds "
        f"{statistics.fmean(advice.procedure_seconds):.0%} of running everything"
    )
    saved = [1 - s for s in advice.held_seconds]
    if advice.block is None:
        lines = [head, proc]
        if advice.held_hv:  # the block chosen most often, withheld: what it did
            lines.append(
                f"the block chosen most often, on the held-out halves: hypervolume kept IQM "
                f"{iqm(advice.held_hv):.3f} (10-90 %: {_spread(advice.held_hv)}); compute saved "
                f"{statistics.fmean(saved):.0%} of the seconds (10-90 %: {_spread(saved)})"
            )
        lines.append(f"recommendation: none: your curves do not separate before step "
                     f"{separation:g} ({advice.reason})")  # fmt: skip
        return "\n".join(lines)
    inner = ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                      for k, v in advice.block.items())  # fmt: skip
    return "\n".join(
        [
            head,
            proc,
            "recommendation for the next sweep of this kind:",
            "  search:",
            f"    scheduler: {{{inner}}}",
            f"  expected, on the held-out halves: hypervolume kept IQM {iqm(advice.held_hv):.3f}"
            f" (10-90 %: {_spread(advice.held_hv)}); compute saved "
            f"{statistics.fmean(saved):.0%} of the seconds (10-90 %: {_spread(saved)}), "
            f"{1 - statistics.fmean(advice.held_steps):.0%} of the steps, fixed costs included",
        ]
    )


def pool(tables: Sequence[Table]) -> tuple[Table, list[Table]]:
    """The first table with every other that holds new configurations pooled into it, and
    the others, which rerun the first's configurations (another seed): its noise floor."""
    from qa_ray.report.summary import reference_point

    main, reruns = tables[0], []
    trials = list(main.trials)
    for t in tables[1:]:
        if t.objectives != main.objectives:
            raise TableError(t.source, [f"`objectives` must be the first table's "
                                        f"{list(main.objectives)}, but got {list(t.objectives)}"])  # fmt: skip
        mine = {config_key(x["config"]) for x in main.trials}
        if sum(config_key(x["config"]) in mine for x in t.trials) * 2 >= len(t.trials):
            reruns.append(t)
        else:
            trials += t.trials
    if len(trials) == len(main.trials):
        return main, reruns
    budgets = {c.metric: c.bound for c in main.constraints if c.is_upper}
    ref = reference_point([t["rows"][-1] for t in trials], main.objectives, budgets)
    sources = " + ".join(t.source for t in tables if t is main or t not in reruns)
    return Table(main.objectives, main.constraints, tuple(trials), tuple(ref), sources), reruns
