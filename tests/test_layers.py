"""The modules of ``oocstore/`` import each other along the data flow, never in a circle.

Every import counts, the ones inside functions too (a deferred import that closes a cycle is
still a cycle: it only hides it until that function runs); imports under ``TYPE_CHECKING``
do not, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oocstore"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (anywhere but under ``if TYPE_CHECKING:``)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(package: str, node: ast.ImportFrom) -> str:
    """The absolute module name ``from ... import`` names, in ``package``."""
    if not node.level:
        return node.module or ""
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - node.level + 1]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def import_graph() -> dict[str, set[str]]:
    """Module -> the oocstore modules it imports (a name of a submodule counts as it).

    ``from . import X`` depends on the package's ``__init__`` unless X is a submodule; a
    submodule's own dependence on its package (Python runs the package first) is no edge.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(package, node)
                subs = [f"{base}.{alias.name}" for alias in node.names]
                # Names that are not submodules come from the package's __init__.
                targets = subs + ([base] if any(t not in modules for t in subs) else [])
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_deferred_imports_included() -> None:
    graph = import_graph()
    # The package's __init__ re-exports the public API: it sits above every module, and no
    # module may import it (that would be a cycle through it).
    importers = sorted(m for m, deps in graph.items() if "oocstore" in deps and m != "oocstore")
    graph = {m: deps - {"oocstore"} for m, deps in graph.items()}
    found = cycles(graph)
    lines = []
    for component in found:
        inside = set(component)
        lines.append(" <-> ".join(component))
        for m in component:
            lines += [f"    {m} -> {d}" for d in sorted(graph[m] & inside)]
    assert not found, "import cycles:\n" + "\n".join(lines)
    assert not importers, f"modules that import the package itself: {importers}"


def test_the_graph_sees_deferred_imports() -> None:
    """The parser itself: a function-local import is an edge, a TYPE_CHECKING one is not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .a import X\n"
        "def f():\n    from .b import Y\n"
    )
    names = sorted(
        (n.module or "") for n in _imports(tree) if isinstance(n, ast.ImportFrom) and n.level
    )
    assert names == ["b"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# What each layer must never import (prefixes of module names): the data flows sources ->
# writer -> backends -> files, reader -> backends, sinks -> reader, with api and cli on top.
FORBIDDEN = {
    "oocstore.errors": ["oocstore."],
    "oocstore.backends": [
        "oocstore.writer",
        "oocstore.reader",
        "oocstore.sinks",
        "oocstore.sources",
        "oocstore.api",
        "oocstore.convert",
        "oocstore.ingest",
        "oocstore.cli",
        "oocstore._parallel",
    ],
    "oocstore.writer": [
        "oocstore.reader",
        "oocstore.sinks",
        "oocstore.sources",
        "oocstore.api",
        "oocstore.convert",
        "oocstore.ingest",
        "oocstore.cli",
        "oocstore._parallel",
    ],
    "oocstore.reader": ["oocstore.writer", "oocstore.api", "oocstore.ingest", "oocstore.cli"],
    "oocstore.sinks": [
        "oocstore.writer",
        "oocstore.reader",
        "oocstore.sources",
        "oocstore.api",
        "oocstore.convert",
    ],
    "oocstore.sources": ["oocstore.reader", "oocstore.sinks", "oocstore.api", "oocstore.cli"],
    "oocstore.convert": ["oocstore.reader", "oocstore.api"],
}


def test_layers_follow_the_data_flow() -> None:
    wrong = []
    for module, deps in sorted(import_graph().items()):
        for layer, banned in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            wrong += [f"{module} -> {d}" for d in sorted(deps) for b in banned if d.startswith(b)]
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_every_relative_import_names_a_module_that_exists() -> None:
    """A deferred ``from .x import y`` that names no module fails only when its function runs
    (mypy, told to ignore missing imports, does not see it): name every one that is wrong."""
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = _resolve(package, node)
            if base not in modules:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {base}")
    assert not wrong, "relative imports of modules that do not exist:\n" + "\n".join(wrong)


def test_reader_and_sinks_never_compare_backend_names() -> None:
    """What differs between formats is asked of the backend (``array_file``,
    ``stored_chunk_rows``...), never decided by its name above the backends."""
    names = {"npy", "zarr", "hdf5"}
    wrong = []
    paths = [PACKAGE / "reader.py", *sorted((PACKAGE / "sinks").glob("*.py"))]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [
                    c.value
                    for c in [node.left, *node.comparators]
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                ]
                if names & set(consts):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not wrong, "backend names compared outside the backends: " + ", ".join(wrong)


def test_only_the_backends_tell_urls_from_paths() -> None:
    """Where a store lives (a local path or a URL) is the backends' business: the reader, the
    writer, the sinks and the rest ask a backend or a handle what they may do there."""
    wrong = []
    for name, path in _modules().items():
        if name.startswith("oocstore.backends") or name == "oocstore._url":
            continue
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names]
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if (module or "").endswith("_url") or "oocstore._url" in names:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not wrong, "modules outside the backends that test for URLs: " + ", ".join(wrong)
