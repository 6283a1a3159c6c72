"""The shape of the code: import layering without cycles, small files and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "sacam"


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """Modules of sacam imported anywhere in ``path`` (relative imports resolved).

    Imports inside functions and under ``TYPE_CHECKING`` count too: a lazy import is still
    an edge of the graph.
    """
    name = _module_name(path, src)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.startswith("sacam")}
    return found


def _graph(src: Path = SRC) -> dict[str, set[str]]:
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    return {m: {t for t in _imports(p, src) if t in files and t != m} for m, p in files.items()}


def _layer(module: str) -> int:
    """0 engine, 1 methods, 2 evaluation, 3 CLI and web app."""
    if module == "sacam.cli" or module.startswith(("sacam.cli.", "sacam.serve")):
        return 3
    if module.startswith("sacam.evaluation"):
        return 2
    if module.startswith("sacam.methods"):
        return 1
    return 0


def _back_edges(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in graph.items()
        if m != "sacam"  # the package's __init__ is the public facade
        for t in targets
        if t != "sacam" and _layer(t) > _layer(m)
    ]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (a module importing its own package is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t == "sacam" or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_imports_point_down_the_layers() -> None:
    graph = _graph()
    assert "sacam.evaluation.registry" in graph["sacam.evaluation.faithfulness"]
    assert not _back_edges(graph), _back_edges(graph)


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checkers_catch_a_back_edge_and_a_cycle(tmp_path) -> None:
    pkg = tmp_path / "sacam"
    (pkg / "evaluation").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("from .evaluation import registry\n")
    (pkg / "evaluation" / "__init__.py").write_text("")
    (pkg / "evaluation" / "registry.py").write_text("def f():\n    from . import runner\n")
    (pkg / "evaluation" / "runner.py").write_text("from .registry import f\n")
    graph = _graph(pkg)
    assert sorted(_back_edges(graph)) == [
        "sacam.core (layer 0) imports sacam.evaluation (layer 2)",
        "sacam.core (layer 0) imports sacam.evaluation.registry (layer 2)",
    ]
    assert _cycle(graph) == [
        "sacam.evaluation.registry",
        "sacam.evaluation.runner",
        "sacam.evaluation.registry",
    ]


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_files_and_functions_stay_small(path: Path) -> None:
    """Every module of the package reads as one idea: ≤ 400 lines, functions ≤ 60."""
    lines = path.read_text().splitlines()
    assert len(lines) <= 400, f"{path.name} has {len(lines)} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse("\n".join(lines)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long


def _defines_something(path: Path) -> bool:
    """Whether a module has code of its own: a function, a class or an assignment."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names != ["__all__"]:
                return True
    return False


def test_no_module_only_re_exports_another() -> None:
    """A module that only imports names from elsewhere is a second door to the same room.

    Package ``__init__`` files are the packages' facades and may gather names.
    """
    shims = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and not _defines_something(p)
    ]
    assert not shims, shims


def test_the_shim_check_catches_a_shim(tmp_path: Path) -> None:
    shim = tmp_path / "old.py"
    shim.write_text('"""Moved."""\n\nfrom .new import *  # noqa: F403\n__all__ = ["f"]\n')
    real = tmp_path / "new.py"
    real.write_text("def f() -> None:\n    pass\n")
    assert not _defines_something(shim) and _defines_something(real)


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines itself: functions, classes and assigned names."""
    names: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try):
            todo += (
                node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body]
            )
    return names


def _borrowed_imports(src: Path = SRC) -> list[str]:
    """``from sacam.X import N`` where ``N`` is neither defined in X nor a submodule of it.

    Package ``__init__`` files are facades: a name may be imported from a package, but
    never from a plain module that only imported it itself.
    """
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    found: list[str] = []
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            target = files.get(mod)
            if target is None or target.name == "__init__.py":
                continue
            own = _top_level_names(target)
            found += [
                f"{name} imports {a.name} from {mod}" for a in node.names if a.name not in own
            ]
    return found


def test_every_import_names_the_module_that_defines_it() -> None:
    borrowed = _borrowed_imports()
    assert not borrowed, borrowed


def test_the_borrowed_import_check_catches_one(tmp_path: Path) -> None:
    pkg = tmp_path / "sacam"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .b import g\n")
    (pkg / "a.py").write_text("def f() -> None:\n    pass\n")
    (pkg / "b.py").write_text("from .a import f\n\ndef g() -> None:\n    f()\n")
    (pkg / "c.py").write_text("from .b import f, g\nfrom . import g as h\n")
    assert _borrowed_imports(pkg) == ["sacam.c imports f from sacam.b"]
