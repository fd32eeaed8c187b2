"""The package's import graph, read from the source (AST, nothing imported): no cycle among hyvideo modules, and
no function-local first-party import without a comment saying why it must be local."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hyvideo"
# A function-local import of our own code is allowed only for a heavy optional dependency or start-up time, and the
# comment on its line (or the line above) must say which.
REASONS = ("start-up", "optional dependency")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, here: str, known: dict[str, Path]) -> list[str]:
    """The hyvideo modules an import statement loads (`from hyvideo import x` loads hyvideo.x when it is one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = here.split(".")[: -node.level if known[here].name != "__init__.py" else None]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import hyvideo.x.y` loads hyvideo.x.y; a name inside a module -> it
            name = name.rpartition(".")[0]
        if name.startswith("hyvideo"):
            out.append(name)
    return out


def graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> modules it imports, [(module, line, source line) of function-local first-party imports])."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    local = []
    for name, path in known.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        inside = {
            id(sub)
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for sub in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in imported(node, name, known) if t != name]
            edges[name].update(targets)
            if targets and id(node) in inside:
                local.append((name, node.lineno, " ".join(lines[node.lineno - 2 : node.lineno])))
    for name in known:  # importing hyvideo.a.b runs hyvideo/a/__init__.py first
        parent = name.rpartition(".")[0]
        if parent.startswith("hyvideo") and parent != name:
            edges[name].add(parent)
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops; ignoring the edge from a
    module to the package that contains it (a package may re-export its submodules)."""

    def deps(m: str) -> set[str]:
        return {d for d in edges[m] if not m.startswith(d + ".")}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in deps(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_hyvideo_modules() -> None:
    edges, _ = graph()
    assert cycles(edges) == [], "import cycles (module-level and function-local imports both count)"


def test_function_local_first_party_imports_say_why() -> None:
    _, local = graph()
    unexplained = [f"{m}:{line}: {text.strip()}" for m, line, text in local if not any(r in text for r in REASONS)]
    assert unexplained == [], "function-local imports of our own modules need a comment naming the reason:\n" + (
        "\n".join(unexplained)
    )


def test_the_scan_sees_a_cycle_and_a_local_import() -> None:
    """The checks above can fail: a made-up graph with a cycle is reported, one without is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "a.x": {"a"}}) == []
    edges, local = graph()
    for bottom in ("hyvideo.errors", "hyvideo.choices"):  # the bottom imports nothing of ours
        assert edges[bottom] == {"hyvideo"}, edges[bottom]  # (the package __init__ runs first)
    assert "hyvideo.request" in edges["hyvideo.cli"] and any(m == "hyvideo.tiny" for m, _, _ in local)
