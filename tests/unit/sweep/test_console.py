"""The console: a trial's line, and the live line on a terminal."""


def test_trial_line_shows_progress_scores_memory_and_time_left():
    from qa_ray.sweep.console import trial_line

    line = trial_line(
        "trial-1",
        {"step": 60, "planned_steps": 300, "train_loss": 1.2345, "eval_f1": 12.3,
         "eval_exact": 8.0, "peak_memory_mb": 620.4, "train_seconds": 120.0},
    )  # fmt: skip
    assert line == (
        "[qa-ray] trial-1 step 60/300 | loss 1.234 | F1 12.30 EM 8.00 | peak 620 MB | "
        "2.0 min trained, about 8.0 min left"
    )
    # a time budget that ends sooner wins
    budgeted = trial_line(
        "trial-2", {"step": 10, "planned_steps": 1000, "train_seconds": 60.0,
                    "time_budget_seconds": 180.0},
    )  # fmt: skip
    assert budgeted.endswith("1.0 min trained, about 2.0 min left")


class _Tty:
    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


class _Trial:
    def __init__(self, name, status="RUNNING", last_result=None):
        self.name, self.status, self.last_result = name, status, last_result or {}

    def __str__(self):
        return self.name


def test_the_live_line_follows_progress_on_a_terminal_and_gives_way_to_evaluations():
    from qa_ray import metrics as m
    from qa_ray.sweep.config import Objective
    from qa_ray.sweep.console import ProgressCallback

    objectives = [
        Objective(metric=m.EVAL_F1, mode="max"),
        Objective(metric=m.PEAK_MEMORY_MB, mode="min"),
    ]
    progress = {m.STEP: 10, m.PLANNED_STEPS: 40, m.TRAIN_LOSS: 2.5, m.EVAL_F1: None,
                m.PEAK_MEMORY_MB: 900.0, m.TRAIN_SECONDS: 60.0}  # fmt: skip
    evaluated = {**progress, m.STEP: 20, m.EVAL_F1: 33.0, m.TRAIN_SECONDS: 120.0}
    a, b = _Trial("trial-a"), _Trial("trial-b")

    term = _Tty(True)
    cb = ProgressCallback(objectives, 2, stream=term)
    cb.on_trial_result(0, [a, b], a, progress)
    cb.on_trial_result(0, [a, b], b, {**progress, m.STEP: 5})
    assert term.text.endswith(
        "\r\x1b[K[qa-ray] running: trial-a 10/40 loss 2.50 900 MB 3.0 min left || "
        "trial-b 5/40 loss 2.50 900 MB 7.0 min left"
    )
    term.text = ""
    cb.on_trial_result(0, [a, b], a, evaluated)  # a permanent line; the live line is redrawn
    line, live = term.text.split("\n")
    assert line.startswith("\r\x1b[K[qa-ray] trial-a step 20/40 | loss 2.500 | F1 33.00")
    assert live == "[qa-ray] running: trial-b 5/40 loss 2.50 900 MB 7.0 min left"

    logs = _Tty(False)  # CI logs, a pipe: no live line, the evaluations only
    cb = ProgressCallback(objectives, 2, stream=logs)
    cb.on_trial_result(0, [a], a, progress)
    cb.on_trial_result(0, [a], a, evaluated)
    assert logs.text.count("\n") == 1 and "running:" not in logs.text and "\r" not in logs.text


def test_tunes_console_is_quiet_unless_verbose(monkeypatch):
    """Tune's new output engine prints its configuration box even at verbose=0; without
    -v the sweep runs Tune's legacy engine, which at verbose=0 prints nothing."""
    from ray.tune.experimental.output import get_air_verbosity

    from qa_ray.sweep.console import tune_console

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert get_air_verbosity(0) is not None  # Ray's default: the new engine, box and all
    with tune_console(verbose=False):
        assert get_air_verbosity(0) is None
    assert get_air_verbosity(0) is not None  # restored
    with tune_console(verbose=True):
        assert get_air_verbosity(0) is not None


def test_a_stopped_trial_is_said_to_be_stopped_by_the_sweeps_rule():
    from qa_ray import metrics as m
    from qa_ray.sweep.config import Objective
    from qa_ray.sweep.console import STOP_REASONS, ProgressCallback

    objectives = [Objective(metric=m.EVAL_F1, mode="max")]
    trial = _Trial("trial-a")
    trial.last_result = {m.STOPPED_EARLY_AT: 8.0}
    out = _Tty(False)
    cb = ProgressCallback(objectives, 2, stream=out, stop_reason=STOP_REASONS["memory_aware"])
    cb.on_trial_complete(0, [trial], trial)
    assert "stopped early at 8 (memory_aware: a trial with no more memory is ahead" in out.text
    assert "MO-ASHA" not in out.text
