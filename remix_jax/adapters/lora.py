"""Single-adapter math: LoRA / rsLoRA and DoRA (pure functions; the modules live in modules.py), and the product with
a B factor that the mixtures (moe.py) share.

Kernels are [d_in, d_out]; A [d_in, r], B [r, d_out].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def lora_b_product(h: Array, b_all: Array) -> Array:
    """h [..., m] @ b_all [m, f] -> [..., f]: the product with a LoRA's B [r, d_out] (m = r) or a mixture's stacked
    B_all [n*r, d_out], differentiated by hand in one respect only: the order of d b_all's operands.

    JAX's own rule forms d b_all as dot(dy, h) contracting all leading axes (batch, positions and, under the
    objective's vmap, the routing samples) and transposes the [f, m] result. XLA brings a dot with several
    contracting axes to [free, contracted] form, so on CPU the [..., f] dy (often fused with the SwiGLU
    backward) was written out transposed, the largest copy of a training step. Here d b_all = dot(h, dy):
    the transposed operand is h, m (r or n*r) columns instead of f. Values equal JAX's rule up to float rounding.
    """
    return _plain_product(h, b_all)


def _plain_product(h: Array, b_all: Array) -> Array:
    return jnp.einsum("...m,mf->...f", h, b_all)


def _lora_b_product_fwd(h: Array, b_all: Array):
    # The einsum itself, not lora_b_product: remat policies that save dots (dots_no_batch) then see it as one.
    return _plain_product(h, b_all), (h, b_all)


def _lora_b_product_bwd(res, dy: Array):
    h, b_all = res
    lead = tuple(range(h.ndim - 1))
    dh = jnp.einsum("...f,mf->...m", dy, b_all)
    db = jax.lax.dot_general(h, dy, ((lead, lead), ((), ())))  # [m, f]: h^T dy over every leading axis
    return dh, db.astype(b_all.dtype)


lora_b_product.defvjp(_lora_b_product_fwd, _lora_b_product_bwd)


def lora_delta(x: Array, a: Array, b: Array, scale: float) -> Array:
    """scale * x A B: x [..., d_in] -> [..., d_out] (in x's dtype)."""
    h = jnp.einsum("...d,dr->...r", x, a.astype(x.dtype))
    return scale * lora_b_product(h, b.astype(x.dtype))


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
