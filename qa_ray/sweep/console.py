"""The console: one line per finished trial with the best of each objective so far, Tune's own
console kept quiet, and the driver's handling of Ctrl-C / SIGTERM (stop, record, report).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any

from ray.tune import Callback

from qa_ray import metrics as m
from qa_ray.tracking.callback import failure_reason, trial_error_text

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def tune_console(verbose: bool):
    """Tune's own console: its configuration box ("Configuration for experiment", searcher,
    scheduler, trial count) and result paths come from its new output engine even at
    ``verbose=0`` (Ray 2.60); the legacy engine at ``verbose=0`` prints nothing. ``verbose``
    keeps the new engine, box and all."""
    saved = os.environ.get(_NEW_OUTPUT)
    if not verbose:
        os.environ[_NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_NEW_OUTPUT, None)
        else:
            os.environ[_NEW_OUTPUT] = saved


_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"


class _Progress:
    """Prints one line per finished trial: counts and the best value of each objective."""

    def __init__(self, objectives, total: int):
        self.objectives = objectives
        self.total = total
        self.started = time.monotonic()

    def line(self, trials, finished=None, failed_now=False) -> str:
        # Tune calls back before it updates the finishing trial's status: count it here.
        def status(t):
            if t is finished:
                return "ERROR" if failed_now else "TERMINATED"
            return t.status

        ended = [t for t in trials if status(t) == "TERMINATED"]
        infeasible = [t for t in ended if (t.last_result or {}).get(m.INFEASIBLE)]
        pruned = [
            t
            for t in ended
            if t not in infeasible and (t.last_result or {}).get(m.STOPPED_EARLY_AT) is not None
        ]
        done = [t for t in ended if t not in infeasible and t not in pruned]
        failed = [t for t in trials if status(t) == "ERROR"]
        running = [t for t in trials if status(t) == "RUNNING"]
        best = []
        for o in self.objectives:
            vals = [t.last_result.get(o.metric) for t in done if t.last_result]
            vals = [v for v in vals if isinstance(v, int | float)]
            if vals:
                best.append(
                    f"{o.metric} {'max' if o.mode == 'max' else 'min'} {(max if o.mode == 'max' else min)(vals):.2f}"
                )
        mins = (time.monotonic() - self.started) / 60
        return (
            f"[qa-ray] {len(done)}/{self.total} done, {len(running)} running, {len(failed)} failed"
            + (f", {len(pruned)} stopped early" if pruned else "")
            + (f", {len(infeasible)} infeasible" if infeasible else "")
            + f" | best: {', '.join(best) or '-'} | {mins:.1f} min"
        )


# Why each search.scheduler.type stops a trial, for the console.
STOP_REASONS = {
    "mo_asha": "MO-ASHA: not among the best at its rung",
    "memory_aware": "memory_aware: a trial with no more memory is ahead by more than the noise floor",
    "race": "race: a trial with no more memory beats it on the same questions (paired test)",
}


class ProgressCallback(Callback):
    """The sweep's console: a line per evaluation of a running trial (step, losses, scores,
    peak memory, elapsed and the time left by its step or time budget), one whenever a trial
    ends (complete, stopped early, infeasible or failed), and on a terminal one live line
    that the reports between evaluations keep current (every running trial's step, loss, peak
    memory and time left), rewritten in place and cleared before any other line."""

    def __init__(
        self, objectives, total: int, stream=None, stop_reason: str = STOP_REASONS["mo_asha"]
    ):
        self.progress = _Progress(objectives, total)
        self.stop_reason = stop_reason  # what the sweep's scheduler stops a trial for
        self.objectives = [o.metric for o in objectives]
        self.stream = stream
        self.live: dict[str, str] = {}  # running trial -> its latest progress, short

    @property
    def out(self):
        return self.stream or sys.stdout

    def _print(self, line: str) -> None:
        tty = self.out.isatty()
        if tty and self.live:
            self.out.write("\r\033[K")  # the live line gives way
        self.out.write(line + "\n")
        if tty and self.live:
            self.out.write(self._live_line())
        self.out.flush()

    def _live_line(self) -> str:
        width = shutil.get_terminal_size((120, 20)).columns - 1
        return ("[qa-ray] running: " + " || ".join(self.live.values()))[:width]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if all(isinstance(result.get(k), int | float) for k in self.objectives):  # evaluated
            self.live.pop(str(trial), None)
            self._print(trial_line(str(trial), result))
            return
        if result.get(m.INFEASIBLE):
            return  # said when the trial completes
        self.live[str(trial)] = trial_line(str(trial), result, short=True)
        if self.out.isatty():
            self.out.write("\r\033[K" + self._live_line())
            self.out.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.live.pop(str(trial), None)
        last = trial.last_result or {}
        if last.get(m.INFEASIBLE):
            self._print(f"[qa-ray] trial {trial} INFEASIBLE: {last.get(m.INFEASIBLE_REASON)}")
        elif last.get(m.STOPPED_EARLY_AT) is not None:
            self._print(
                f"[qa-ray] trial {trial} stopped early at {last[m.STOPPED_EARLY_AT]:g} "
                f"({self.stop_reason})"
            )
        self._print(self.progress.line(trials, finished=trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.live.pop(str(trial), None)
        reason = failure_reason(trial_error_text(trial))
        self._print(f"[qa-ray] trial {trial} FAILED: {reason}")
        self._print(self.progress.line(trials, finished=trial, failed_now=True))


def trial_line(name: str, r: dict[str, Any], short: bool = False) -> str:
    """``[qa-ray] trial-1a2b step 60/300 | loss 1.23 | F1 12.3 EM 8.0 | peak 620 MB | 0.8 min,
    about 3.1 min left``: the left time from the step budget, or the time budget if sooner.
    ``short``: ``trial-1a2b 60/300 loss 1.23 620 MB 3.1 min left``, for the live line."""
    step, seconds = r.get(m.STEP, 0), r.get(m.TRAIN_SECONDS, 0.0)
    total = r.get(m.PLANNED_STEPS)
    parts = [f"step {step}" + (f"/{total}" if total else "")]
    if isinstance(r.get(m.TRAIN_LOSS), float):
        parts.append(f"loss {r[m.TRAIN_LOSS]:.3f}")
    scores = [
        f"{m.LABELS[k]} {r[k]:.2f}"
        for k in (m.EVAL_F1, m.EVAL_EXACT, m.EVAL_LOSS)
        if isinstance(r.get(k), float)
    ]
    if scores:
        parts.append(" ".join(scores))
    if isinstance(r.get(m.PEAK_MEMORY_MB), float):
        parts.append(f"peak {r[m.PEAK_MEMORY_MB]:.0f} MB")
    left = []
    if total and step:
        left.append(seconds * (total - step) / step)
    if r.get(m.TIME_BUDGET_SECONDS):
        left.append(max(0.0, r[m.TIME_BUDGET_SECONDS] - seconds))
    if short:
        bits = [name, f"{step}" + (f"/{total}" if total else "")]
        if isinstance(r.get(m.TRAIN_LOSS), float):
            bits.append(f"loss {r[m.TRAIN_LOSS]:.2f}")
        if isinstance(r.get(m.PEAK_MEMORY_MB), float):
            bits.append(f"{r[m.PEAK_MEMORY_MB]:.0f} MB")
        if left:
            bits.append(f"{min(left) / 60:.1f} min left")
        return " ".join(bits)
    timing = f"{seconds / 60:.1f} min trained"
    if left:
        timing += f", about {min(left) / 60:.1f} min left"
    return f"[qa-ray] {name} " + " | ".join(parts + [timing])


class Interrupts:
    """SIGINT and SIGTERM stop a sweep the same way: the trials in flight are stopped and the
    state saved (Ray Tune's own graceful stop, reached through SIGUSR1, which Tune always
    handles), and the signal is remembered so the caller can say how the sweep ended. A second
    signal exits at once. Tune's own SIGINT handler is switched off (it cannot tell SIGINT from
    the end of a sweep, and leaves SIGTERM, what ``ray job stop`` and a preempted head send, to
    kill the driver outright)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._saved[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            if handler is not None:  # None: not installed from Python, cannot be put back
                signal.signal(sig, handler)

    def tune_loop_ended(self) -> None:
        """Tune leaves its SIGUSR1 handler behind when its loop ends (Ray 2.60,
        tune.py ``_setup_signal_catching``): it would set a stop event no one reads, while the
        next stage starts a loop of its own. Put back what was there before, so a signal
        between stages stops the sweep (:meth:`_handle` raises instead)."""
        if self._saved[signal.SIGUSR1] is not None:
            signal.signal(signal.SIGUSR1, self._saved[signal.SIGUSR1])

    def _handle(self, sig: int, frame) -> None:
        name = signal.Signals(sig).name
        if self.signal is not None:
            print(f"[qa-ray] {name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        self.signal = sig
        print(
            f"[qa-ray] {name}: stopping the trials in flight and saving the sweep's state "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's run loop is listening
            os.kill(os.getpid(), signal.SIGUSR1)
        else:  # not inside Tune's loop yet
            raise KeyboardInterrupt
