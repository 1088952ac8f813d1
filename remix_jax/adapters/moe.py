"""The mixture-of-LoRAs product sum_i pi_i x A_i B_i (docs/method.md §1), in two formulations.

Experts are stacked: A [n, d_in, r], B [n, r, d_out].

- dense: x @ A_all [d_in, n*r] (one matmul), scale each expert's r columns by pi_i, then @ B_all [n*r, d_out]
  (one matmul). Runs all n experts; zero weights make the unselected ones vanish. Few, large matmuls.
- gather: each (token, selected expert) pair becomes a row; rows are sorted by expert and multiplied with
  grouped matmuls (jax.lax.ragged_dot), so only k of n experts are computed per token.

docs/routing.md has the measurements behind the default ("auto").

The dense form's second product is ``lora.lora_b_product`` (h @ B_all with a gradient that XLA forms without writing
the d_out-wide output gradient transposed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from remix_jax.adapters.lora import lora_b_product

Array = jax.Array

# Chosen from scripts/bench_moe_layer.py (docs/routing.md): dense wins on CPU at every measured size.
AUTO_COMPUTE = "dense"


def resolve_compute(mode: str) -> str:
    return AUTO_COMPUTE if mode == "auto" else mode


def stacked_a(a: Array) -> Array:
    """A_all: the experts' A factors side by side, a [n, d_in, r] -> [d_in, n*r] (expert-major columns)."""
    n, d_in, r = a.shape
    return jnp.transpose(a, (1, 0, 2)).reshape(d_in, n * r)


def mix_hidden(h: Array, b: Array, pi: Array) -> Array:
    """The second half of dense_mixture: h = x A_all [..., n*r], b [n, r, d_out], pi [..., n] -> [..., d_out].

    Computed in h's dtype: (h * pi repeated r times) @ B_all.
    """
    n, r, _ = b.shape
    h = h * jnp.repeat(pi.astype(h.dtype), r, axis=-1)
    return lora_b_product(h, b.reshape(n * r, -1).astype(h.dtype))


def mix_hidden_stacked(h: Array, b: Array, pi: Array) -> Array:
    """mix_hidden of s projections with the same weights pi in one batched matmul.

    h [s, ..., n*r] (each projection's x A_all), b [s, n, r, d_out], pi [..., n] -> [s, ..., d_out];
    slice j equals mix_hidden(h[j], b[j], pi).
    """
    s, n, r, d_out = b.shape
    h = h * jnp.repeat(pi.astype(h.dtype), r, axis=-1)
    return jnp.einsum("s...m,smf->s...f", h, b.reshape(s, n * r, d_out).astype(h.dtype))


def dense_mixture(x: Array, a: Array, b: Array, pi: Array) -> Array:
    """sum_i pi_i x A_i B_i: x [..., d_in], a [n, d_in, r], b [n, r, d_out], pi [..., n] -> [..., d_out]."""
    h = jnp.einsum("...d,dm->...m", x, stacked_a(a).astype(x.dtype))  # [..., n*r]
    return mix_hidden(h, b, pi)


def gather_rows(x: Array, a: Array, b: Array, experts: Array, weights: Array) -> Array:
    """Row m through its own expert: w_m x_m A_{e_m} B_{e_m}.

    x [M, d_in], experts/weights [M] -> [M, d_out].
    """
    n = a.shape[0]
    order = jnp.argsort(experts, stable=True)
    group_sizes = jnp.bincount(experts, length=n).astype(jnp.int32)
    xs = x[order]
    h = jax.lax.ragged_dot(xs, a.astype(x.dtype), group_sizes)  # [M, r]
    h = h * weights[order][:, None].astype(x.dtype)
    ys = jax.lax.ragged_dot(h, b.astype(x.dtype), group_sizes)  # [M, d_out]
    return jnp.zeros_like(ys).at[order].set(ys)


def mixture_delta(x: Array, a: Array, b: Array, experts: Array, weights: Array, mode: str) -> Array:
    """sum_j w_j x A_{e_j} B_{e_j}: x [..., d_in], experts/weights [..., k] -> [..., d_out]."""
    mode = resolve_compute(mode)
    n = a.shape[0]
    if mode == "dense":
        pi = jnp.sum(jax.nn.one_hot(experts, n, dtype=weights.dtype) * weights[..., None], axis=-2)
        return dense_mixture(x, a, b, pi)
    lead, k = experts.shape[:-1], experts.shape[-1]
    rows = jnp.broadcast_to(x[..., None, :], (*lead, k, x.shape[-1])).reshape(-1, x.shape[-1])
    y = gather_rows(rows, a, b, experts.reshape(-1), weights.reshape(-1))
    return jnp.sum(y.reshape(*lead, k, -1), axis=-2)


def slot_delta(x: Array, a: Array, b: Array, experts: Array, weights: Array, mode: str) -> Array:
    """Each slot through its own expert: x [..., k, d_in], experts/weights [..., k] -> [..., k, d_out]."""
    mode = resolve_compute(mode)
    n = a.shape[0]
    if mode == "dense":
        pi = jax.nn.one_hot(experts, n, dtype=weights.dtype) * weights[..., None]  # [..., k, n]
        return dense_mixture(x, a, b, pi)
    y = gather_rows(x.reshape(-1, x.shape[-1]), a, b, experts.reshape(-1), weights.reshape(-1))
    return y.reshape(*experts.shape, -1)


def shared_a_mixture(x: Array, a: Array, b: Array, pi: Array) -> Array:
    """HydraLoRA: sum_i pi_i x A B_i with one shared A [d_in, r] and heads b [n, r, d_out]; pi [..., n]."""
    n, r, _ = b.shape
    h = jnp.einsum("...d,dr->...r", x, a.astype(x.dtype))  # [..., r]
    hw = (pi.astype(x.dtype)[..., :, None] * h[..., None, :]).reshape(*h.shape[:-1], n * r)
    return lora_b_product(hw, b.reshape(n * r, -1).astype(x.dtype))
