"""Selecting k of n experts: Gumbel-top-k sampling, its exact log-probability, and top-k (method.md §2).

Sampling k distinct experts in order from q = softmax(z) without replacement (Plackett-Luce) equals adding
i.i.d. Gumbel(0, 1) noise to z and taking the top-k indices in order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gumbel_top_k(logits: Array, k: int, key: Array) -> Array:
    """An ordered draw of k distinct experts per row: logits [..., n] -> indices [..., k] int32."""
    noise = jax.random.gumbel(key, logits.shape, jnp.float32)
    _, idx = jax.lax.top_k(logits.astype(jnp.float32) + noise, k)
    return idx.astype(jnp.int32)


def top_k_select(logits: Array, k: int) -> Array:
    """The k largest logits in descending order: logits [..., n] -> indices [..., k] int32."""
    _, idx = jax.lax.top_k(logits, k)
    return idx.astype(jnp.int32)


def ordered_log_prob(logits: Array, indices: Array) -> Array:
    """log Q of the ordered draw: logits [..., n], indices [..., k] -> [...] float32.

    log Q = sum_j [ z_{i_j} - logsumexp(z over experts not in {i_1..i_{j-1}}) ].
    """
    z = logits.astype(jnp.float32)
    n = z.shape[-1]
    onehot = jax.nn.one_hot(indices, n, dtype=jnp.bool_)  # [..., k, n]
    # Experts drawn before step j (exclusive cumulative "or" over the k steps).
    taken = jnp.cumsum(onehot.astype(jnp.int32), axis=-2) - onehot.astype(jnp.int32)
    remaining = jnp.where(taken > 0, -jnp.inf, z[..., None, :])  # [..., k, n]
    lse = jax.nn.logsumexp(remaining, axis=-1)  # [..., k]
    chosen = jnp.take_along_axis(z, indices, axis=-1)  # [..., k]
    return jnp.sum(chosen - lse, axis=-1)
