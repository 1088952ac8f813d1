"""Imports flow one way around the inference room: parallel and routing import nothing of the package, models only
parallel (the logical-axis rules), the inference package only models, routing and parallel (adapters call it), and
adapters neither training nor evaluation.
Read from the source (imports under ``if TYPE_CHECKING:`` are for annotations only and are not counted)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "remix_jax"
# package -> the remix_jax packages it may import at run time
ALLOWED = {
    "parallel": set(),
    "routing": set(),
    "models": {"parallel"},
    "inference": {"models", "routing", "parallel"},
    "adapters": {"models", "routing", "parallel", "inference"},
}


def runtime_imports(path: pathlib.Path) -> set[str]:
    """The remix_jax subpackages (or top-level modules) a file imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "remix_jax" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_sits_below_it(package):
    bad = {}
    for path in sorted((PACKAGE / package).glob("*.py")):
        extra = runtime_imports(path) - ALLOWED[package] - {package}
        if extra:
            bad[path.name] = sorted(extra)
    assert bad == {}, f"remix_jax/{package} imports from above it: {bad}"


def test_type_checking_imports_are_not_counted(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nimport remix_jax.models.llama\n"
                 "if TYPE_CHECKING:\n    from remix_jax.adapters.adapter_config import AdapterConfig\n"
                 "def g():\n    from remix_jax.training import objective\n")
    assert runtime_imports(f) == {"models", "training"}  # a function-level import counts: it runs
