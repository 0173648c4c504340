"""The sweeps and search spaces qa-ray ships, installed with the package as its data.

``qa_ray/shipped/sweeps`` and ``qa_ray/shipped/search_spaces`` are links to the repo's
``sweeps/`` and ``search_spaces/`` (one copy of each file); a wheel holds the files
themselves (``[tool.setuptools.package-data]`` in pyproject.toml). ``qa-ray sweeps list``
lists them, ``qa-ray sweeps copy NAME DEST`` copies one, and a sweep whose relative
``search.space`` path is not found from the current directory reads the shipped space of that
file name (so a copied sweep runs anywhere).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KINDS", "description", "find", "shipped", "shipped_space"]

ROOT = Path(__file__).resolve().parents[1] / "shipped"
KINDS = ("sweeps", "search_spaces")


def shipped(kind: str) -> list[Path]:
    """The shipped files of one kind (``sweeps`` or ``search_spaces``), by name."""
    return sorted((ROOT / kind).glob("*.yaml"))


def find(name: str) -> Path | None:
    """The shipped sweep or search space called ``name`` (its file name, ``.yaml`` optional);
    a sweep first when both kinds have it (``search_spaces/NAME``: the space)."""
    kind_given, _, stem = name.removesuffix(".yaml").rpartition("/")  # search_spaces/NAME
    for kind in KINDS:
        if kind_given and kind != kind_given:
            continue
        for path in shipped(kind):
            if path.stem == stem:
                return path
    return None


def shipped_space(value: str) -> Path | None:
    """The shipped search space a relative ``search.space`` path names by its file name
    (``search_spaces/quickstart.yaml`` -> the shipped ``quickstart.yaml``); None for an
    absolute path or a name qa-ray does not ship."""
    path = Path(value)
    if path.is_absolute() or path.suffix != ".yaml":
        return None
    candidate = ROOT / "search_spaces" / path.name
    return candidate if candidate.is_file() else None


def description(path: Path, width: int = 100) -> str:
    """The first sentence of a file's opening comment (what it sweeps), at most ``width``
    characters."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    first = " ".join(lines).split(". ")[0].rstrip(".")
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."
