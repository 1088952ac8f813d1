"""The training state: frozen base, trainable adapters and routers, optimizer state, step.

The base parameters ride along in the state so a single donated argument carries every device buffer
the step touches, but they are never differentiated, never given to the optimizer and never written
to checkpoints (they are reloaded from the model path). ``state_layout`` gives the initial state's shapes and
shardings without placing anything (the step compiles from them), ``shard_state`` places it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from remix_jax.parallel import logical as logical_lib
from remix_jax.parallel import mesh as mesh_lib


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    base: Any  # frozen "params" tree of the decoder
    trainable: dict  # {"adapter": ..., "router": ...}
    opt_state: Any  # optimizer state over ``trainable`` only


def create_train_state(base: Any, trainable: dict, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), base=base, trainable=trainable,
                      opt_state=tx.init(trainable))


def checkpointed_part(state: TrainState) -> dict:
    """The subset of the state saved in checkpoints (everything but the frozen base)."""
    return {"step": state.step, "trainable": state.trainable, "opt_state": state.opt_state}


def with_checkpointed_part(state: TrainState, part: dict) -> TrainState:
    return state.replace(step=part["step"], trainable=part["trainable"], opt_state=part["opt_state"])


def _placed_copy(tree, shardings):
    """A fresh on-device copy (the step donates its state; the caller's arrays must survive)."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def state_layout(bundle, tx, mesh) -> tuple[TrainState, TrainState]:
    """(the initial TrainState as ShapeDtypeStructs, its sharding pytree) of a ``loop.ModelBundle``, placing
    nothing: what compiling the step needs, so that it can compile before the weights are on the device
    (``loop.train``)."""
    specs = bundle.logical_specs
    base_sh = logical_lib.tree_shardings(bundle.base, specs.get("params"), mesh)
    tr_sh = {k: logical_lib.tree_shardings(v, specs.get(k), mesh) for k, v in bundle.trainable.items()}
    rep = mesh_lib.replicated(mesh)
    # The optimizer state follows its parameters; counters are replicated.
    opt_abstract = jax.eval_shape(tx.init, bundle.trainable)
    opt_sh = logical_lib.shardings_like_params(opt_abstract, tr_sh, rep)
    shardings = TrainState(step=rep, base=base_sh, trainable=tr_sh, opt_state=opt_sh)
    tree = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), base=bundle.base, trainable=bundle.trainable,
                      opt_state=opt_abstract)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)
    return abstract, shardings


def shard_state(bundle, tx, mesh, copy_base: bool = True,
                shardings: TrainState | None = None) -> tuple[TrainState, Any]:
    """The initial TrainState placed on ``mesh``, and its sharding pytree (``state_layout``'s, or ``shardings``).

    copy_base=False moves the base without a copy where possible (the bundle's base may then be donated
    by the first step); adapters and routers are always copied.
    """
    sh = shardings if shardings is not None else state_layout(bundle, tx, mesh)[1]
    base = _placed_copy(bundle.base, sh.base) if copy_base else jax.device_put(bundle.base, sh.base)
    trainable = _placed_copy(bundle.trainable, sh.trainable)
    opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(trainable)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), sh.step), base=base, trainable=trainable,
                       opt_state=opt_state)
    return state, sh


def abstract_batch(batch_sharding, batch_size: int, seq: int) -> dict:
    """The train step's batch as ShapeDtypeStructs: {tokens, loss_mask, segment_ids, positions} [batch, seq]."""
    return {k: jax.ShapeDtypeStruct((batch_size, seq), dt, sharding=batch_sharding) for k, dt in
            (("tokens", jnp.int32), ("loss_mask", jnp.float32), ("segment_ids", jnp.int32), ("positions", jnp.int32))}
