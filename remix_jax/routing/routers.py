"""Routing rules: how each method turns router logits into the weights pi of docs/method.md §1.

Every rule maps logits z [..., n] (float32) to a RouterOutput:
    experts  [..., k] int32   the experts that get weight (dense rules: all n, k = n)
    weights  [..., k] float32 pi of each listed expert (remix/uniform: omega; mixlora: renormalised top-k
                              softmax; dense rules: the full softmax)
    probs    [..., n] float32 softmax(z) (uniform for uniform_random)
    log_prob [...]    float32 log Q of the ordered draw when the rule sampled a learned router, else 0
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from remix_jax.routing.sampler import gumbel_top_k, ordered_log_prob, top_k_mask, top_k_select

Array = jax.Array


class RouterOutput(NamedTuple):
    experts: Array
    weights: Array
    probs: Array
    log_prob: Array


def remix_route(logits: Array, k: int, omega: float, key: Array | None) -> RouterOutput:
    """ReMix: Gumbel-top-k draw (key given) or deterministic top-k (key None); constant weight omega."""
    z = logits.astype(jnp.float32)
    if key is None:
        experts = top_k_select(z, k)
        log_prob = jnp.zeros(z.shape[:-1], jnp.float32)
    else:
        experts = gumbel_top_k(z, k, key)
        log_prob = ordered_log_prob(z, experts)
    weights = jnp.full(experts.shape, omega, jnp.float32)
    return RouterOutput(experts, weights, jax.nn.softmax(z, axis=-1), log_prob)


def remix_inference_weights(logits: Array, k: int, omega: float, from_below: bool = False) -> Array:
    """Dense weights of ReMix's deterministic top-k: logits [..., n] -> pi [..., n] float32.

    pi_i = omega for the k experts lax.top_k selects (ties to the lower index), else 0: the same pi that
    remix_route(logits, k, omega, None) scatters from its (experts, weights), without a sort kernel.
    from_below: the same weights by the other rank formula (``sampler.top_k_mask``).
    """
    mask = top_k_mask(logits.astype(jnp.float32), k, from_below)
    return jnp.where(mask, jnp.float32(omega), jnp.float32(0.0))


def mixlora_route(logits: Array, k: int) -> RouterOutput:
    """MixLoRA: softmax over n, keep the top-k, renormalise to sum 1 (differentiable in the logits)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top, experts = jax.lax.top_k(probs, k)
    weights = top / jnp.sum(top, axis=-1, keepdims=True)
    return RouterOutput(experts.astype(jnp.int32), weights, probs, jnp.zeros(probs.shape[:-1], jnp.float32))


def dense_softmax_route(logits: Array) -> RouterOutput:
    """HydraLoRA / LoRAMoE-like: every expert weighted by the full softmax (no top-k)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    n = probs.shape[-1]
    experts = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), probs.shape)
    return RouterOutput(experts, probs, probs, jnp.zeros(probs.shape[:-1], jnp.float32))


def uniform_route(batch_shape: tuple[int, ...], n: int, k: int, omega: float, key: Array) -> RouterOutput:
    """Reference: k distinct experts uniformly at random, weight omega; nothing learned."""
    z = jnp.zeros((*batch_shape, n), jnp.float32)
    experts = gumbel_top_k(z, k, key)
    weights = jnp.full(experts.shape, omega, jnp.float32)
    return RouterOutput(experts, weights, jax.nn.softmax(z, axis=-1), jnp.zeros(batch_shape, jnp.float32))


def route(method: str, logits: Array | None, *, n: int, k: int, omega: float, key: Array | None,
          batch_shape: tuple[int, ...] = ()) -> RouterOutput:
    """Dispatch on the method name. logits [..., n] (None for uniform_random, which needs batch_shape)."""
    if method == "remix":
        return remix_route(logits, k, omega, key)
    if method == "mixlora":
        return mixlora_route(logits, k)
    if method in ("hydralora", "softmax_dense"):
        return dense_softmax_route(logits)
    if method == "uniform_random":
        return uniform_route(batch_shape, n, k, omega, key)
    raise ValueError(f"no routing rule for method {method!r}")


def load_balancing_loss(probs: Array, experts: Array, token_mask: Array | None = None) -> Array:
    """Switch-style loss n * sum_i f_i * Pbar_i over the valid tokens (docs/method.md §4).

    probs [..., n] (softmax over all experts), experts [..., k] (selected), token_mask [...] bool.
    f_i = fraction of valid tokens whose selection contains i; Pbar_i = mean router probability of i.
    f is not differentiable (it comes from top-k); the gradient flows through Pbar.
    """
    n = probs.shape[-1]
    mask = jnp.ones(probs.shape[:-1], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    chosen = jnp.sum(jax.nn.one_hot(experts, n, dtype=jnp.float32), axis=-2)  # [..., n]
    f = jnp.sum(chosen * mask[..., None], axis=tuple(range(chosen.ndim - 1))) / count
    pbar = jnp.sum(probs * mask[..., None], axis=tuple(range(probs.ndim - 1))) / count
    return n * jnp.sum(jax.lax.stop_gradient(f) * pbar)
