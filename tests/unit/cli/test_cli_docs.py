"""docs/cli.md, which the README calls the reference for every option, names every command and
every option the parser has: each command in the overview at the top, each option in its
command's section (a ``## `qa-ray COMMAND ...``` heading)."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import pytest

from qa_ray.cli import parser as parsing

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "cli.md"
EVERY_COMMAND = {"-h", "--help", "-v", "--verbose"}  # "Options every command takes"


def _subcommands(p: argparse.ArgumentParser, prefix: str = "qa-ray"):
    """(``qa-ray sweeps copy``, its parser) for every command, nested ones included."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield f"{prefix} {name}", sp
                yield from _subcommands(sp, f"{prefix} {name}")


def _commands():
    return list(_subcommands(parsing.build("0", defaultdict(lambda: None))))


def sections(text: str) -> dict[str, str]:
    """Each ``## `` heading of a page and the text under it, up to the next one."""
    parts = re.split(r"(?m)^## (.*)$", text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def section_of(command: str, text: str) -> str:
    """The text of every section whose heading names the command (or the command above it)."""
    words = command.split()
    for n in range(len(words), 1, -1):
        name = " ".join(words[:n])
        found = [
            body
            for heading, body in sections(text).items()
            if re.search(rf"`{re.escape(name)}(?![\w-])", heading)
        ]
        if found:
            return "\n".join(found)
    return ""


def undocumented(text: str) -> list[str]:
    missing = []
    overview = re.search(r"```text\n(qa-ray .*?)```", text, re.S)
    for command, sp in _commands():
        top = command.split()[1]
        if command.count(" ") == 1 and not (
            overview and re.search(rf"(?m)^\s+{top}\s", overview.group(1))
        ):
            missing.append(f"{command}: not in the overview at the top")
        body = section_of(command, text)
        if not body:
            missing.append(f"{command}: no section (a `## \\`{command} ...\\`` heading)")
            continue
        for action in sp._actions:
            for option in action.option_strings:
                if option in EVERY_COMMAND or not option.startswith("--"):
                    continue
                if not re.search(rf"`{re.escape(option)}(?![\w-])", body):
                    missing.append(f"{command} {option}")
    return missing


def test_every_command_and_option_of_the_parser_is_in_cli_md():
    missing = undocumented(PAGE.read_text())
    assert not missing, f"docs/cli.md lacks: {missing}"


def test_the_options_every_command_takes_are_there():
    body = sections(PAGE.read_text())["Options every command takes"]
    assert "`-v`, `--verbose`" in body and "`-h`, `--help`" in body


@pytest.mark.parametrize(
    "drop, named",
    [
        ("`--na-prob-thresh P`", ["qa-ray score --na-prob-thresh"]),
        ("`--samples N`", ["qa-ray plan --samples"]),
        ("  plan       ", ["qa-ray plan: not in the overview at the top"]),
    ],
)
def test_a_missing_option_or_command_is_named(drop, named):
    text = PAGE.read_text()
    assert text.count(drop) == 1
    assert undocumented(text.replace(drop, "")) == named
