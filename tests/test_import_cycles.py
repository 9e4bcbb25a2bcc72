"""No two modules of one folder import each other, directly or round a circle: not at the top, not inside a
function, not under TYPE_CHECKING. (Layers between folders are import-linter's contracts, scripts/check_imports.py.)
A circle hidden behind a deferred import still means neither module can be read without the other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ["core", "package", "tokenization", "models", "export", "targets", "runtime", "serve", "validate", "bench",
           "cli"]
# where each top-level folder installs (pyproject's package-dir): core/ is rwkv_deploy itself
INSTALLED = {folder: "rwkv_deploy" if folder == "core" else f"rwkv_deploy.{folder}" for folder in FOLDERS}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [INSTALLED[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, anywhere in it, as absolute names (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` names module x
    return found


def _folder_graph(folder: Path) -> dict[str, set[str]]:
    """module -> the modules of the same directory it imports (packages below count as their own folders)."""
    files = {_module_name(p): p for p in folder.glob("*.py") if p.name != "__init__.py"}
    return {name: {other for other in _imports(path, name) if other in files and other != name}
            for name, path in files.items()}


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


DIRECTORIES = sorted({p.parent for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")})


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_no_import_circle_inside_a_folder(directory: Path) -> None:
    cycle = _a_cycle(_folder_graph(directory))
    assert cycle is None, " -> ".join(cycle)


def test_the_check_finds_a_circle_made_of_deferred_imports(tmp_path: Path) -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}
    assert _a_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert _a_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_imports_are_read_inside_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .schema import X\n"
                      "def f():\n    from . import verify\n")
    found = _imports(source, "rwkv_deploy.package.manifest")
    assert {"rwkv_deploy.package.schema", "rwkv_deploy.package.verify"} <= found
