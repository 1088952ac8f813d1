"""No import cycle among remix_jax's modules, the upper rooms import only what sits below them, nothing imports an
entry point, configs import no entry point, the programs are thin command lines over library modules, and a module
over 400 lines says why in its docstring (tests/import_graph.py reads the imports from the source, function-level
ones included; tests/inference/test_imports.py checks the lower rooms)."""

import ast
import pathlib

import pytest

from tests import import_graph as ig

LOWER = {"parallel", "routing", "models", "inference", "adapters"}
# room -> the rooms it may import at run time (besides itself and the leaves); docs/architecture.md
UPPER = {
    "data": {"models"},
    "evaluation": LOWER | {"data"},
    "run_config": LOWER | {"data", "evaluation"},
    "presets": set(),
    "training": LOWER | {"data", "evaluation", "run_config", "rundir"},
    "rundir": {"training", "run_config"},  # a continued run's schedule (training.optimizer); schema defaults
    "export": LOWER | {"training", "presets"},
    # the library modules (its command line, sweep.__main__, is an entry point); run_config: checking the runs'
    # configs before a sweep starts them (sweep/preflight.py)
    "sweep": {"run_config"},
}


def test_no_import_cycle():
    assert ig.cycles(ig.graph()) == []


def test_leaves_import_nothing_of_the_package():
    g = ig.graph()
    assert {m for m in g if ig.room(m) in ig.LEAVES} >= {f"remix_jax.{leaf}" for leaf in ig.LEAVES}
    assert {m: sorted(e) for m, e in g.items() if ig.room(m) in ig.LEAVES and e} == {}


@pytest.mark.parametrize("name", sorted(UPPER))
def test_upper_room_imports_only_what_sits_below_it(name):
    assert ig.imports_from_above({name: UPPER[name]}) == {}, f"remix_jax/{name} imports from above it"


def test_configs_import_no_entry_point():
    bad = {}
    for path in sorted((ig.REPO / "configs").glob("*.py")):
        hits = {n for n in ig.imported_names(path, f"configs.{path.stem}", False)
                if n in ig.ENTRY_POINTS or n.startswith("remix_jax.main.")}
        if hits:
            bad[path.name] = sorted(hits)
    assert bad == {}, f"config files import entry points: {bad}"


def test_cycles_are_found():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": {"h"}, "h": {"f"}}
    assert ig.cycles(g) == [["a", "b", "c"], ["e"], ["f", "g", "h"]]
    assert ig.cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def _write(root: pathlib.Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_function_level_relative_and_package_imports_make_edges(tmp_path):
    _write(tmp_path, "pkg/__init__.py", "")
    _write(tmp_path, "pkg/sub/__init__.py", "from pkg.sub import inner\n")
    _write(tmp_path, "pkg/sub/inner.py", "def f():\n    from pkg import top\n")
    _write(tmp_path, "pkg/top.py", "from typing import TYPE_CHECKING\nfrom .sub.inner import f\n"
                                   "if TYPE_CHECKING:\n    from pkg import other\n")
    _write(tmp_path, "pkg/other.py", "import pkg.top\n")
    g = ig.graph(tmp_path, "pkg")
    assert g == {"pkg": set(), "pkg.sub": {"pkg.sub.inner"}, "pkg.sub.inner": {"pkg.top"},
                 "pkg.top": {"pkg.sub", "pkg.sub.inner"}, "pkg.other": {"pkg.top"}}
    # top -> sub.inner (a function-level import) -> top; the TYPE_CHECKING import other -> top is no cycle
    assert ig.cycles(g) == [["pkg.sub", "pkg.sub.inner", "pkg.top"]]


@pytest.mark.parametrize("module", sorted(ig.ENTRY_POINTS))
def test_entry_points_exist(module):
    assert module in ig.package_modules(), f"{module}: no such module (tests/import_graph.py ENTRY_POINTS)"


def test_no_module_imports_an_entry_point():
    """Entry points sit on top: library code lives in library modules, which the programs import."""
    bad = {m: sorted(edges & ig.ENTRY_POINTS) for m, edges in ig.graph().items() if edges & ig.ENTRY_POINTS}
    assert bad == {}, f"modules importing entry points: {bad}"


# The programs whose work lives in library modules: each defines its flags and ``main`` (flag checks, one call,
# what is printed, the exit status) and nothing else.
THIN_PROGRAMS = ("remix_jax.main", "remix_jax.evaluate", "remix_jax.generate", "remix_jax.compile",
                 "remix_jax.export.__main__")
COMMAND_LINE_FUNCTIONS = {"main", "_define_flags", "_quiet_host"}


def top_level_definitions(path: pathlib.Path) -> set[str]:
    """The functions and classes a file defines at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("module", THIN_PROGRAMS)
def test_programs_are_thin(module):
    extra = top_level_definitions(ig.package_modules()[module]) - COMMAND_LINE_FUNCTIONS
    assert extra == set(), f"{module} defines library code ({sorted(extra)}): move it into a library module"


def test_top_level_definitions_are_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\nX = 1\ndef main(argv):\n    def inner(): pass\nclass A:\n    def f(self): pass\n"
                    "async def g(): pass\nif __name__ == '__main__':\n    main([])\n")
    assert top_level_definitions(path) == {"main", "A", "g"}


MAX_LINES = 400


def test_long_modules_say_why():
    """A module over MAX_LINES lines says in its docstring why it stays one module ("... 400 lines ...")."""
    unexplained = {}
    for name, path in ig.package_modules().items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_LINES and f"{MAX_LINES} lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained[name] = lines
    assert unexplained == {}, f"modules over {MAX_LINES} lines without a reason in their docstring: {unexplained}"
