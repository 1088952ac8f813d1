"""Logical-axis rules: the model's logical parameter axis names -> mesh axes.

The decoder names its parameter axes ("vocab", "embed", "mlp", "heads", "kv", "norm", "layers");
these rules place them on the mesh (data, fsdp, tensor). FSDP shards the "embed" dimension of every
weight over the fsdp axis; tensor parallelism shards the "mlp", "heads", "kv" and "vocab" dimensions
over the tensor axis. An axis of size 1 makes the corresponding rule a no-op, so changing the
parallelism is a change of ``config.mesh`` only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("norm", None),
    ("layers", None),
    ("expert", None),  # adapter / router expert axis: replicated
)


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree of logical PartitionSpecs (leaves without names are replicated).

    A dimension is only sharded when the mesh axis size divides it; otherwise it is replicated, so odd
    shapes (e.g. 9 heads on a tensor axis of 2) still run.
    """
    return jax.tree.map(lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec or (), rules)),
                        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def fit_sharding(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Drop mesh axes from dimensions they do not divide (falls back to replication for that dim)."""
    mesh = sharding.mesh
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    out = []
    for dim, axes in zip(shape, spec, strict=False):
        if axes is None:
            out.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = 1
        for n in names:
            size *= mesh.shape[n]
        out.append(axes if dim % size == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*out[:len(shape)]))


def tree_shardings(abstract: Any, logical_specs: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Shardings for every array of ``abstract`` from its logical specs (a matching pytree or None)."""
    if logical_specs is None:
        return jax.tree.map(lambda x: NamedSharding(mesh, PartitionSpec()), abstract)
    shard = logical_to_shardings(logical_specs, mesh, rules)
    return jax.tree.map(lambda s, x: fit_sharding(s, x.shape), shard, abstract)
