"""The searcher through a crash: Tune's snapshot of it and the mirrored study disagree.

Tune snapshots the searcher at most every ~10 s (``save``); the study is mirrored after every
ask and tell. These tests save and restore the searcher as Tune does and check that the study
and Tune's trials still correspond, one to one, with equal parameters and outcomes.
"""

from __future__ import annotations

import pickle
import shutil

import optuna
import pytest
from optuna.distributions import FloatDistribution

from qa_ray import live
from qa_ray import metrics as m
from qa_ray.pareto import parse_constraint
from qa_ray.search.searcher import BudgetAwareOptunaSearch

State = optuna.trial.TrialState


def _searcher(folder, stage=None) -> BudgetAwareOptunaSearch:
    folder.mkdir(parents=True, exist_ok=True)
    return BudgetAwareOptunaSearch(
        stage=stage,
        space={"x": FloatDistribution(0.0, 1.0)},
        metric=[m.EVAL_F1, m.PEAK_MEMORY_MB],
        mode=["max", "min"],
        sampler=optuna.samplers.TPESampler(seed=0),
        constraints=[parse_constraint("peak_memory_mb <= 1000")],
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}"),
    )


def _restored(snapshot, state_dir) -> BudgetAwareOptunaSearch:
    """What ``Tuner.restore`` does: unpickle the searcher of ``tuner.pkl``, then
    ``restore_from_dir`` the newest snapshot, on a head whose state folder is ``state_dir``."""
    with live.driving(live.Driver(state_dir=state_dir)):
        s = pickle.loads(snapshot["tuner.pkl"])
        path = state_dir / "searcher.pkl"
        path.write_bytes(snapshot["searcher"])
        s.restore(str(path))
    return s


def _snapshot(s: BudgetAwareOptunaSearch, tmp_path) -> dict[str, bytes]:
    path = tmp_path / "snapshot.pkl"
    s.save(str(path))
    return {"tuner.pkl": pickle.dumps(s), "searcher": path.read_bytes()}


def _study(folder) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")


def test_a_trial_told_after_the_snapshot_is_not_told_again_nor_failed(tmp_path):
    """The head died after the study was told and mirrored but before Tune's next snapshot:
    the resumed sweep ran the trial again. Telling it again raised "Cannot tell a COMPLETE
    trial", the FAIL fallback raised too, and Tune turned a finished trial ERROR."""
    head = tmp_path / "head"
    s = _searcher(head)
    config = s.suggest("t")
    snapshot = _snapshot(s, tmp_path)  # Tune's: the trial running
    s.on_trial_complete("t", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    again = _restored(snapshot, head)
    again.on_trial_complete("t", {m.EVAL_F1: 41.0, m.PEAK_MEMORY_MB: 810.0})  # no raise
    (t,) = _study(head).trials
    assert t.state == State.COMPLETE and t.values == [40.0, 800.0]  # the first tell stands
    assert t.params == config


def test_a_fresh_head_with_another_state_folder_restores_the_searcher(tmp_path):
    """The study's SQLite URL was pickled as an absolute path: a head with another home or
    QA_RAY_STATE_DIR failed with "unable to open database file" (or read a stale copy)."""
    old, new = tmp_path / "old-home", tmp_path / "new-home"
    s = _searcher(old)
    s.suggest("a")
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    s.suggest("b")
    snapshot = _snapshot(s, tmp_path)
    new.mkdir()
    shutil.copy(old / "optuna.db", new / "optuna.db")  # what the bucket brings back
    shutil.rmtree(old)
    again = _restored(snapshot, new)
    again.on_trial_complete("b", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    assert not old.exists()  # nothing opened, nothing created at the old head's path
    assert [t.state for t in _study(new).trials] == [State.COMPLETE, State.COMPLETE]


def test_a_trial_asked_after_the_mirror_is_added_back_not_given_to_another(tmp_path):
    """The study restored from an older copy lacks a trial Tune's snapshot knows: the next
    ask reused its number and id, and one trial's F1 and memory were stored under another's
    parameters."""
    head = tmp_path / "head"
    s = _searcher(head)
    s.suggest("a")
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    shutil.copy(head / "optuna.db", tmp_path / "mirror.db")  # the bucket's last copy
    b = s.suggest("b")  # asked, and the head dies before the mirror is pushed
    snapshot = _snapshot(s, tmp_path)
    shutil.copy(tmp_path / "mirror.db", head / "optuna.db")
    again = _restored(snapshot, head)
    c = again.suggest("c")
    again.on_trial_complete("c", {m.EVAL_F1: 70.0, m.PEAK_MEMORY_MB: 300.0})
    again.on_trial_complete("b", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    by_values = {tuple(t.values): t.params for t in _study(head).trials}
    assert by_values == {(40.0, 800.0): pytest.approx(by_values[(40.0, 800.0)]),
                         (50.0, 900.0): b, (70.0, 300.0): c}  # fmt: skip
    assert len(_study(head).trials) == 3


def test_a_trial_told_before_the_mirror_was_lost_is_added_back_with_its_outcome(tmp_path):
    head = tmp_path / "head"
    s = _searcher(head)
    shutil.copy(head / "optuna.db", tmp_path / "mirror.db")  # an empty study
    a = s.suggest("a")
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 1200.0})
    snapshot = _snapshot(s, tmp_path)
    shutil.copy(tmp_path / "mirror.db", head / "optuna.db")
    _restored(snapshot, head)
    (t,) = _study(head).trials
    assert (t.state, t.values, t.params) == (State.COMPLETE, [40.0, 1200.0], a)
    assert t.constraints["peak_memory_mb <= 1000"] == pytest.approx(0.2)  # still infeasible


def test_a_trial_asked_after_tunes_snapshot_is_failed_not_left_running(tmp_path):
    """Asked and mirrored, then the head died before Tune snapshotted its trial: Tune will
    never run it; the study must not wait on it."""
    head = tmp_path / "head"
    s = _searcher(head)
    snapshot = _snapshot(s, tmp_path)
    s.suggest("gone")
    _restored(snapshot, head)
    (t,) = _study(head).trials
    assert t.state == State.FAIL


def test_the_study_is_mirrored_after_every_ask_and_tell(tmp_path):
    pushes = []
    s = _searcher(tmp_path)
    with live.driving(live.Driver(state_dir=tmp_path, on_study_change=lambda: pushes.append(1))):
        s.suggest("a")
        assert len(pushes) == 1
        s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
        assert len(pushes) == 2


def test_the_searcher_tune_pickled_when_the_stage_began_fails_nothing(tmp_path):
    """Tuner.restore first unpickles the searcher of tuner.pkl, written when the stage's fit
    began (no trial asked yet), then restores Tune's newest snapshot. Reconciling the stale
    copy marked every running trial FAIL; the crash test found two COMPLETE trials in MLflow
    that Optuna held as FAIL."""
    head = tmp_path / "head"
    s = _searcher(head)
    at_start = pickle.dumps(s)  # tuner.pkl
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    path = tmp_path / "snapshot.pkl"
    s.save(str(path))
    again = _restored({"tuner.pkl": at_start, "searcher": path.read_bytes()}, head)
    assert [t.state for t in _study(head).trials] == [State.COMPLETE, State.RUNNING]
    again.on_trial_complete("b", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    assert [t.state for t in _study(head).trials] == [State.COMPLETE, State.COMPLETE]


def test_a_trial_told_before_a_copy_of_the_study_that_holds_it_running_is_told_again(tmp_path):
    head = tmp_path / "head"
    s = _searcher(head)
    s.suggest("a")
    shutil.copy(head / "optuna.db", tmp_path / "mirror.db")  # the trial running
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 1200.0})
    snapshot = _snapshot(s, tmp_path)  # Tune's: the trial told
    shutil.copy(tmp_path / "mirror.db", head / "optuna.db")  # the push after the tell lost
    _restored(snapshot, head)
    (t,) = _study(head).trials
    assert (t.state, t.values) == (State.COMPLETE, [40.0, 1200.0])
    assert t.constraints["peak_memory_mb <= 1000"] == pytest.approx(0.2)


