"""Logical-axis rules: the model's logical parameter axis names -> mesh axes.

The decoder names its parameter axes ("vocab", "embed", "mlp", "heads", "kv", "norm", "layers");
these rules place them on the mesh (data, fsdp, tensor). FSDP shards the "embed" dimension of every
weight over the fsdp axis; tensor parallelism shards the "mlp", "heads", "kv" and "vocab" dimensions
over the tensor axis. An axis of size 1 makes the corresponding rule a no-op, so changing the
parallelism is a change of ``config.mesh`` only.

Activations are named too ("activation_batch", "activation_length", "activation_embed", ...; MaxText's
names): the batch rows over (data, fsdp), the heads, the FFN hidden units and the vocabulary over tensor, the
residual stream [B, T, d] whole on every tensor shard (Megatron-style: each tensor shard computes its heads and
FFN columns from the full residual, the o/down products are summed). ``constrain`` pins an activation to these
rules, but only inside ``activation_sharding(mesh)`` (the train step's compilation) and on a mesh of more than
one device: elsewhere it returns its input unchanged and the traced program is the same as without it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
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
    # activations (``constrain``)
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),  # no sequence parallelism
    ("activation_embed", None),  # the residual stream is whole on every tensor shard
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),  # head_dim
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
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


# The mesh and rules that ``constrain`` and the decoder's sharded kernels (splash attention) use while a step is
# traced; None outside ``activation_sharding``.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Within this context, ``constrain`` places activations on ``mesh`` by ``rules`` (wrap the tracing of a
    jitted step: its lowering or first call)."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh of the enclosing ``activation_sharding`` context, or None."""
    active = _ACTIVE.get()
    return active[0] if active is not None else None


def target_platform() -> str:
    """The platform the traced program is compiled for: that of the active mesh's devices (a TPU topology may be
    compiled for on a CPU host), else jax's default backend ("cpu", "gpu", "tpu")."""
    mesh = active_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def activation_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
                    ) -> PartitionSpec:
    """The PartitionSpec of an activation with logical axis ``names`` (trailing dims unnamed), dimensions that
    the mesh axes do not divide replicated."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    return fit_sharding(NamedSharding(mesh, spec), tuple(shape)).spec


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``x`` pinned to the sharding of its logical axis ``names`` on the active mesh; ``x`` itself when no mesh
    is active or the mesh has a single device (no-op: nothing is added to the traced program)."""
    active = _ACTIVE.get()
    if active is None or active[0].size == 1:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, activation_spec(names, x.shape, mesh, rules)))


def shardings_like_params(state: Any, param_shardings: Any, default: NamedSharding) -> Any:
    """Shardings for an optimizer state: each leaf whose key path ends with a parameter's path (Adam's moments,
    ...) takes that parameter's sharding (fitted to the leaf's shape), every other leaf (counts, scalars)
    ``default``. ``param_shardings``: the parameters' NamedShardings, a pytree shaped like the parameters. Works
    for any optax state, including ``multi_transform`` / ``masked`` ones, concrete or abstract."""
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        owners = [p for p, s in by_path.items() if key.endswith(p) and len(leaf.shape) >= len(s.spec)]
        return fit_sharding(by_path[max(owners, key=len)], tuple(leaf.shape)) if owners else default

    return jax.tree_util.tree_map_with_path(pick, state)
