"""A paired race: a trial is stopped at a rung only when a trial with no more memory beats it
on the same evaluation questions, by a paired test at a stated error rate.

MO-ASHA keeps a share of every rung whatever the gaps; memory_aware stops a trial behind a
noise floor set by hand. Both judge mean F1, and a mean over 100-300 questions has a standard
error of 2-5 points, larger than the gaps an early rung must judge. Two trials evaluated on
the same questions compare paired instead: a question's own difficulty is in both scores and
cancels in their difference, and how many questions a trial wins and loses says how sure the
gap is, with no floor to tune.

At a rung, a trial ``x`` is compared with every trial ``y`` recorded there that needs no more
of every set objective (memory, footprint, parameters: :data:`qa_ray.metrics.BUDGET_METRICS`)
and was scored on the same questions (the first learning objective's per-question score: F1
for ``eval_f1``, exact match for ``eval_exact``; :data:`qa_ray.metrics.PER_QUESTION`). ``x``
stops when one test of "``y`` scores higher than ``x``" rejects at level
``alpha / 2**(j + 1) / c``:

- ``test: sign``: the exact binomial test of the questions ``y`` wins against those it loses
  (ties left out); ``test: t``: the one-sided paired t-test of the per-question differences.
- ``c``: the trials ``x`` is compared with at the rung (Bonferroni), and ``j``: the rungs ``x``
  was raced at before (0 the first; each spends half of what is left). So the chance that a
  trial is ever stopped while no trial with no more memory is truly ahead of it is at most
  ``alpha``, over every rung and rival it meets; over a sweep of ``n`` trials, at most
  ``alpha * n`` such stops are expected.

Never stopped: the lowest-memory trial at the rung (over-budget ones stop at once, as in
MO-ASHA); a trial at a rung inside its learning-rate warmup (the loop's ``warmup_steps``, as
memory_aware reads it); a trial without per-question scores at the rung (it is kept). Rungs,
budgets, the state file and "stopped stays stopped" are MO-ASHA's.

Select it with ``search.scheduler: {type: race, grace: 16, reduction_factor: 2, alpha: 0.05,
test: sign}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from qa_ray import metrics as m
from qa_ray.pareto import Constraint
from qa_ray.search.schedulers.memory_aware import MemoryAwareStopping
from qa_ray.search.schedulers.mo_asha import _number

__all__ = ["PER_QUESTION_KEY", "PairedRace", "paired_p_value"]

logger = logging.getLogger(__name__)

# The learning objectives a race can judge, and the per-question score each is the mean of.
PER_QUESTION_KEY = {m.EVAL_F1: "f1", m.EVAL_EXACT: "exact"}
TESTS = ("sign", "t")


def paired_p_value(ahead: Sequence[float], behind: Sequence[float], test: str = "sign") -> float:
    """The one-sided p-value of "``ahead`` scores higher than ``behind``" over paired scores
    (1.0 where no question tells them apart)."""
    from scipy import stats

    diffs = [a - b for a, b in zip(ahead, behind, strict=True)]
    if test == "sign":
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        if wins + losses == 0:
            return 1.0
        return float(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    if test == "t":
        if len(diffs) < 2 or all(d == diffs[0] for d in diffs):
            # no spread: a t statistic is undefined; a constant gain over many questions is
            # as sure as the sign test makes it
            return paired_p_value(ahead, behind, "sign")
        return float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)
    raise ValueError(f"test must be one of {TESTS}, but got test={test!r}")


class PairedRace(MemoryAwareStopping):
    """Stops a trial only when a trial with no more memory beats it paired, per question.

    Args:
        objectives: ``(metric, "min" | "max")`` pairs, the sweep's objectives; the first
            learning one must be ``eval_f1`` or ``eval_exact`` (scored per question).
        grace: the first rung.
        reduction_factor: rungs at ``grace * rf**k``.
        alpha: the chance, per trial, of a stop while nothing with no more memory is ahead.
        test: ``sign`` (exact, any number of questions) or ``t`` (the paired t-test: more
            power on many questions, an approximation on few).
        warmup, warmup_ratio, warmup_steps, time_attr, constraints, state_file: as
            :class:`~qa_ray.search.schedulers.memory_aware.MemoryAwareStopping`'s.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        grace: float,
        reduction_factor: float = 3.0,
        alpha: float = 0.05,
        test: str = "sign",
        warmup: float = 0.0,
        warmup_ratio: float | None = 0.0,
        warmup_steps: int | None = None,
        time_attr: str = m.STEP,
        constraints: Sequence[Constraint] = (),
        state_file: str | None = None,
    ):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), but got alpha={alpha}")
        if test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}, but got test={test!r}")
        self.alpha, self.test = float(alpha), test
        # rung -> trial id -> {"ids": a digest of the questions, "v": the scores}
        self.scores: dict[int, dict[str, dict[str, Any]]] = {}
        self.raced: dict[str, int] = {}  # trial id -> the rungs it was raced at
        self.beaten: dict[str, list] = {}  # trial id -> [rival, rung, p-value] that stopped it
        super().__init__(
            objectives,
            grace=grace,
            reduction_factor=reduction_factor,
            warmup=warmup,
            warmup_ratio=warmup_ratio,
            warmup_steps=warmup_steps,
            time_attr=time_attr,
            constraints=constraints,
            state_file=state_file,
        )
        if not self._learning or self.objectives[self._learning[0]][0] not in PER_QUESTION_KEY:
            first = self.objectives[self._learning[0]][0] if self._learning else None
            raise ValueError(
                "a race judges per-question scores: its first learning objective must be one "
                f"of {sorted(PER_QUESTION_KEY)}, but got {first!r}"
            )
        self.key = PER_QUESTION_KEY[self.objectives[self._learning[0]][0]]

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """MO-ASHA's bookkeeping; the result's per-question scores are kept at its rung."""
        t, scored = _number(result.get(self.time_attr)), result.get(m.PER_QUESTION)
        if t is not None and scored and trial_id not in self.stopped:
            k = self.rung_index(t)
            if k >= 0 and k > self.judged.get(trial_id, -1) and scored.get(self.key):
                self.scores.setdefault(k, {})[trial_id] = {
                    "ids": _digest(scored.get("ids")),
                    "v": [float(v) for v in scored[self.key]],
                }
        return super().decide(trial_id, result)

    def keeps(self, k: int, trial_id: str) -> bool:
        """Whether no trial at rung k with no more of every set objective beats
        ``trial_id`` per question at this rung's level (see the module's docstring)."""
        if self.rung(k) < max(self.warmup, self.warmups.get(trial_id, 0.0)):
            return True
        rung, scores = self.rungs[k], self.scores.get(k, {})
        x, mine = rung[trial_id], scores.get(trial_id)
        if mine is None:
            return True  # nothing to compare paired
        if self._set and all(x[self._set[0]] <= p[self._set[0]] for p in rung.values()):
            return True  # the lowest-memory trial
        rivals = [
            o
            for o, y in rung.items()
            if o != trial_id
            and all(y[d] <= x[d] for d in self._set)
            and (s := scores.get(o)) is not None
            and s["ids"] == mine["ids"]
            and len(s["v"]) == len(mine["v"])
        ]
        if not rivals:
            return True
        j = self.raced.get(trial_id, 0)
        self.raced[trial_id] = j + 1
        level = self.alpha / 2 ** (j + 1) / len(rivals)
        for o in sorted(rivals):
            p = paired_p_value(scores[o]["v"], mine["v"], self.test)
            if p < level:
                self.beaten[trial_id] = [o, k, p]
                return False
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if (b := self.beaten.get(trial.trial_id)) and b[1] == self.stopped.get(trial.trial_id):
            logger.info(
                "trial %s: %s beats it per question with no more memory (%s test, p %.2g)",
                trial,
                b[0],
                self.test,
                b[2],
            )
        return decision

    def debug_string(self) -> str:
        sizes = {f"{self.rung(k):g}": len(v) for k, v in sorted(self.rungs.items())}
        return (
            f"paired race on {self.time_attr} (alpha {self.alpha:g}, {self.test} test): "
            f"trials per rung {sizes}, stopped {len(self.stopped)}"
        )

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "scores": self.scores, "raced": self.raced,
                "beaten": self.beaten}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.scores = {int(k): v for k, v in state.get("scores", {}).items()}
        self.raced, self.beaten = state.get("raced", {}), state.get("beaten", {})


def _digest(ids: Sequence[str] | None) -> str | None:
    """The questions' identity, short (a curve table's rows share the table's and carry none)."""
    if not ids:
        return None
    return hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:16]