def test_a_snapshot_restored_where_the_bucket_holds_no_study_yet_goes_on(tmp_path):
    """Tune snapshotted the searcher while trials waited for nodes, before the bucket had an
    optuna.db: the resumed sweep failed in suggest with KeyError 'Record does not exist.'."""
    head = tmp_path / "head"
    s = _searcher(head)
    a = s.suggest("a")
    s.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    b = s.suggest("b")
    snapshot = _snapshot(s, tmp_path)
    (head / "optuna.db").unlink()  # a fresh head: nothing came back from the bucket
    again = _restored(snapshot, head)
    c = again.suggest("c")
    again.on_trial_complete("b", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    again.on_trial_complete("c", {m.EVAL_F1: 60.0, m.PEAK_MEMORY_MB: 700.0})
    told = {tuple(t.values): t.params for t in _study(head).trials}
    assert told == {(40.0, 800.0): a, (50.0, 900.0): b, (60.0, 700.0): c}


def test_a_first_stage_restored_fails_no_trial_its_extension_asked(tmp_path):
    """A sweep extended by a resume runs a second Tune experiment on the same study. On the
    next resume the first stage is restored first: its searcher must not take the second
    stage's running trials for its own orphans (the crash test's stage-change kills found
    them FAIL in Optuna and COMPLETE in MLflow)."""
    head = tmp_path / "head"
    first = _searcher(head, stage="crash")
    first.suggest("a")
    first.on_trial_complete("a", {m.EVAL_F1: 40.0, m.PEAK_MEMORY_MB: 800.0})
    first_snapshot = _snapshot(first, tmp_path)
    second = _searcher(head, stage="extend-1")
    second.suggest("b")  # running when the driver died
    second_snapshot = _snapshot(second, tmp_path)
    _restored(first_snapshot, head)
    assert [t.state for t in _study(head).trials] == [State.COMPLETE, State.RUNNING]
    again = _restored(second_snapshot, head)
    again.on_trial_complete("b", {m.EVAL_F1: 50.0, m.PEAK_MEMORY_MB: 900.0})
    assert [t.state for t in _study(head).trials] == [State.COMPLETE, State.COMPLETE]
    # a trial the second stage asked after its last snapshot is still its own to fail
    third = _searcher(head, stage="extend-1")
    snapshot = _snapshot(third, tmp_path)
    third.suggest("c")
    _restored(snapshot, head)
    assert _study(head).trials[-1].state == State.FAIL
