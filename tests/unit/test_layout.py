"""The package layout: layers import only downwards, and no module imports itself round a circle.

The layers, bottom up, are listed in ``qa_ray/__init__.py``'s docstring; this test holds the code
to them. Imports under ``if TYPE_CHECKING:`` are types for the reader and the type checker, not
dependencies, so they are left out; imports inside functions (lazy, to keep start-up cheap) count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qa_ray"

# Bottom up. A module may import its own layer and the layers below it, never one above.
LAYERS = (
    (
        "qa_ray.errors",
        "qa_ray.live",
        "qa_ray.metrics",
        "qa_ray.pareto",
        "qa_ray.scoring",
        "qa_ray.storage",
    ),
    ("qa_ray.data",),
    ("qa_ray.tasks",),
    ("qa_ray.config",),
    ("qa_ray.models", "qa_ray.search"),
    ("qa_ray.training", "qa_ray.tracking"),
    ("qa_ray.report",),
    ("qa_ray.sweep",),
    ("qa_ray.cli",),
)
MAX_LINES = 500  # a longer module says why in its docstring ("Longer than ...")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The qa_ray modules ``path`` imports at run time (lazy imports included)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qa_ray"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qa_ray"):
            for a in node.names:  # `from qa_ray.sweep import jobs` imports the module jobs
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    return None


def test_every_module_has_a_layer():
    assert [m for m in _modules() if m != "qa_ray" and _layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    wrong = [
        f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})"
        for module, deps in _graph().items()
        if module != "qa_ray"
        for dep in sorted(deps)
        if _layer(dep) is not None and _layer(dep) > _layer(module)
    ]
    assert wrong == []


def test_no_import_circle():
    graph = _graph()
    # A package's __init__ runs before its modules, so `qa_ray.x.y` depends on `qa_ray.x`.
    for name in graph:
        parent = name.rpartition(".")[0]
        if parent in graph and parent != "qa_ray":
            graph[name] = graph[name] | {parent}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert circles == []


def test_package_docstrings_say_what_lives_there():
    for name, path in _modules().items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc.splitlines()) >= 2, f"{name} has no package docstring"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_long_modules_say_why(name):
    path = _modules()[name]
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Longer than" in doc, f"{name}: {lines} lines and no reason in its docstring"


def test_the_torch_free_layers_import_no_torch():
    """What the sweep driver loads (everything but the loop, the models and the families'
    modules) names torch nowhere at module level, so the driver never imports it."""
    heavy = ("torch", "transformers", "peft", "bitsandbytes")
    torch_free = ("qa_ray.errors", "qa_ray.metrics", "qa_ray.pareto", "qa_ray.scoring",
                  "qa_ray.data", "qa_ray.config", "qa_ray.search", "qa_ray.tracking",
                  "qa_ray.report", "qa_ray.sweep")  # fmt: skip
    for name, path in _modules().items():
        if not name.startswith(torch_free):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not set(roots) & set(heavy), f"{name} imports {roots} at module level"


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_qa_ray_import_names_a_module_and_a_name_that_exist():
    """Lazy imports inside functions run only when their branch does: a moved module or a
    renamed function there fails in a user's sweep, not at import. Checked here statically."""
    modules = _modules()
    sources = [*modules.values(), *sorted((PACKAGE.parent / "tests").rglob("*.py")),
               *sorted((PACKAGE.parent / "benchmarks").rglob("*.py"))]  # fmt: skip
    wrong = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wrong += [f"{path}: import {a.name}" for a in node.names
                          if a.name.startswith("qa_ray") and a.name not in modules]  # fmt: skip
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qa_ray"):
                if node.module not in modules:
                    wrong.append(f"{path}:{node.lineno}: no module {node.module}")
                    continue
                defined = _top_level_names(modules[node.module])
                for a in node.names:
                    if f"{node.module}.{a.name}" not in modules and a.name not in defined:
                        wrong.append(f"{path}:{node.lineno}: {node.module} has no {a.name}")
    assert wrong == []
