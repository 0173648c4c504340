"""The benchmark scripts over the package's replay (tests/unit/report/test_replay.py tests the
simulator): a live sweep against its replay, tune_rule's cross-validated choice, and bad input
answered in one line with exit 2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = str(ROOT / "tests" / "assets" / "curves_tiny.json")


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("replay", ROOT / "benchmarks" / "replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["replay"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["replay"]


def test_the_tiny_table_is_what_its_generator_makes():
    import json

    sys.path.insert(0, str(ROOT / "benchmarks" / "curves"))
    try:
        from synthetic import table
    finally:
        sys.path.pop(0)
    assert json.loads(Path(TABLE).read_text()) == json.loads(json.dumps(table(8, 0)))


def test_a_live_sweep_is_checked_against_the_replay_of_its_own_configurations(replay, tmp_path):
    """A live table whose trials stopped where the replayed rule stops them gives the
    replayed ratios exactly; a trial the table does not hold is refused by name."""
    import json

    raw = json.loads(Path(TABLE).read_text())
    t = replay.load_table(TABLE)
    block = {"type": "memory_aware", "grace": 10, "reduction_factor": 3, "noise_floor": 1.0}
    order = [6, 7, 3, 0, 2, 5, 1, 4]
    sched = replay.scheduler_from_block(block, t)
    stopped_at = {}
    original = sched.on_trial_complete

    def complete(controller, trial, result):  # the step each trial ended at
        stopped_at[int(trial.trial_id[1:])] = result["step"]
        return original(controller, trial, result)

    sched.on_trial_complete = complete
    no_run_on = replay.Costs(stop_seconds=0.0)  # a live table's rows end where it stopped
    again = replay.simulate(t, order, sched, 2, no_run_on)
    assert again.stopped  # the rule stops some of them, or the check says nothing
    live = dict(raw, scheduler=block, trials=[])
    for i in order:
        tr = raw["trials"][i]
        rows = [r for r in tr["rows"] if r["step"] <= stopped_at[i]]
        live["trials"].append(
            dict(tr, rows=rows, outcome="pruned" if i in again.stopped else "complete")
        )
    path = tmp_path / "live.json"
    path.write_text(json.dumps(live))
    r = replay.live_check(t, str(path), workers=2, draws=20, costs=no_run_on)
    assert r["trials"] == 8 and r["stopped"] == len(again.stopped)
    assert r["hv"] == pytest.approx(r["replayed"]["hv"]) and r["steps"] == r["replayed"]["steps"]
    assert r["hv_table_values"] == pytest.approx(r["hv"])  # the same values on both sides
    assert r["measured_apart"]["peak_memory_mb"] == (0.0, 0.0)
    lo, hi = r["draws"]["hv_range"]
    assert lo <= r["draws"]["hv_iqm"] <= hi
    assert "live sweep:" in replay.format_live(r, 2)

    live["trials"][0] = dict(live["trials"][0], config={"learning_rate": 1.0}, name="odd")
    path.write_text(json.dumps(live))
    with pytest.raises(ValueError, match=r"1 live trial\(s\) have no configuration.*odd"):
        replay.live_check(t, str(path), workers=2, draws=20)
    path.write_text(json.dumps(dict(live, scheduler=None)))
    with pytest.raises(ValueError, match="ran without a scheduler"):
        replay.live_check(t, str(path), workers=2, draws=20)
    assert replay.main([TABLE, "--live", str(path), "--draws", "5"]) == 2  # said, exit 2


def _tune_rule():
    spec = importlib.util.spec_from_file_location("tune_rule", ROOT / "benchmarks" / "tune_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_rule_chooses_on_tuning_halves_and_reports_the_held_out_ones(capsys):
    """A noise floor of 50 stops nothing and pays fresh actors: the cheaper floor is chosen
    on every split; the figures printed are those of the halves it was not chosen on."""
    module = _tune_rule()
    argv = [TABLE, "--splits", "3", "--draws", "2", "--graces", "10", "--rfs", "3"]
    assert module.main([*argv, "--noise-floors", "1", "50", "--memory-slacks", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 settings, 3 splits into halves of 4 (chosen on one, judged on the other)" in out
    assert "chosen: memory_aware grace 10 rf 3 nf 1 slack 0, on 3 of 3 splits" in out
    assert "--graces 10 30 --rf 3 --noise-floor 1 --memory-slack 0" in out
    assert module.main([*argv, "--noise-floors", "1", "--keep", "1.01"]) == 2
    assert capsys.readouterr().err == "tune_rule.py: --keep must be in (0, 1], but got 1.01\n"


@pytest.mark.parametrize(
    "script, argv, said",
    [
        ("replay", ["missing.json"], "replay.py: missing.json: cannot be read"),
        ("replay", [TABLE, "--sizes", "99"], "replay.py: --sizes 99: the table has 8 usable"),
        ("replay", [TABLE, "--rf", "1"], "replay.py: --rf must be > 1, but got 1.0"),
        ("replay", [TABLE, "--draws", "x"], "replay.py: argument --draws: invalid int value"),
        ("tune_rule", ["missing.json"], "tune_rule.py: missing.json: cannot be read"),
        ("tune_rule", [TABLE, "--splits", "1"], "tune_rule.py: --splits must be >= 2"),
    ],
)
def test_bad_input_to_a_replay_script_is_one_line_and_exit_2(replay, capsys, script, argv, said):
    module = replay if script == "replay" else _tune_rule()
    try:
        code = module.main(argv)
    except SystemExit as e:  # argparse's own
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(said) and err.count("\n") == 1


def test_bad_input_to_the_synthetic_table_maker_is_one_line_and_exit_2(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks" / "curves"))
    try:
        from synthetic import main
    finally:
        sys.path.pop(0)
    assert main(["-o", str(tmp_path / "none" / "t.json")]) == 2
    assert capsys.readouterr().err.endswith(
        "t.json: cannot be written (No such file or directory)\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["--configs", "0", "-o", str(tmp_path / "t.json")])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err
        == "synthetic.py: --configs must be >= 1, but got 0 (--help lists the options)\n"
    )
    assert main(["--configs", "2", "-o", str(tmp_path / "t.json")]) == 0
