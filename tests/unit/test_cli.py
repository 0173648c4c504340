"""The CLI's own parts: the resume command it prints, failure groups, --budgets, exit codes."""

from __future__ import annotations

import argparse
import shlex

import pytest

from qa_ray import cli


def test_the_resume_command_repeats_the_sweep_without_credentials():
    args = argparse.Namespace(
        sweep="sweeps/q.yaml", overrides=["search.num_samples=4"], address="http://h:8265",
        tracking_uri="http://alice:s3cret@mlflow:5000",
    )  # fmt: skip
    assert shlex.split(cli._resume_command(args)) == [
        "qa-ray", "sweep", "sweeps/q.yaml", "search.num_samples=4", "--resume",
        "--address", "http://h:8265", "--tracking-uri", "http://mlflow:5000",
    ]  # fmt: skip


def test_failures_are_grouped_by_reason_most_frequent_first():
    trials = [
        {"status": "FAILED", "error": "OSError: no model"},
        {"status": "COMPLETE", "error": None},
        {"status": "FAILED", "error": "ValueError: bad rank"},
        {"status": "FAILED", "error": "OSError: no model"},
    ]
    assert cli._failure_groups(trials) == ["2 x OSError: no model", "1 x ValueError: bad rank"]


def test_budgets_parse():
    assert cli._budgets("8000,16000, 24e3") == (8000.0, 16000.0, 24000.0)
    for bad in ("", "8000,,", "x", "0", "-5", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            cli._budgets(bad)


def test_unknown_arguments_and_missing_addresses_exit_2(capsys):
    for argv in (["validate", "x.yaml", "--frobnicate"], ["job", "status", "j1"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "--address" in capsys.readouterr().err
