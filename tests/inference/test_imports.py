"""Imports flow one way through the lower rooms: parallel and routing import nothing of the package, models only
parallel (the logical-axis rules), the inference room (its FFN paths and the decode loop) only models, routing and
parallel (an adapter config is read through its fields), and adapters only these (never training or evaluation).
The leaf utilities ``progress`` and ``cli`` import nothing of the package and may be imported anywhere.
Read from the source by tests/import_graph.py: function-level imports count, ``if TYPE_CHECKING:`` ones do not."""

import pytest

from tests import import_graph as ig

# room -> the rooms it may import at run time (besides itself and the leaves)
ALLOWED = {
    "parallel": set(),
    "routing": set(),
    "models": {"parallel"},
    "inference": {"models", "routing", "parallel"},
    "adapters": {"models", "routing", "parallel", "inference"},
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_room_imports_only_what_sits_below_it(name):
    assert ig.imports_from_above({name: ALLOWED[name]}) == {}, f"remix_jax/{name} imports from above it"


def test_leaves_import_nothing_of_the_package():
    g = ig.graph()
    assert {leaf: g[f"remix_jax.{leaf}"] for leaf in sorted(ig.LEAVES)} == {leaf: set() for leaf in sorted(ig.LEAVES)}


def test_package_level_imports_count(tmp_path):
    """``from remix_jax import progress`` imports the module remix_jax.progress."""
    (tmp_path / "remix_jax" / "models").mkdir(parents=True)
    for rel in ("remix_jax/__init__.py", "remix_jax/models/__init__.py", "remix_jax/progress.py"):
        (tmp_path / rel).write_text("")
    (tmp_path / "remix_jax" / "models" / "m.py").write_text("from remix_jax import progress as p\n")
    assert ig.graph(tmp_path)["remix_jax.models.m"] == {"remix_jax.progress"}
