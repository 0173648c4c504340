"""The sweep this driver process runs now, for the objects Ray Tune restores.

``Tuner.restore`` unpickles the searcher, the scheduler and the callbacks that the first
driver pickled. They carry that driver's absolute paths (its state folder, under another home
or ``QA_RAY_STATE_DIR`` on a new head) and their own copies of what was shared (the memory
model) or could not be pickled (hooks). A restored object asks :func:`current` and rejoins
this driver: its state folder, its memory model, its hooks.

    with live.driving(live.Driver(state_dir=local, memory=model)):
        tune.Tuner.restore(path, trainable).fit()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Driver", "current", "driving", "repoint"]


@dataclass
class Driver:
    """What a restored object rejoins.

    Args:
        state_dir: the sweep's state folder on this head (the study, the scheduler's rungs,
            the sweep state).
        memory: the sweep's one memory model, shared by the searcher and the MLflow callback.
        on_study_change: called after every ask and tell (the bucket mirrors the study).
        on_rejected: records a configuration the admission did not launch.
    """

    state_dir: Path
    memory: Any = None
    on_study_change: Callable[[], None] | None = None
    on_rejected: Callable[..., None] | None = None


_current: Driver | None = None


def current() -> Driver | None:
    """The sweep this process drives now, or None (a worker, a test, a replay)."""
    return _current


@contextlib.contextmanager
def driving(driver: Driver) -> Iterator[Driver]:
    """Makes ``driver`` the current sweep while the block runs."""
    global _current
    before, _current = _current, driver
    try:
        yield driver
    finally:
        _current = before


def repoint(path: str | None) -> str | None:
    """``path`` (a file in a state folder, as pickled by an earlier driver) in this driver's
    state folder; unchanged when no sweep is driven here."""
    if path is None or _current is None:
        return path
    return str(Path(_current.state_dir) / Path(path).name)
