"""The fully unrolled layer loop under remat, each layer's variables sliced inside its checkpoint.

``nn.scan(nn.remat(Block), unroll=num_layers)`` takes layer i's slice of every stacked variable outside the
layer's checkpoint, so the slices are the checkpoint's inputs: the backward pass's recompute reads them, and in
straight-line code XLA keeps every layer's slice alive from the forward to the backward pass, a copy of all the
layer weights (``scripts/unrolled_slices_memory.py``; docs/notes/benchmarks-log.md, "The unrolled step's extra
memory is the layer weights' slices"). ``unrolled_remat_scan`` runs the same loop with each checkpoint taking the
stacked variables whole and slicing layer i inside, so the recompute slices them again and the forward pass's
slices die after their layer.

It is ``nn.scan`` otherwise: the same variable tree (stacked on a leading axis, logical axis metadata kept), every
random stream split over the layers as ``nn.scan`` splits it, the carry threaded through, per-layer outputs and
written collections (sown statistics, traces) stacked on a leading axis. It reads variables and does not create
them: the decoder initialises with ``nn.scan``. Sampled numbers (ReMix's routing draws) follow the same
distribution but are not the rolled loop's: flax traces a scanned body twice and the second trace starts its
draw counters where the first left them, a detail this loop does not copy.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift, meta


def _stack(trees: list):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _unrolled_remat_scan_core(fn, length: int, policy, metadata_params: dict):
    """Functional-core transform: ``fn(scope, carry, *args) -> (carry, y)`` run for ``length`` layers."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, carry, *args):
        variable_groups = tuple(meta.remove_axis(g, 0, metadata_params) for g in variable_groups)
        rng_groups = lift.tree_map_rngs(lambda rng: jax.random.split(jax.random.clone(rng), length), rng_groups)

        def layer(variable_groups, rng_groups, carry, i):
            scope = scope_fn(tuple(jax.tree.map(lambda a: a[i], g) for g in variable_groups),
                             lift.tree_map_rngs(lambda k: k[i], rng_groups))
            carry, y = fn(scope, carry, *args)
            return (carry, y), repack_fn(scope)

        ys, written = [], []
        for i in range(length):
            (carry, y), out = jax.checkpoint(functools.partial(layer, i=i), policy=policy, prevent_cse=True)(
                variable_groups, rng_groups, carry)
            ys.append(y)
            written.append(out)
        out = tuple(meta.add_axis(g, 0, metadata_params) for g in _stack(written))
        return (carry, _stack(ys)), out

    return lift.pack(inner, (True,), (True,), (True,), name="scan")


def unrolled_remat_scan(target, length: int, policy=None, metadata_params: dict | None = None):
    """A Module class like ``nn.scan(nn.remat(target, policy=policy, prevent_cse=True), variable_axes={True: 0},
    split_rngs={True: True}, length=length, unroll=length, in_axes=nn.broadcast, metadata_params=...)`` whose
    checkpoints slice the stacked variables inside (see the module docstring). ``target.__call__(carry, *args)``
    returns ``(carry, y)``; the arguments after the carry are the same for every layer."""
    return nn.transforms.lift_transform(_unrolled_remat_scan_core, target, length=length, policy=policy,
                                        metadata_params=metadata_params or {})
