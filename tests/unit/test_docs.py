"""The docs hold: docs/configuration.md is what scripts/config_reference.py writes, every
relative link in README.md and docs/*.md reaches a file (and a heading, for an anchor), every
``PAGE.md#anchor`` written elsewhere (code spans, the package's messages, sweep headers) reaches
a heading, and every qa_ray module or repo file a page names exists. The pages' shell commands
are run by test_doc_commands.py, their quoted results by test_doc_figures.py."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Named by a page before it lands on main (kept here until then; harmless after).
COMING: set[str] = set()  # files the docs may name before they land

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"`[^`\n]+`")
_MODULE_PATH = re.compile(r"(?<![\w/.-])qa_ray(?:/\w+)+(?:\.py)?/?")
_DOTTED = re.compile(r"(?<![\w/.-])qa_ray(?:\.\w+)+")
_REPO_FILE = re.compile(
    r"(?<![\w/.-])(?:sweeps|search_spaces|benchmarks|scripts|tests|docs)/[\w./-]*\w"
    r"\.(?:yaml|py|sh|json|md|png)\b"
)


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_what_the_models_say():
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == _load_generator().render(), (
        "docs/configuration.md is stale: run "
        "`PYTHONPATH=. .venv/bin/python scripts/config_reference.py` and commit it"
    )


def test_the_configuration_reference_describes_every_field():
    text = _load_generator().render()
    undescribed = [line for line in text.splitlines() if line.endswith("|  |")]
    assert not undescribed, f"fields without a description= in their pydantic model: {undescribed}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (lower case, punctuation but - and _ dropped)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    return "".join(c for c in text.lower() if c.isalnum() or c in " -_").replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def _prose(path: Path) -> str:
    return _FENCE.sub("", path.read_text())


def test_slugs_follow_github():
    assert slug("### `trial.model.lora`".lstrip("# ")) == "trialmodellora"
    assert slug("How a sweep ends: exit codes, interrupts, resume") == (
        "how-a-sweep-ends-exit-codes-interrupts-resume"
    )
    assert slug("`space.params.<axis>`: float") == "spaceparamsaxis-float"


def broken_links(page: Path) -> list[str]:
    """The relative links of a page (outside code) that reach no file, or no heading."""
    broken = []
    for target in _LINK.findall(_CODE.sub("", _prose(page))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in COMING:
                broken.append(f"{target}: no file {rel}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_files_and_headings(page):
    broken = broken_links(page)
    assert not broken, f"{page.name}: {broken}"


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n## A part\n\n[ok](#a-part) [gone](#nowhere) [file](missing.md)\n"
        "[web](https://example.com) `[in code](nope.md)`\n\n```\n[fenced](nope.md)\n```\n"
    )
    assert broken_links(page) == [
        "#nowhere: no heading #nowhere in " + str(page),
        "missing.md: no file " + str(tmp_path / "missing.md"),
    ]


# A page named with an anchor in prose, code or a message (`docs/memory.md#used-packing`),
# where the link check above does not look.
_NAMED_ANCHOR = re.compile(r"(?<![\w/.-])((?:\.\./)*(?:docs/)?[\w-]+\.md)#([\w-]+)")
_SOURCES = [
    *PAGES,
    *sorted((ROOT / "qa_ray").rglob("*.py")),
    *sorted((ROOT / "sweeps").glob("*.yaml")),
    *sorted((ROOT / "benchmarks").rglob("*.md")),
    ROOT / "cluster.yaml",
]


def named_anchors_missing(source: Path) -> list[str]:
    """``PAGE.md#anchor`` written anywhere in a file (code spans, fences, messages included)
    whose page or heading does not exist. A page is found beside the file, else from the
    repository root (``docs/memory.md`` in a module's message)."""
    missing = []
    for file, anchor in _NAMED_ANCHOR.findall(source.read_text()):
        dest = next(
            (p for p in ((source.parent / file).resolve(), ROOT / file, ROOT / "docs" / file)
             if p.is_file()),
            None,
        )  # fmt: skip
        if dest is None:
            missing.append(f"{file}#{anchor}: no file {file}")
        elif anchor not in anchors(dest):
            missing.append(f"{file}#{anchor}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return missing


@pytest.mark.parametrize("source", _SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_named_outside_links_resolve(source):
    missing = named_anchors_missing(source)
    assert not missing, f"{source.relative_to(ROOT)}: {missing}"


def test_an_anchor_named_in_a_message_is_caught(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text('msg = "see docs/memory.md#packing and docs/memory.md#used-packing"\n')
    assert named_anchors_missing(module) == [
        "docs/memory.md#packing: no heading #packing in docs/memory.md"
    ]


@cache
def _top_names(module_file: Path) -> frozenset[str]:
    tree = ast.parse(module_file.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            ids = {t.id for t in targets if isinstance(t, ast.Name)}
            names |= ids
            if "__all__" in ids and isinstance(node.value, ast.List | ast.Tuple):
                # lazily loaded public names (qa_ray/__init__.py's __getattr__)
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def _tag_names() -> set[str]:
    """MLflow tag names such as ``qa_ray.outcome``: string constants of qa_ray/metrics.py."""
    tree = ast.parse((ROOT / "qa_ray" / "metrics.py").read_text())
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("qa_ray")
    }


def dotted_exists(name: str) -> bool:
    """``qa_ray.a.b`` is a module or package, or ``qa_ray.a.b.NAME`` one of its top-level names
    (``NAME.attr`` past it is not checked)."""
    parts = name.split(".")
    path = ROOT / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if (path / part).is_dir() and (path / part / "__init__.py").is_file():
            path = path / part
            continue
        if (path / f"{part}.py").is_file():
            path = path / f"{part}.py"
            rest = parts[i + 1 :]
            return not rest or rest[0] in _top_names(path)
        init = path / "__init__.py"
        return path.is_dir() and init.is_file() and part in _top_names(init)
    return True


def test_dotted_exists_tells_modules_names_and_ghosts_apart():
    assert dotted_exists("qa_ray.training.loop.train_loop_per_worker")
    assert dotted_exists("qa_ray.search.schedulers.mo_asha.MOASHA")
    assert dotted_exists("qa_ray.tasks.FACTS")
    assert dotted_exists("qa_ray.run_sweep")  # a lazily loaded public name
    assert not dotted_exists("qa_ray.train")
    assert not dotted_exists("qa_ray.training.loop.no_such_function")
    assert not dotted_exists("qa_ray.memory_stopping")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_modules_and_files_exist(page):
    text = page.read_text()
    tags = _tag_names()
    missing = []
    for path in _MODULE_PATH.findall(text):
        if not (ROOT / path.rstrip("/")).exists():
            missing.append(path)
    for name in _DOTTED.findall(text):
        name = name.rstrip(".")
        if name not in tags and not dotted_exists(name):
            missing.append(name)
    for path in _REPO_FILE.findall(text):
        if path not in COMING and not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{page.name} names what does not exist: {sorted(set(missing))}"


def test_a_ghost_module_is_caught():
    """The checks above catch a moved module (qa_ray/train.py went to qa_ray/training/loop.py)."""
    text = "see `qa_ray/train.py` and qa_ray.memory_stopping; `sweeps/nope.yaml`"
    assert _MODULE_PATH.findall(text) == ["qa_ray/train.py"]
    assert not (ROOT / "qa_ray/train.py").exists()
    assert _DOTTED.findall(text) == ["qa_ray.memory_stopping"]
    assert _REPO_FILE.findall(text) == ["sweeps/nope.yaml"]


def test_the_readme_keeps_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = '.venv/bin/python -m pytest -m "not slow" -q'
    assert command in ci
    assert command in (ROOT / "README.md").read_text()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
