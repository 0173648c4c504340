"""Every shell command in README.md and docs/*.md runs, or says on the page why it does not.

A command is a line of a ```bash or ```sh block (a line ending in ``\\`` goes on to the next),
or a ``$ `` line of a ```console block (the lines below it are its output, not compared). This
test runs each one, as written, in the order of its page, from the root of a clean copy of the
repository, unless the command's trailing comment opens with the marker::

    # not run here: REASON

REASON says what it needs that the copy lacks (``needs a GPU``, ``needs AWS``, ``needs the
Hugging Face hub``, ``needs the quickstart's model``) or what it costs (``trains for 15 min``).
A trailing comment that opens with ``# exit N`` names the exit status the command must end with
(default 0). A fence with no language whose first line reads like a command (``$ ``, ``.venv/``,
``qa-ray ``, ``bash ``, ...) fails too: label it ``bash`` or ``console``, or ``text`` for output.

The clean copy is what a fresh clone of this working tree holds: the files git tracks or would
track (``git ls-files --cached --others --exclude-standard``) copied to a temporary folder, with
``.venv`` a link to this checkout's (the commands assume ``bash scripts/setup.sh`` ran) and
``.venv/bin`` first on ``PATH``, as after ``source .venv/bin/activate``. No ``models/``,
``data/``, MLflow store or ``../shared`` is there; the Hugging Face libraries run offline with
an empty ``HF_HOME``, and every HTTP(S) connection goes to a proxy that refuses it. Each page
gets its own copy, so a command may use what an earlier one on its page wrote.

What is run stays cheap (``qa-ray validate``, ``--dry-run``, ``--help``, ``qa-ray sweeps``,
``qa-ray env``): a page shows the cheap form of a command that trains or starts a cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = "# not run here:"
TIMEOUT_S = 120
_FENCE_OPEN = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\b")
# Never run, whatever the page says: they install into the shared .venv, stage from the network,
# or run this suite from inside it. On a page they must carry the marker.
_NEVER_RUN = re.compile(
    r"(scripts/(setup|quickstart|lock|stage_\w+|get_data)\.sh|\.ci/run|pip install|-m pytest\b|"
    r"\bpytest\b|apt-get)"
)
_LOOKS_LIKE_A_COMMAND = re.compile(
    r"^\s*(\$ |\.venv/|qa-ray |bash |python |pip |ray |PYTHONPATH=|[A-Z_]+=\S+ \S)"
)


@dataclass(frozen=True)
class Command:
    """One command of a page: where it is, what it says, and whether it is run."""

    page: Path
    line: int
    text: str

    @property
    def comment(self) -> str:
        """The trailing comment (from the first ``#`` outside quotes that follows a space)."""
        quote = None
        for i, c in enumerate(self.text):
            if quote:
                quote = None if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or self.text[i - 1].isspace()):
                return self.text[i:]
        return ""

    @property
    def skipped(self) -> bool:
        return self.comment.startswith(MARKER)

    @property
    def reason(self) -> str:
        return self.comment[len(MARKER) :].strip() if self.skipped else ""

    @property
    def expected_exit(self) -> int:
        match = _EXIT.match(self.comment)
        return int(match.group(1)) if match else 0

    def where(self) -> str:
        return f"{_rel(self.page)}:{self.line}: {self.text}"


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)


@dataclass(frozen=True)
class Fence:
    """A fenced block: its language, the line of its first body line, and its body."""

    lang: str
    line: int
    body: list[str]


def fences(page: Path) -> list[Fence]:
    """Every fenced block of a page, indented ones (in a list item) included."""
    out = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        out.append(Fence(lang.lower(), start, body))
        i += 1
    return out


def commands(page: Path) -> list[Command]:
    """The shell commands of a page, in order (see the module docstring)."""
    out = []
    for fence in fences(page):
        if fence.lang not in SHELL:
            continue
        console = fence.lang == "console"
        pending: list[str] = []
        first = 0
        for n, raw in enumerate(fence.body, start=fence.line):
            line = raw.rstrip()
            if not pending:
                if console:
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                first = n
            if line.endswith("\\"):
                pending.append(line[:-1].rstrip())
                continue
            pending.append(line)
            out.append(Command(page, first, " ".join(p.strip() for p in pending)))
            pending = []
    return out


def unlabelled_commands(page: Path) -> list[str]:
    """Fences with no language whose first line reads like a command."""
    return [
        f"{_rel(page)}:{f.line}: {f.body[0].strip()}"
        for f in fences(page)
        if not f.lang and f.body and _LOOKS_LIKE_A_COMMAND.match(f.body[0])
    ]


