"""Frees what trials that are gone still hold, and says so (:class:`LeakedPlacementGroups`).

Each trial runs a Ray Train controller, which reserves its workers' CPUs and GPUs in a
placement group. A placement group made by an actor outlives that actor while the job runs;
Ray Train removes its own when it shuts down, and a detached cleaner removes it when the
controller dies. Under load a stopped trial's controller can die between the two (the cleaner
already told to stop, the group not yet removed): the group keeps its CPUs reserved, and a
sweep whose next trials need them waits for ever, with 0 CPUs used and every CPU reserved.

The sweep's driver looks every ``every_s`` seconds for a placement group of its own job that
reserves CPUs or GPUs and in which no actor lives; one seen so for ``grace_s`` seconds on two
looks is removed, with a line on the console naming it. A group a live trial is still filling
has its workers (pending or alive) in it, so it is never taken. A look runs beside Tune's loop,
in a thread of its own, so a slow State API never holds the sweep up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray.tune import Callback

__all__ = ["LeakedPlacementGroups", "idle_placement_groups"]

logger = logging.getLogger(__name__)

GRACE_S = 30.0  # idle this long on two looks: removed (a Train restart re-fills in seconds)
EVERY_S = 10.0
STATE_API_TIMEOUT_S = 20


def _reserves_compute(bundles: list[dict[str, Any]] | None) -> dict[str, float]:
    """The CPUs and GPUs a placement group's bundles reserve."""
    held: dict[str, float] = {}
    for b in bundles or []:
        for k, v in (b.get("unit_resources") or {}).items():
            if k in ("CPU", "GPU") and v:
                held[k] = held.get(k, 0.0) + float(v)
    return held


def idle_placement_groups() -> dict[str, dict[str, float]]:
    """This job's created placement groups that reserve CPUs or GPUs and hold no actor that
    is not dead, with what each reserves (Ray's State API)."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    ctx = ray.get_runtime_context()
    job, address = ctx.get_job_id(), ctx.gcs_address  # this Ray, whatever else runs here
    groups = list_placement_groups(
        address=address,
        timeout=STATE_API_TIMEOUT_S,
        filters=[("state", "=", "CREATED")],
        detail=True,
        raise_on_missing_output=False,
    )
    busy = {
        a.placement_group_id
        for a in list_actors(
            address=address,
            timeout=STATE_API_TIMEOUT_S,
            filters=[("state", "!=", "DEAD")],
            detail=True,
            raise_on_missing_output=False,
        )
        if a.placement_group_id
    }
    return {
        g.placement_group_id: held
        for g in groups
        if g.creator_job_id == job
        and not g.is_detached
        and g.placement_group_id not in busy
        and (held := _reserves_compute(g.bundles))
    }


def remove_placement_group(pg_id: str) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.placement_group import remove_placement_group as remove

    remove(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


class LeakedPlacementGroups(Callback):
    """Removes placement groups that trials left behind (see the module's docstring).

    Args:
        grace_s: how long a group must stay idle before it is removed.
        every_s: how often the driver looks (each look is two State API calls).
    """

    def __init__(self, grace_s: float | None = None, every_s: float | None = None):
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self.every_s = EVERY_S if every_s is None else every_s
        self._idle_since: dict[str, float] = {}
        self._last = 0.0
        self._looking: threading.Thread | None = None
        self.freed: list[str] = []

    def __getstate__(self):  # what was seen is this driver's, not the next one's
        return {}

    def __setstate__(self, state):
        self.__init__()

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last < self.every_s or (self._looking and self._looking.is_alive()):
            return
        self._last = now
        self._looking = threading.Thread(target=self.look, name="qa-ray-watchdog", daemon=True)
        self._looking.start()

    def on_experiment_end(self, trials, **info):
        if self._looking is not None:
            self._looking.join(timeout=STATE_API_TIMEOUT_S * 2)

    def look(self, now: float | None = None) -> list[str]:
        """One look: returns the groups removed now."""
        now = time.monotonic() if now is None else now
        try:
            idle = idle_placement_groups()
        except Exception as exc:  # the State API unreachable this time: look again later
            logger.debug("could not list placement groups: %s", exc)
            return []
        self._idle_since = {pg: self._idle_since.get(pg, now) for pg in idle}
        removed = []
        for pg, since in list(self._idle_since.items()):
            if now - since < self.grace_s:
                continue
            try:
                remove_placement_group(pg)
            except Exception as exc:
                logger.warning("could not remove placement group %s: %s", pg, exc)
                continue
            held = ", ".join(f"{v:g} {k}" for k, v in sorted(idle[pg].items()))
            print(
                f"[qa-ray] note: freed placement group {pg} ({held}): no live actor in it for "
                f"{now - since:.0f} s (a trial that is gone left its Ray Train workers' "
                "reservation behind)",
                flush=True,
            )
            del self._idle_since[pg]
            removed.append(pg)
        self.freed += removed
        return removed
