"""The training state: frozen base, trainable adapters and routers, optimizer state, step.

The base parameters ride along in the state so a single donated argument carries every device buffer
the step touches, but they are never differentiated, never given to the optimizer and never written
to checkpoints (they are reloaded from the model path).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


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
