"""The command line itself: help (metavars, exit codes), --version, -v anywhere, bare qa-ray,
Ray-job option names and their old aliases, unknown arguments."""

from __future__ import annotations

import argparse

import pytest

from qa_ray import __version__, cli
from qa_ray.cli import app
from qa_ray.cli import parser as parsing


def _parser() -> argparse.ArgumentParser:
    return parsing.build(__version__, app._commands())


def _parsers(p: argparse.ArgumentParser):
    """The parser and every subcommand's parser, with their names."""
    yield "qa-ray", p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                for sub_name, sub_p in _parsers(sp):
                    yield f"{name} {sub_name}".replace(" qa-ray", ""), sub_p


def test_every_argument_has_help_and_every_value_a_metavar():
    missing = []
    for name, p in _parsers(_parser()):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not a.help:
                missing.append(f"{name} {a.dest}: no help")
            if a.nargs != 0 and not a.metavar:
                missing.append(f"{name} {a.dest}: no metavar")
    assert missing == []


def test_every_subcommand_has_an_example_and_its_help_shows_the_exit_codes(capsys):
    names = [n for n, _ in _parsers(_parser())]
    assert {"sweep", "env", "sweeps list", "sweeps copy", "pareto", "submit"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            cli.main([*([] if name == "qa-ray" else name.split()), "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out and "130" in out and "bad input" in out, name
        assert "example:" in out, name


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"qa-ray {__version__}"


@pytest.mark.parametrize(
    "argv, verbose",
    [
        (["sweep", "x.yaml"], False),
        (["-v", "sweep", "x.yaml"], True),
        (["sweep", "x.yaml", "-v"], True),
        (["sweep", "x.yaml", "--verbose", "search.num_samples=2"], True),
        (["sweeps", "list", "-v"], True),
    ],
)
def test_verbose_before_or_after_the_subcommand(argv, verbose):
    args, rest = _parser().parse_known_args(argv)
    assert args.verbose is verbose


def test_bare_qa_ray_prints_the_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: qa-ray" in err and "sweeps" in err and "exit codes:" in err


def test_submit_options_as_ray_job_names_them_with_the_old_names_as_aliases():
    p = _parser()
    for argv in (["--submission-id", "j1", "--no-wait"], ["--job-id", "j1", "--no-follow"]):
        args = p.parse_args(["submit", "x.yaml", *argv])
        assert (args.submission_id, args.no_wait) == ("j1", True)
    assert p.parse_args(["job", "logs", "j1", "-f"]).follow is True


def test_submit_no_wait_returns_without_following(monkeypatch, capsys):
    from qa_ray.sweep import jobs

    sent = {}
    monkeypatch.setattr(jobs, "submit", lambda *a, **kw: sent.update(kw) or kw["submission_id"])
    monkeypatch.setattr(jobs, "follow", lambda *a: pytest.fail("followed"))
    argv = ["submit", "x.yaml", "--address", "http://h:8265", "--submission-id", "j1", "--no-wait"]
    assert cli.main(argv) == 0
    assert sent["submission_id"] == "j1"
    assert "submitted job j1" in capsys.readouterr().out


def test_budgets_parse():
    assert parsing.budgets("8000,16000, 24e3") == (8000.0, 16000.0, 24000.0)
    for bad in ("", "8000,,", "x", "0", "-5", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            parsing.budgets(bad)


def test_unknown_arguments_and_missing_addresses_exit_2(capsys):
    for argv in (["validate", "x.yaml", "--frobnicate"], ["job", "status", "j1"],
                 ["sweeps", "copy", "quickstart"], ["pareto", "x", "--format", "yaml"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "--address" in capsys.readouterr().err


def test_no_mlflow_progress_bar_when_the_sweep_appends_its_tables(monkeypatch, tmp_path, capfd):
    """The sweep appends per-question scores to a table on each run at every evaluation; MLflow
    downloads the table to append and would draw a progress bar on the console each time."""
    import mlflow

    from qa_ray.cli import main

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("x")).info.run_id
    capfd.readouterr()
    for step in (1, 2):
        client.log_table(run, {"step": [step], "f1": [0.5]}, "per_question.json")
    assert "Downloading artifacts" not in capfd.readouterr().err
