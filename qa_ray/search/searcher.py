"""Ray Tune's ``OptunaSearch``, told what a budget-aware search needs to know.

Ray's ``OptunaSearch`` tells Optuna two things only: COMPLETE with the last result's values,
or FAIL. It sets no constraint on a trial, so Optuna's constrained samplers (TPE, NSGA-II)
see no budget; it tells a trial the scheduler stopped early COMPLETE with its partial values,
which the samplers then take for a finished trial's; and a trial stopped for breaking a
budget reaches it without scores. :class:`BudgetAwareOptunaSearch` tells Optuna instead:

- every finished trial with its constraint values (Optuna 5's ``Trial.set_constraint``, which
  TPE, NSGA-II and ``Study.best_trials`` read; ``<= 0`` is feasible): one per budget, named by
  its text, and :data:`OTHER_REASON` for "infeasible for another reason" (out of memory).
  The samplers rank infeasible trials by the sum of the positive values, so each is a
  fraction of its bound (``0.25``: 25 % over), not MB or parameters, which would not add up;
  out of memory counts ``1.0``, as far as a trial at twice its budget (it was read as 1 MB
  over). A trial stopped early gets values for its budgets only: its other constraints
  (``eval_f1 >= 50``) were not measured at its end;
- an infeasible trial COMPLETE with what it measured; an objective it never measured (a trial
  stopped before its first evaluation) is given the worst value the study has seen for it
  (if none: ``0`` for a score, the budget's bound for a cost), so it sorts last, and the
  constraint values mark it infeasible; a trial Optuna cannot be told is told FAIL, never left
  RUNNING;
- a trial MO-ASHA stopped (:data:`qa_ray.metrics.STOPPED_EARLY_AT` in its last result)
  PRUNED, with its rung in the user attributes.

With a :class:`MemoryAdmission`, a sampled configuration predicted over a memory budget beyond
the prediction's uncertainty is not launched: Optuna is told it COMPLETE and infeasible with
the *predicted* excess (its ``peak_memory_mb`` objective the predicted peak, other objectives
the worst seen), the admission records it (a child run with outcome ``predicted_infeasible``),
and the searcher samples again within the same ``suggest``, so Tune never sees it and it does
not count against ``num_samples``. After ``max_in_a_row`` rejections in a row the searcher
ends the search (Tune's ``FINISHED``) with a message naming the budget.

A packing admission (``pack_margin`` set: ``resources.pack_by_memory``) also writes each
launched configuration's memory request into it (:data:`qa_ray.metrics.MEMORY_REQUEST_MB`: the
prediction's upper end, peak + ``z`` sd, plus the margin), for the trial to ask Ray for; it is
computed when the trial is sampled, so it uses every measurement taken by then.

Through a crash the study and Tune's snapshot of this searcher can disagree: the study is
mirrored after every ask and tell (:attr:`qa_ray.live.Driver.on_study_change`), Tune's
snapshot at most every ~10 s. So a tell is idempotent (a trial the study already holds
finished is recorded, not told again), a pickled searcher holds its study's URL and its
trials as numbers and parameters (never a live connection to the old head's file), and a
restored one rejoins this driver's study (:meth:`BudgetAwareOptunaSearch.rejoin`): each trial
found by its number with the same parameters, or added back with what it was told.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from qa_ray import live
from qa_ray import metrics as m
from qa_ray.pareto import Constraint
from qa_ray.search.memory import MemoryModel, Prediction
from qa_ray.search.space import apply_params

__all__ = ["OTHER_REASON", "BudgetAwareOptunaSearch", "MemoryAdmission"]

logger = logging.getLogger(__name__)

OTHER_REASON = "infeasible for another reason (out of memory)"
# Each Optuna trial's user attribute naming the Tune trial (MLflow's qa_ray.trial_id tag);
# a rejected configuration's is that of the Tune trial that sampled again.
TRIAL_ID_ATTR = "qa_ray.trial_id"
# The stage (Tune experiment) that asked a trial: a sweep's stages share one study, and a
# stage's searcher answers for its own trials only.
STAGE_ATTR = "qa_ray.stage"


@dataclass
class MemoryAdmission:
    """Which sampled configurations are launched, by their predicted peak memory.

    Args:
        model: the sweep's memory model (the MLflow callback calibrates the same object).
        base: the sweep's trial config as a dict; a sampled config completes it.
        on_rejected: called with ``(config, prediction, reason)`` for each rejection (the
            sweep records a child run); dropped when the searcher is pickled.
        max_in_a_row: rejections in a row that end the search.
        z: standard deviations the prediction must be over a budget by; with packing, the
            standard deviations above the prediction a trial asks for.
        pack_margin: packing (``resources.pack_by_memory``): the share added to the request;
            None: no requests.
        enforce: False (``search.memory_admission: false``) launches every configuration.
    """

    model: MemoryModel
    base: dict[str, Any]
    on_rejected: Callable[[dict[str, Any], Prediction, str], None] | None = None
    max_in_a_row: int = 100
    z: float = 2.0
    pack_margin: float | None = None
    enforce: bool = True  # False: predictions are logged and packed by, nothing is rejected
    rejected: int = 0
    in_a_row: int = 0
    stopped: str | None = None  # why the search ended, once it has
    _off: bool = field(default=False, repr=False)

    def _predict(self, config: Mapping[str, Any]) -> Prediction | None:
        """The sampled config's prediction, or None once the model cannot be read."""
        if self._off:
            return None
        try:
            return self.model.predict(apply_params(self.base, dict(config)))
        except ValueError as exc:  # a model the account cannot read: admit everything
            logger.warning("memory admission off: %s", exc)
            self._off = True
            return None

    def check(self, config: Mapping[str, Any], budgets: Sequence[Constraint]) -> Prediction | None:
        """The prediction of a configuration predicted over a memory budget, or None (run
        it: within budget, uncertain, or not predictable)."""
        p = self._predict(config)
        if p is not None and any(p.fits(c.bound, self.z) is False for c in budgets):
            return p
        return None

    def request_mb(self, config: Mapping[str, Any]) -> float | None:
        """What a packed trial asks for: ``(peak + z sd) * (1 + pack_margin)``, rounded up to a
        whole MB; None without packing or without a prediction."""
        if self.pack_margin is None or (p := self._predict(config)) is None:
            return None
        return float(math.ceil(round((p.peak_mb + self.z * p.sd_mb) * (1.0 + self.pack_margin), 6)))

    def __getstate__(self):
        return {**self.__dict__, "on_rejected": None}

    def __setstate__(self, state):  # pickled by a qa-ray without packing
        state.setdefault("pack_margin", None)
        state.setdefault("enforce", True)
        self.__dict__.update(state)


class BudgetAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna budgets, infeasible trials and early stops.

    Args:
        constraints: the sweep's budgets.
        admission: keeps configurations predicted over a memory budget from running.
        stage: the sweep's stage (its Tune experiment's name) this searcher asks for; the
            stages of a sweep share one study.
        **kwargs: ``OptunaSearch``'s (``metric`` and ``mode`` as lists).
    """

    def __init__(
        self,
        *args,
        constraints: Sequence[Constraint] = (),
        admission: MemoryAdmission | None = None,
        stage: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.constraints = tuple(constraints)
        self.admission = admission
        self.stage = stage
        self._last: dict[str, dict[str, float]] = {}  # trial id -> numbers of its results
        self._told: dict[str, _Told] = {}  # trial id -> what the study was told of it

    # ---- through a crash ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The searcher without a live study: the study's URL, and each trial as its number,
        parameters and distributions (an unpickled RDB storage opens the old head's file)."""
        state = self.__dict__.copy()
        if isinstance(self._storage, optuna.storages.RDBStorage):
            state["_storage"] = self._storage.url
            state["_ot_study"] = None
            state["_ot_trials"] = {tid: _Asked.of(t) for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled from Tune's tuner.pkl, written when the stage's fit started: its trials
        # are not the sweep's; Tune's newest snapshot (restore) brings those.
        self._load(state, reconcile=False)

    def _load(self, state: dict[str, Any], reconcile: bool) -> None:
        state.setdefault("admission", None)  # pickled by an earlier qa-ray
        state.setdefault("stage", None)
        state.setdefault("_told", {})
        self.__dict__.update(state)
        if isinstance(self._storage, str):  # pickled by __getstate__: no live study
            self.rejoin(reconcile=reconcile)

    def save(self, checkpoint_path: str) -> None:  # Tune's snapshot of the searcher
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:  # Tune's newest snapshot
        with open(checkpoint_path, "rb") as f:
            self._load(pickle.load(f), reconcile=True)

    def rejoin(self, reconcile: bool = True) -> None:
        """Opens the study in this driver's state folder and checks every trial against it.

        A trial is the study's trial of the same number when their parameters agree. One
        the study lacks, or holds other parameters at its number (an older copy of the study,
        restored from the bucket, whose numbers were asked again), is added back: finished
        with what it was told, or running. A trial the study holds running that no trial
        here knows (asked after Tune's last snapshot) is marked FAIL: it never ran to an end;
        one another stage of the sweep asked is that stage's to answer for.
        Admission rejoins the driver's memory model. With ``reconcile=False`` (a searcher
        pickled when its stage began, which Tune's newest snapshot will replace) the study is
        only opened: nothing is added back or failed on the word of a stale copy.
        """
        url = str(self._storage)
        if url.startswith("sqlite:///"):
            url = "sqlite:///" + (live.repoint(url.removeprefix("sqlite:///")) or "")
        self._storage = optuna.storages.RDBStorage(url)
        self._ot_study = optuna.create_study(
            storage=self._storage,
            sampler=self._sampler,
            study_name=self._study_name,
            load_if_exists=True,
            directions=["minimize" if mo == "min" else "maximize" for mo in self._mode],
        )
        held = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        trials: dict[str, Any] = {}
        for tid, asked in self._ot_trials.items():
            t = held.get(asked.number)
            if t is None or t.params != asked.params:
                if not reconcile:
                    continue
                t = self._add_back(tid, asked)
                logger.warning(
                    "optuna trial %d of %s was not in the study: added back as trial %d",
                    asked.number, tid, t.number,
                )  # fmt: skip
            held.pop(t.number, None)
            if not t.state.is_finished() and reconcile and (told := self._told.get(tid)):
                t = self._retell(t, told)  # told, but the copy of the study predates it
            if t.state.is_finished():  # told, maybe after Tune's snapshot: never told again
                self._completed_trials.add(tid)
                trials[tid] = _Asked.of(t)
            else:
                trials[tid] = optuna.trial.Trial(self._ot_study, t._trial_id)
        self._ot_trials = trials
        for t in held.values() if reconcile else ():
            if t.state == optuna.trial.TrialState.RUNNING and self._asked_here(t):
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                logger.warning(
                    "optuna trial %d was asked before a crash, never run: FAIL", t.number
                )
        if (d := live.current()) is not None and d.memory is not None and self.admission:
            self.admission.model = d.memory
        if reconcile:
            self._study_changed()

    def _asked_here(self, t: optuna.trial.FrozenTrial) -> bool:
        """Whether this searcher's stage asked ``t`` (a trial without the mark was asked by a
        qa-ray that did not mark them, and a searcher without a stage answers for all)."""
        stage = t.user_attrs.get(STAGE_ATTR)
        return self.stage is None or stage is None or stage == self.stage

    def _retell(self, t: optuna.trial.FrozenTrial, told: _Told) -> optuna.trial.FrozenTrial:
        trial = optuna.trial.Trial(self._ot_study, t._trial_id)
        for name, value in told.constraints.items():
            trial.set_constraint(name, value)
        for key, value in told.user_attrs.items():
            trial.set_user_attr(key, value)
        state = optuna.trial.TrialState[told.state]
        self._ot_study.tell(trial, told.values, state=state, skip_if_finished=True)
        return self._ot_study._storage.get_trial(t._trial_id)

    def _add_back(self, trial_id: str, asked: _Asked) -> optuna.trial.FrozenTrial:
        told = self._told.get(trial_id)
        template = optuna.trial.create_trial(
            state=optuna.trial.TrialState[told.state] if told else optuna.trial.TrialState.RUNNING,
            params=asked.params,
            distributions=asked.distributions,
            values=told.values if told else None,
            user_attrs=told.user_attrs if told else None,
            system_attrs={f"constraints:{k}": v for k, v in told.constraints.items()}
            if told
            else None,
        )
        self._ot_study.add_trial(template)
        return self._ot_study.get_trials(deepcopy=False)[-1]

    def _study_changed(self) -> None:
        if (d := live.current()) is not None and d.on_study_change is not None:
            d.on_study_change()

    def suggest(self, trial_id: str) -> dict | str | None:
        try:
            return self._admit(trial_id)
        finally:
            self._study_changed()  # asked (and told, for each rejection)

    def _admit(self, trial_id: str) -> dict | str | None:
        from ray.tune.search import Searcher

        a = self.admission
        budgets = [c for c in self.constraints if c.metric == m.PEAK_MEMORY_MB and c.is_upper]
        while True:
            config = super().suggest(trial_id)
            if isinstance(config, dict):  # the link from the study to Tune and MLflow
                self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
                if self.stage is not None:
                    self._ot_trials[trial_id].set_user_attr(STAGE_ATTR, self.stage)
            if a is None or not isinstance(config, dict):
                return config
            predicted = a.check(config, budgets) if budgets and a.enforce else None
            if predicted is None:
                a.in_a_row = 0
                if (request := a.request_mb(config)) is not None:
                    config = {**config, m.MEMORY_REQUEST_MB: request}
                return config
            self._reject(trial_id, config, predicted, budgets)
            if a.in_a_row >= a.max_in_a_row:
                a.stopped = (
                    f"{a.in_a_row} sampled configurations in a row predicted over "
                    f"{' and '.join(f'`{c}`' for c in budgets)} (the last: "
                    f"{predicted.peak_mb:.0f} +- {predicted.sd_mb:.0f} MB for {config}): the "
                    "search space has (almost) nothing under the budget; raise the budget or "
                    "shrink the space's memory axes (batch, sequence, rank, bits, model)"
                )
                logger.error("search ended: %s", a.stopped)
                return Searcher.FINISHED

    def _reject(
        self,
        trial_id: str,
        config: dict[str, Any],
        p: Prediction,
        budgets: Sequence[Constraint],
    ) -> None:
        assert self.admission is not None
        a = self.admission
        a.rejected += 1
        a.in_a_row += 1
        ot_trial = self._ot_trials.pop(trial_id)  # the next ask() is a new Optuna trial
        over = [c for c in budgets if p.fits(c.bound, a.z) is False]
        reason = (
            f"predicted {m.PEAK_MEMORY_MB} {p.peak_mb:.0f} +- {p.sd_mb:.0f} breaks the budget "
            + " and ".join(str(c) for c in over)
        )
        seen = {m.PEAK_MEMORY_MB: p.peak_mb}
        for name, value in self.violations(seen, {m.INFEASIBLE: 1.0}).items():
            ot_trial.set_constraint(name, value)
        ot_trial.set_user_attr("qa_ray.predicted_infeasible", reason)
        self._tell(None, ot_trial, values=seen)
        logger.info("not launched (%d rejected so far): %s: %s", a.rejected, config, reason)
        record = a.on_rejected or ((d := live.current()) and d.on_rejected)
        if record:
            record(config, p, reason)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._remember(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        seen = self._last.pop(trial_id, {})
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return
        if (held := self._held(ot_trial)) is None or held.state.is_finished():
            # Told before a crash that Tune's snapshot predates (the trial ran again), or not
            # in the study at all: recorded as it is, never told a second time.
            logger.info("optuna trial of %s was already told: %s", trial_id, held and held.state)
            self._completed_trials.add(trial_id)
            return
        if not result:  # as OptunaSearch: an error FAIL, a trial without a result PRUNED
            State = optuna.trial.TrialState
            return self._tell(trial_id, ot_trial, state=State.FAIL if error else State.PRUNED)
        seen.update(m.finite_numbers(result))
        infeasible = bool(result.get(m.INFEASIBLE))
        pruned = result.get(m.STOPPED_EARLY_AT) is not None and not infeasible
        for name, value in self.violations(seen, result, pruned=pruned).items():
            ot_trial.set_constraint(name, value)
        if infeasible:
            ot_trial.set_user_attr("qa_ray.infeasible", str(result.get(m.INFEASIBLE_REASON)))
        if pruned:
            ot_trial.set_user_attr("qa_ray.stopped_early_at", result[m.STOPPED_EARLY_AT])
            self._tell(trial_id, ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self._tell(trial_id, ot_trial, values=seen)

    def _held(self, ot_trial: Any) -> optuna.trial.FrozenTrial | None:
        """The study's record of ``ot_trial``: the same number and parameters, or None."""
        asked = _Asked.of(ot_trial)  # the trial's own view: the storage may have lost it
        try:
            held = self._ot_study._storage.get_trial(ot_trial._trial_id)
        except (KeyError, AttributeError):  # not in the study; or an _Asked, told already
            return None
        same = held.number == asked.number and held.params == asked.params
        return held if same else None

    def _tell(
        self,
        trial_id: str | None,
        ot_trial: Any,
        values: dict[str, float] | None = None,
        state: optuna.trial.TrialState | None = None,
    ) -> None:
        """Tells the study once (a trial it holds finished is left as it is), FAIL when it
        cannot take the values (a NaN objective, no value for an unmeasured one), and keeps
        what it was told with the trial, for a study restored from an older copy."""
        study = self._ot_study
        try:
            told = None if values is None else self._values(values)
            study.tell(ot_trial, told, state=state, skip_if_finished=True)
        except Exception as exc:  # never left RUNNING
            logger.warning("optuna could not be told trial %s: %s; told FAIL", trial_id, exc)
            study.tell(ot_trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if trial_id is not None:
            self._completed_trials.add(trial_id)
            if (held := self._held(ot_trial)) is not None:
                self._told[trial_id] = _Told(
                    held.state.name, held.values, dict(held.constraints), dict(held.user_attrs)
                )
        self._study_changed()

    def violations(
        self, seen: dict[str, float], result: dict[str, Any], pruned: bool = False
    ) -> dict[str, float]:
        """Per constraint, its measured excess as a fraction of its bound (0 when unmeasured,
        or, for a ``pruned`` trial, when it is no budget: a partial F1 says nothing of the
        final one); then :data:`OTHER_REASON`: 1.0 if the trial is infeasible for a reason no
        budget shows, else 0.0."""
        values = {
            str(c): _relative(c, seen[c.metric])
            if c.metric in seen and (c.is_budget or not pruned)
            else 0.0
            for c in self.constraints
        }
        other = bool(result.get(m.INFEASIBLE)) and not any(v > 0 for v in values.values())
        return {**values, OTHER_REASON: 1.0 if other else 0.0}

    def _values(self, seen: dict[str, float]) -> list[float]:
        return [
            seen[k] if k in seen else self._worst(k, mode)
            for k, mode in zip(self._metric, self._mode, strict=True)
        ]

    def _worst(self, metric: str, mode: str) -> float:
        i = self._metric.index(metric)
        done = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        values = [t.values[i] for t in done if t.values and math.isfinite(t.values[i])]
        if values:
            return min(values) if mode == "max" else max(values)
        if mode == "max":
            return 0.0  # scores (F1, EM) are >= 0
        bounds = [c.bound for c in self.constraints if c.metric == metric and c.is_upper]
        if bounds:  # no trial measured it yet: the budget is as bad as a feasible one gets
            return max(bounds)
        raise ValueError(f"an infeasible trial has no {metric!r} and the study no other value")

    def _remember(self, trial_id: str, result: dict[str, Any]) -> None:
        self._last.setdefault(trial_id, {}).update(m.finite_numbers(result))


@dataclass(frozen=True)
class _Asked:
    """A trial as a pickled searcher keeps it: its number, parameters and distributions."""

    number: int
    params: dict[str, Any]
    distributions: dict[str, Any]

    @classmethod
    def of(cls, t: Any) -> _Asked:
        if isinstance(t, _Asked):
            return t
        frozen = t if isinstance(t, optuna.trial.FrozenTrial) else t._cached_frozen_trial
        return cls(frozen.number, dict(frozen.params), dict(frozen.distributions))


@dataclass(frozen=True)
class _Told:
    """What the study was told of a trial."""

    state: str
    values: list[float] | None
    constraints: dict[str, float]
    user_attrs: dict[str, Any]


def _relative(c: Constraint, value: float) -> float:
    """``c``'s violation at ``value`` as a fraction of its bound (as is for a bound of 0)."""
    return c.violation(value) / (abs(c.bound) or 1.0)
