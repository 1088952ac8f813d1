"""Single-adapter math: LoRA / rsLoRA and DoRA (pure functions; the modules live in modules.py).

Kernels are [d_in, d_out]; A [d_in, r], B [r, d_out].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def lora_delta(x: Array, a: Array, b: Array, scale: float) -> Array:
    """scale * x A B: x [..., d_in] -> [..., d_out] (in x's dtype)."""
    h = jnp.einsum("...d,dr->...r", x, a.astype(x.dtype))
    return scale * jnp.einsum("...r,rf->...f", h, b.astype(x.dtype))


def column_norms(w: Array) -> Array:
    """L2 norm of each output column over the input dimension: w [d_in, d_out] -> [d_out] float32."""
    w32 = w.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(w32 * w32, axis=0))


def dora_forward(x: Array, kernel: Array, a: Array, b: Array, scale: float, magnitude_delta: Array) -> Array:
    """DoRA (Liu et al. 2024): x [m * (W + s A B) / ||W + s A B||_c], no bias: x [..., d_in] -> [..., d_out].

    The magnitude is m = ||W||_c + magnitude_delta, magnitude_delta [d_out] initialised to zero, so m starts
    at the column norms of the frozen W whatever base checkpoint is loaded later (same gradient as storing m).
    As in the paper and peft, the norm of W + s A B is treated as a constant in the backward pass.
    """
    v = kernel.astype(jnp.float32) + scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
    norm = jax.lax.stop_gradient(column_norms(v))
    m = column_norms(kernel) + magnitude_delta.astype(jnp.float32)
    col_scale = m / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)
    y = jnp.einsum("...d,df->...f", x, v.astype(x.dtype))
    return y * col_scale.astype(x.dtype)
