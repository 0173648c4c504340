"""The sweep's own state in the bucket, so a sweep outlives its head node.

With a bucket ``storage_path`` (``s3://...``), Ray Tune keeps the trials and its experiment state
under ``storage_path/NAME``; the driver's own files (the sweep state with the MLflow parent run
id and the stages, the Optuna study, the scheduler's rungs) live in a local folder
(:func:`qa_ray.sweep.state.state_dir`). :class:`BucketState` mirrors that folder to
``storage_path/NAME/qa_ray_state/`` after each trial ends and when the sweep stops, and brings
it back when the local copy is missing or older, so ``--resume`` on a fresh head continues the
sweep as it was.

Every upload is atomic (:func:`qa_ray.storage.write_bytes`); the SQLite study is copied with
SQLite's backup API, so the copy is a consistent database even while the searcher writes.
``manifest.json`` is written last and numbers the versions: a reader takes the files of the
newest complete version.

The driver is the only writer: :meth:`BucketState.acquire` takes a lock in the bucket
(``driver.lock``, refreshed every :data:`HEARTBEAT_S` seconds), and a second driver on the same
sweep name is refused while the lock is fresh. A driver that was killed leaves its lock behind:
on its own machine (its process is gone) it is taken over at once, elsewhere once it is
:data:`STALE_S` seconds old. Buckets have no compare-and-swap that pyarrow exposes, so two
drivers started within the same second can both pass; each re-reads the lock after writing it,
which catches all but a simultaneous start.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ray.tune import Callback

from qa_ray import live, storage
from qa_ray.errors import ConfigError

if TYPE_CHECKING:
    from qa_ray.sweep.config import SweepConfig

__all__ = ["BucketState", "BucketStateCallback", "HEARTBEAT_S", "STALE_S"]

REMOTE_DIR = "qa_ray_state"
MANIFEST = "manifest.json"
LOCK = "driver.lock"
LOCAL_VERSION = ".bucket_version"
# The driver's files: the sweep state, the Optuna study, the scheduler's rungs.
FILES = ("qa_ray_sweep.json", "optuna.db", "mo_asha.json")
HEARTBEAT_S = 15.0
STALE_S = 60.0
# One owner per driver process: the callback Tune restores holds the lock run_sweep took.
_PROCESS = uuid.uuid4().hex[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BucketState:
    """The local state folder ``local`` of sweep ``name`` mirrored at ``remote``.

    Args:
        remote: ``storage_path/NAME/qa_ray_state`` (a URI).
        local: the driver's state folder.
        name: the sweep's name (for messages).
    """

    def __init__(self, remote: str, local: Path, name: str):
        self.remote = remote
        self.local = Path(local)
        self.name = name
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_PROCESS}"
        self._beat = 0.0

    @classmethod
    def of(cls, cfg: SweepConfig, local: Path) -> BucketState | None:
        """The sweep's bucket state, or None when ``storage_path`` is a local folder (the
        state then lives beside the Ray results already)."""
        if not storage.is_uri(cfg.storage_path):
            return None
        return cls(storage.join(cfg.storage_path, cfg.name, REMOTE_DIR), local, cfg.name)

    # ---- the files -------------------------------------------------------------------------

    def _version(self, text: bytes | None) -> int:
        return int(json.loads(text)["version"]) if text else 0

    def local_version(self) -> int:
        p = self.local / LOCAL_VERSION
        return int(p.read_text()) if p.is_file() else 0

    def push(self) -> int:
        """Uploads the local files as the next version; returns it."""
        version = max(self.local_version(), self._version(self._read(MANIFEST))) + 1
        sent = []
        for name in FILES:
            path = self.local / name
            if not path.is_file():
                continue
            storage.write_bytes(self._uri(f"v{version}/{name}"), self._snapshot(path))
            sent.append(name)
        manifest = {"version": version, "files": sent, "by": self.owner, "at": time.time()}
        storage.write_bytes(self._uri(MANIFEST), json.dumps(manifest).encode())
        self._forget_older(version)
        (self.local / LOCAL_VERSION).write_text(str(version))
        return version

    def holds_state(self) -> bool:
        """Whether the bucket holds a state of this sweep (it was started, maybe never got
        as far as a trial)."""
        return self._read(MANIFEST) is not None

    def pull(self) -> bool:
        """Brings the newest version here when the local copy is missing or older; returns
        whether it did."""
        manifest = self._read(MANIFEST)
        if manifest is None:
            return False
        info = json.loads(manifest)
        version = int(info["version"])
        have_state = (self.local / FILES[0]).is_file()
        if have_state and self.local_version() >= version:
            return False
        self.local.mkdir(parents=True, exist_ok=True)
        for name in info["files"]:
            data = self._read(f"v{version}/{name}")
            if data is None:
                raise ConfigError(
                    "storage_path",
                    [f"the sweep state at {self.remote} lists {name} in version {version}, "
                     "but it is not there: the bucket was changed by hand"],
                )  # fmt: skip
            tmp = self.local / f".{name}.pulled"
            tmp.write_bytes(data)
            os.replace(tmp, self.local / name)
        (self.local / LOCAL_VERSION).write_text(str(version))
        return True

    def _snapshot(self, path: Path) -> bytes:
        if path.suffix != ".db":
            return path.read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            src, dst = sqlite3.connect(path), sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            return copy.read_bytes()

    def _forget_older(self, version: int) -> None:
        for old in range(max(1, version - 3), version - 1):  # keep the last two versions
            for name in FILES:
                storage.delete(self._uri(f"v{old}/{name}"))

    def _uri(self, name: str) -> str:
        return storage.join(self.remote, name)

    def _read(self, name: str) -> bytes | None:
        return storage.read_bytes(self._uri(name))

    # ---- the lock --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Takes the sweep's driver lock.

        Raises:
            ConfigError: another driver holds it (named, with how long ago it was seen).
        """
        held = self._read(LOCK)
        if held is not None:
            lock = json.loads(held)
            age = time.time() - float(lock["heartbeat"])
            host, pid = lock["host"], int(lock["pid"])
            same_host = host == socket.gethostname()
            dead = same_host and not _pid_alive(pid)
            if lock["owner"] != self.owner and not dead and age < STALE_S:
                raise ConfigError(
                    "storage_path",
                    [
                        f"sweep {self.name!r} is being run by another driver ({host}, pid "
                        f"{pid}, seen {age:.0f} s ago; lock {self._uri(LOCK)}): wait for it to "
                        f"finish, stop it, or, if it is gone, run again in {STALE_S - age:.0f} s "
                        "(a lock older than a minute is taken over)"
                    ],
                )
        self._write_lock()
        again = self._read(LOCK)
        if again is None or json.loads(again)["owner"] != self.owner:
            raise ConfigError(
                "storage_path",
                [f"sweep {self.name!r}: another driver took the lock {self._uri(LOCK)} at the "
                 "same moment; run one driver per sweep"],
            )  # fmt: skip

    def heartbeat(self) -> None:
        """Refreshes the lock at most every :data:`HEARTBEAT_S` seconds."""
        if time.monotonic() - self._beat >= HEARTBEAT_S:
            self._write_lock()

    def release(self) -> None:
        held = self._read(LOCK)
        if held is not None and json.loads(held)["owner"] == self.owner:
            storage.delete(self._uri(LOCK))

    def _write_lock(self) -> None:
        host = socket.gethostname()
        lock = {"owner": self.owner, "host": host, "pid": os.getpid(), "heartbeat": time.time()}
        storage.write_bytes(self._uri(LOCK), json.dumps(lock).encode())
        self._beat = time.monotonic()


class BucketStateCallback(Callback):
    """Pushes the sweep's state to the bucket when each trial starts and ends and when the
    experiment ends, and keeps the driver lock fresh (Tune calls ``on_step_begin`` every
    loop)."""

    def __init__(self, bucket: BucketState):
        self.bucket = bucket

    def on_step_begin(self, iteration, trials, **info):
        self.bucket.heartbeat()

    def on_trial_start(self, iteration, trials, trial, **info):
        # The searcher has just created the trial's Optuna record: the bucket's study must
        # hold it before the driver can die mid-trial, or a resumed sweep could not tell it.
        self.bucket.push()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.bucket.push()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.bucket.push()

    def on_experiment_end(self, trials, **info):
        self.bucket.push()

    def __getstate__(self):  # the lock is the driver's that runs, not the pickled one's
        return {"bucket": (self.bucket.remote, str(self.bucket.local), self.bucket.name)}

    def __setstate__(self, state):  # in this head's state folder, not the first head's
        remote, local, name = state["bucket"]
        d = live.current()
        self.bucket = BucketState(remote, d.state_dir if d is not None else Path(local), name)
