"""Selecting k of n experts: Gumbel-top-k sampling, its exact log-probability, and top-k (docs/method.md §2.2-2.4).

Sampling k distinct experts in order from q = softmax(z) without replacement (Plackett-Luce) equals adding
i.i.d. Gumbel(0, 1) noise to z and taking the top-k indices in order.

The deterministic top-k used at inference avoids the sort/TopK kernel for small n (``descending_rank``);
Gumbel-top-k sampling (training) keeps lax.top_k.
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


# Up to this many experts the deterministic top-k is computed by pairwise comparisons ([..., n, n]
# elementwise ops that XLA fuses into their neighbours) instead of a sort/TopK kernel.
RANK_TOP_K_MAX_N = 64
# Up to this many, the rank is n elementwise passes (no reduction op); above, one [..., n, n] compare and a sum.
RANK_UNROLL_MAX_N = 16


def total_order_key(x: Array) -> Array:
    """Integer keys ordered like lax.top_k orders floats: x [...] -> int32/int64 [...].

    The IEEE total order (-NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN): the sign-magnitude bit
    pattern with the magnitude bits of negative numbers flipped. Floats of up to 32 bits are widened to
    float32 first (exact, order-preserving); integer inputs are returned as they are.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if x.dtype == jnp.float64:
        bits, low = jax.lax.bitcast_convert_type(x, jnp.int64), jnp.int64(0x7FFFFFFFFFFFFFFF)
    else:
        bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
        low = jnp.int32(0x7FFFFFFF)
    return jnp.where(bits < 0, bits ^ low, bits)


def descending_rank(logits: Array) -> Array:
    """Position of each entry in lax.top_k's descending order: logits [..., n] -> int32 [..., n].

    rank_i = #{j : z_j > z_i or (z_j == z_i and j < i)} in the total order of ``total_order_key``, so ties
    go to the lower index exactly as in lax.top_k. O(n^2) elementwise work; meant for small n.
    """
    return _pairwise_rank(logits, descending=True)


def ascending_rank(logits: Array) -> Array:
    """n - 1 - ``descending_rank``, counted from the other end: logits [..., n] -> int32 [..., n].

    rank_i = #{j : z_j < z_i or (z_j == z_i and j > i)}. The same order by a different formula, so that a
    program needing the top-k mask twice (ReMix's FFN at inference: both routed products) holds two
    computations XLA cannot merge by common-subexpression elimination, and can fuse each into its own consumer
    instead of launching one kernel for the shared mask.
    """
    return _pairwise_rank(logits, descending=False)


def _pairwise_rank(logits: Array, descending: bool) -> Array:
    key = total_order_key(logits)
    n = key.shape[-1]
    idx = jnp.arange(n)

    def ahead(zj, zi, j, i):  # whether entry j comes before entry i in the order
        if descending:
            return (zj > zi) | ((zj == zi) & (j < i))
        return (zj < zi) | ((zj == zi) & (j > i))

    if n <= RANK_UNROLL_MAX_N:
        # n elementwise passes over [..., n], no reduction: XLA fuses the whole rank into its consumer (the
        # top-k mask scaling the experts' hidden states) instead of launching a reduction kernel for it.
        rank = jnp.zeros(key.shape, jnp.int32)
        for j in range(n):
            rank = rank + ahead(key[..., j:j + 1], key, j, idx).astype(jnp.int32)
        return rank
    before = ahead(key[..., None, :], key[..., :, None], idx[None, :], idx[:, None])  # [..., n(i), n(j)]
    return jnp.sum(before, axis=-1, dtype=jnp.int32)


def top_k_mask(logits: Array, k: int, from_below: bool = False) -> Array:
    """Membership of the k experts lax.top_k selects (ties included): logits [..., n] -> bool [..., n].

    from_below: the same mask from ``ascending_rank`` (see there) instead of ``descending_rank``."""
    n = logits.shape[-1]
    if n > RANK_TOP_K_MAX_N:
        _, idx = jax.lax.top_k(logits, k)
        return jnp.any(jax.nn.one_hot(idx, n, dtype=jnp.bool_), axis=-2)
    if from_below:
        return ascending_rank(logits) >= n - k
    return descending_rank(logits) < k


def top_k_select(logits: Array, k: int) -> Array:
    """The k largest logits in descending order: logits [..., n] -> indices [..., k] int32.

    Identical to lax.top_k's indices (ties to the lower index); for n <= RANK_TOP_K_MAX_N computed from
    ``descending_rank`` without a sort kernel.
    """
    n = logits.shape[-1]
    if n > RANK_TOP_K_MAX_N:
        _, idx = jax.lax.top_k(logits, k)
        return idx.astype(jnp.int32)
    rank = descending_rank(logits)  # [..., n]
    slot = rank[..., None, :] == jnp.arange(k, dtype=jnp.int32)[:, None]  # [..., k, n]
    return jnp.sum(jnp.where(slot, jnp.arange(n, dtype=jnp.int32), 0), axis=-1, dtype=jnp.int32)


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
