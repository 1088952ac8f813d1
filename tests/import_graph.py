"""The import graph of remix_jax, read from the source with ``ast`` (nothing is imported), for the tests of how
imports flow (tests/test_import_graph.py, tests/inference/test_imports.py).

Every import statement counts, at module level or inside a function (it runs when the function does), except
those under ``if TYPE_CHECKING:`` (annotations only). ``from a.b import c`` imports a.b, and a.b.c as well when
that is a module; importing a module first runs the ``__init__`` of each package above it.
"""

from __future__ import annotations

import ast
import functools
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "remix_jax"
# The command-line programs (``python -m ...``): they sit on top, and nothing imports them.
ENTRY_POINTS = frozenset({
    "remix_jax.main", "remix_jax.evaluate", "remix_jax.generate", "remix_jax.sweep.__main__", "remix_jax.compile",
    "remix_jax.export.__main__", "remix_jax.data.__main__", "remix_jax.evaluation.merge",
    "remix_jax.export.lm_eval_tasks", "remix_jax.models.assets",
})


# import nothing of the package: importable anywhere
LEAVES = frozenset({"progress", "cli", "cpu_memory", "compile_clock"})


def room(module: str) -> str:
    """remix_jax.ROOM.x -> ROOM; a top-level module is its own room (remix_jax.progress -> progress)."""
    return module.split(".")[1] if "." in module else module


def imports_from_above(allowed: dict[str, set[str]]) -> dict[str, list[str]]:
    """module -> the rooms it imports that ``allowed`` (room -> the rooms it may import besides itself and
    LEAVES) does not allow, for every module of the rooms of ``allowed`` that has any (entry points excepted: they
    sit on top)."""
    out = {}
    for m, edges in graph().items():
        if room(m) in allowed and m not in ENTRY_POINTS:
            extra = {room(e) for e in edges} - allowed[room(m)] - LEAVES - {room(m)}
            if extra:
                out[m] = sorted(extra)
    return out


def module_name(path: pathlib.Path, root: pathlib.Path = REPO) -> str:
    """remix_jax/a/b.py -> "remix_jax.a.b"; remix_jax/a/__init__.py -> "remix_jax.a"."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: pathlib.Path = REPO, package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """Every module of ``package`` under ``root``: dotted name -> file."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imported_names(path: pathlib.Path, name: str, is_package: bool) -> set[str]:
    """The dotted names a file imports at run time (``from a import b``: "a" and "a.b"), relative imports resolved
    against its module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start from
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
    return found


@functools.cache
def graph(root: pathlib.Path = REPO, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of ``package`` whose code runs when it imports (each import's module and the
    ``__init__`` of every package above it that is not also above the importer, which is running already)."""
    modules = package_modules(root, package)
    out = {}
    for name, path in modules.items():
        own = set(_ancestors(name)) | {name}
        edges = set()
        for target in imported_names(path, name, path.name == "__init__.py"):
            for m in (*_ancestors(target), target):
                if m in modules and m not in own:
                    edges.add(m)
        out[name] = edges
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``g``: each strongly connected component of more than one module, or of one that
    imports itself, sorted (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or node in g.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)