def clean_copy(dest: Path) -> Path:
    """What a fresh clone of this working tree holds, with this checkout's ``.venv`` linked."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: no way to tell a clean clone's files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    repo = dest / "repo"
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    return repo


def offline_env(home: Path, repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "HF_"))}
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails at once
    env.update(
        PATH=f"{repo / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HTTP_PROXY=refused,
        HTTPS_PROXY=refused,
        http_proxy=refused,
        https_proxy=refused,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_on_the_page_runs_or_says_why_not(page, tmp_path):
    found = commands(page)
    unmarked = [c for c in found if MARKER in c.text and not c.skipped]
    assert not unmarked, (
        f"`{MARKER}` must open the trailing comment: {[c.where() for c in unmarked]}"
    )
    empty = [c.where() for c in found if c.skipped and not c.reason]
    assert not empty, f"`{MARKER}` needs a reason after it: {empty}"
    unsafe = [c.where() for c in found if not c.skipped and _NEVER_RUN.search(c.text)]
    assert not unsafe, (
        f"installs, stages from the network or runs the suite: mark it `{MARKER} REASON`: {unsafe}"
    )
    hidden = unlabelled_commands(page)
    assert not hidden, (
        "a fence with no language holds a command this test cannot see; label it bash or "
        f"console (and run it, or mark it `{MARKER} REASON`), or text for output: {hidden}"
    )
    to_run = [c for c in found if not c.skipped]
    if not to_run:
        return
    repo = clean_copy(tmp_path)
    env = offline_env(tmp_path, repo)
    failed = []
    for command in to_run:
        start = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", "-c", command.text],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            failed.append(
                f"{command.where()}\n  still running after {TIMEOUT_S} s: show a cheap form "
                f"on the page, or mark it `{MARKER} REASON`"
            )
            continue
        if done.returncode != command.expected_exit:
            tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            failed.append(
                f"{command.where()}\n  exit {done.returncode} (expected "
                f"{command.expected_exit}) in a clean copy, {time.monotonic() - start:.1f} s; "
                f"fix it, or mark it `{MARKER} REASON`:\n    {tail}"
            )
    assert not failed, "\n".join(failed)


def test_commands_are_read_as_a_reader_reads_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```bash\n"
        "# a comment line, not a command\n"
        "qa-ray validate a.yaml   # exit 0, or 2 with every error\n"
        "qa-ray sweep a.yaml \\\n    --dry-run\n"
        "qa-ray sweep a.yaml   # not run here: needs a GPU\n"
        "echo 'a # in quotes' # exit 3\n"
        "```\n\n```console\n$ qa-ray env\nqa-ray 0.1.0\n```\n\n"
        "- a list item:\n\n  ```sh\n  qa-ray sweeps list\n  ```\n\n"
        "```text\n$ not a command\n```\n\n```yaml\nname: x\n```\n"
    )
    found = commands(page)
    assert [(c.line, c.text) for c in found] == [
        (5, "qa-ray validate a.yaml   # exit 0, or 2 with every error"),
        (6, "qa-ray sweep a.yaml --dry-run"),
        (8, "qa-ray sweep a.yaml   # not run here: needs a GPU"),
        (9, "echo 'a # in quotes' # exit 3"),
        (13, "qa-ray env"),
        (20, "qa-ray sweeps list"),
    ]
    assert [c.skipped for c in found] == [False, False, True, False, False, False]
    assert found[2].reason == "needs a GPU"
    assert [c.expected_exit for c in found] == [0, 0, 0, 3, 0, 0]


def test_a_command_hidden_in_an_unlabelled_fence_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```\nPYTHONPATH=. .venv/bin/python x.py\n```\n\n```\nstep 1 loss 2\n```\n")
    assert unlabelled_commands(page) == [f"{page}:2: PYTHONPATH=. .venv/bin/python x.py"]


def test_a_new_command_that_fails_in_a_clean_copy_is_named(tmp_path):
    """The copy lacks what a clean clone lacks: here, the quickstart's staged model."""
    repo = clean_copy(tmp_path)
    assert not (repo / "models").exists() and (repo / "sweeps" / "quickstart.yaml").is_file()
    assert not (repo.parent / "shared").exists()
    env = offline_env(tmp_path, repo)
    done = subprocess.run(
        ["bash", "-c", "qa-ray validate sweeps/quickstart.yaml"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    assert "models/all-MiniLM-L6-v2" in done.stdout + done.stderr
