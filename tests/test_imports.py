"""The package's import graph: no cycles (lazy imports inside functions included) and no module importing another
module's private (underscore) names; and no test module importing another (shared helpers live in conftest.py,
tests/factories/ and tests/published_formats.py). Parsed with ast, nothing is imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cfx"
TESTS = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module → the cfx modules it imports anywhere in its body; and every ``from X import _name`` across modules."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    private = []
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                if not base.startswith("cfx"):
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in paths:  # a submodule
                        graph[name].add(f"{base}.{alias.name}")
                    elif base in paths:
                        graph[name].add(base)
                        if alias.name.startswith("_") and base != name:
                            private.append(f"{name} imports {base}.{alias.name}")
    for name in graph:
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_finds_a_cycle_and_a_private_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph, _ = import_graph()
    assert "cfx.runtime.seeding" in graph["cfx.methods.ace"]  # a module-level import is seen


def test_no_import_cycles():
    assert cycles(import_graph()[0]) == []


def test_no_module_imports_another_modules_private_names():
    assert import_graph()[1] == []


def imported_test_modules(source: str) -> list[str]:
    """The test modules (``tests.test_*``) that ``source`` imports anywhere in its body, however spelled."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            base = "tests." * bool(node.level) + (node.module or "")  # relative: within tests/
            if base.startswith("tests.test_"):
                found.append(base)
            elif base.rstrip(".") == "tests":
                found += [f"tests.{alias.name}" for alias in node.names if alias.name.startswith("test_")]
    return found


def test_no_test_module_imports_another():
    assert imported_test_modules("import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c\n"
                                 "def f():\n    from .test_d import y\nfrom tests.factories import z") == [
        "tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d"]
    offenders = {str(path.relative_to(TESTS)): imported_test_modules(path.read_text())
                 for path in sorted(TESTS.rglob("*.py"))}
    assert {path: found for path, found in offenders.items() if found} == {}
