"""The shape of the package: data flows one way (see docs/ARCHITECTURE.md).

- No import circle: the graph of module-level imports between surelabel's modules is
  acyclic (imports inside functions and under ``TYPE_CHECKING`` are deliberate late
  bindings and are left out).
- The core never imports the command line, the server or the store, not even lazily
  inside a function: a library user never pays for them, and they can change freely.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "surelabel"
#: Layers above the core: they may import the core, never the other way round.
OUTER = ("surelabel.cli", "surelabel.server", "surelabel.store")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], top_level_only: bool) -> list[ast.stmt]:
    """Import statements of a block, leaving out ``if TYPE_CHECKING:`` blocks and, with
    ``top_level_only``, function and class bodies."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            out.extend(_statements(node.orelse, top_level_only))
            continue
        if top_level_only and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            continue
        for field in ("body", "orelse", "finalbody"):
            out.extend(_statements(getattr(node, field, None) or [], top_level_only))
        for handler in getattr(node, "handlers", None) or []:
            out.extend(_statements(handler.body, top_level_only))
    return out


def _imports(path: Path, module: str, known: set[str], top_level_only: bool) -> set[str]:
    """surelabel modules imported by ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(tree.body, top_level_only):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in known else base)
    found.discard(module)
    return {m for m in found if m in known}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_module_level_imports_have_no_circle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(p, m, known, top_level_only=True) for m, p in modules.items()}
    assert len(graph) > 40  # the walk found the package
    circle = _cycle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_core_never_imports_cli_server_or_store() -> None:
    modules = _modules()
    known = set(modules)
    offences = []
    for module, path in modules.items():
        if module.startswith(OUTER) or module == "surelabel.__main__":
            continue
        for target in _imports(path, module, known, top_level_only=False):
            if target.startswith(OUTER):
                offences.append(f"{module} imports {target}")
    assert not offences, offences


def test_the_check_sees_lazy_imports() -> None:
    """The scan itself: an import inside a function counts for the layering rule."""
    sample = PACKAGE / "cli" / "serve.py"
    lazy = _imports(sample, "surelabel.cli.serve", set(_modules()), top_level_only=False)
    eager = _imports(sample, "surelabel.cli.serve", set(_modules()), top_level_only=True)
    assert "surelabel.server" in lazy and "surelabel.server" not in eager


def test_the_circle_finder_finds_circles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
