"""The sweep's state in the bucket: versions pushed and pulled whole, the driver lock."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from qa_ray import storage
from qa_ray.errors import ConfigError
from qa_ray.sweep import bucket as b


def _state(tmp_path, s3_bucket, name="head"):
    local = tmp_path / name
    local.mkdir()
    return b.BucketState(f"s3://{s3_bucket}/sweeps/s/qa_ray_state", local, "s"), local


def test_a_fresh_head_gets_the_newest_state_and_a_current_one_keeps_its_own(s3_bucket, tmp_path):
    head, local = _state(tmp_path, s3_bucket)
    (local / "qa_ray_sweep.json").write_text(json.dumps({"parent_run_id": "p1"}))
    (local / "mo_asha.json").write_text("{}")
    db = sqlite3.connect(local / "optuna.db")
    db.execute("create table trials (n int)")
    db.execute("insert into trials values (1)")
    db.commit()  # the study stays open, as the searcher holds it
    assert head.push() == 1
    db.execute("insert into trials values (2)")
    db.commit()
    assert head.push() == 2
    db.close()

    fresh, there = _state(tmp_path, s3_bucket, "fresh")
    assert fresh.pull()
    assert json.loads((there / "qa_ray_sweep.json").read_text()) == {"parent_run_id": "p1"}
    rows = sqlite3.connect(there / "optuna.db").execute("select n from trials").fetchall()
    assert rows == [(1,), (2,)]
    assert not fresh.pull()  # as new as the bucket's
    assert not head.pull()
    # Old versions are pruned: only the two newest stay.
    for _ in range(3):
        head.push()
    assert not storage.exists(f"{head.remote}/v1/qa_ray_sweep.json")
    assert storage.exists(f"{head.remote}/v5/qa_ray_sweep.json")


def test_an_older_local_copy_is_replaced(s3_bucket, tmp_path):
    head, local = _state(tmp_path, s3_bucket)
    (local / "qa_ray_sweep.json").write_text('{"v": 1}')
    head.push()
    (local / "qa_ray_sweep.json").write_text('{"v": 2}')
    head.push()
    other, there = _state(tmp_path, s3_bucket, "other")
    (there / "qa_ray_sweep.json").write_text('{"v": 0}')
    (there / b.LOCAL_VERSION).write_text("1")
    assert other.pull()
    assert json.loads((there / "qa_ray_sweep.json").read_text()) == {"v": 2}


def test_a_second_driver_is_refused_while_the_first_is_alive(s3_bucket, tmp_path):
    first, _ = _state(tmp_path, s3_bucket)
    first.acquire()
    # Another live driver (another process on this machine) wrote the lock.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"owner": "x", "host": socket.gethostname(), "pid": proc.pid,
                "heartbeat": time.time()}  # fmt: skip
        storage.write_bytes(f"{first.remote}/{b.LOCK}", json.dumps(lock).encode())
        with pytest.raises(ConfigError, match=r"being run by another driver .* pid \d+"):
            first.acquire()
    finally:
        proc.kill()
        proc.wait()
    first.acquire()  # that driver is gone (killed): its lock is taken over at once
    first.release()
    assert storage.read_bytes(f"{first.remote}/{b.LOCK}") is None


def test_a_lock_from_another_machine_is_taken_over_once_stale(s3_bucket, tmp_path):
    me, _ = _state(tmp_path, s3_bucket)
    lock = {"owner": "y", "host": "another-head", "pid": 1, "heartbeat": time.time()}
    storage.write_bytes(f"{me.remote}/{b.LOCK}", json.dumps(lock).encode())
    with pytest.raises(ConfigError, match="another-head"):
        me.acquire()
    lock["heartbeat"] = time.time() - b.STALE_S - 1
    storage.write_bytes(f"{me.remote}/{b.LOCK}", json.dumps(lock).encode())
    me.acquire()
    assert json.loads(storage.read_bytes(f"{me.remote}/{b.LOCK}"))["owner"] == me.owner


def test_the_callback_tune_restores_holds_the_drivers_lock(s3_bucket, tmp_path):
    import pickle

    head, _ = _state(tmp_path, s3_bucket)
    head.acquire()
    restored = pickle.loads(pickle.dumps(b.BucketStateCallback(head)))
    assert restored.bucket.owner == head.owner and restored.bucket.remote == head.remote


def test_the_callback_tune_restores_mirrors_this_heads_state_folder(s3_bucket, tmp_path):
    """Pickled with the first head's folder: a new head with another home pushed files that
    were not there (or an older sweep's), not the state the resumed sweep writes."""
    import pickle

    from qa_ray import live

    first, _ = _state(tmp_path, s3_bucket)
    new = tmp_path / "new-head"
    with live.driving(live.Driver(state_dir=new)):
        restored = pickle.loads(pickle.dumps(b.BucketStateCallback(first)))
    assert restored.bucket.local == new and restored.bucket.remote == first.remote
