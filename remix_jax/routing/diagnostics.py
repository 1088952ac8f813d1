"""Routing diagnostics (docs/method.md §5), computed in the forward pass, and the reader of their collection.

Per routing site and block, over the valid (non-padding) tokens:
    ess_applied       mean ESS of the weights actually applied (exactly k for remix)
    ess_softmax       mean ESS of the full softmax q
    entropy           mean router entropy H(q) in nats
    load [n]          fraction of tokens selecting each expert (dense routers: mean weight of each expert)
    distinct_subsets  number of distinct selected expert subsets in the batch
    logit_std         mean over tokens of the standard deviation of the router's n logits (the scale that
                      makes q peaked or flat; 0 for rules without logits)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

STAT_KEYS = ("log_prob", "aux_loss", "ess_applied", "ess_softmax", "entropy", "load", "distinct_subsets",
             "logit_std")


def effective_support_size(pi: Array) -> Array:
    """ESS(pi) = (sum |pi_i|)^2 / sum pi_i^2: pi [..., n] -> [...] (1 = one expert, n = uniform)."""
    pi = pi.astype(jnp.float32)
    a = jnp.abs(pi)
    return jnp.sum(a, axis=-1) ** 2 / jnp.maximum(jnp.sum(pi * pi, axis=-1), jnp.finfo(jnp.float32).tiny)


def entropy(probs: Array) -> Array:
    """Entropy in nats of probs [..., n] -> [...]."""
    p = probs.astype(jnp.float32)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def dense_weights(experts: Array, weights: Array, n: int) -> Array:
    """Scatter per-slot weights onto all experts: experts/weights [..., k] -> pi [..., n]."""
    return jnp.sum(jax.nn.one_hot(experts, n, dtype=jnp.float32) * weights[..., None].astype(jnp.float32),
                   axis=-2)


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of values [...] over mask [...] (bool); 0 when nothing is valid."""
    m = mask.astype(jnp.float32)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def expert_load(experts: Array, n: int, mask: Array) -> Array:
    """Fraction of valid tokens whose selection contains each expert: experts [..., k] -> [n]."""
    chosen = jnp.sum(jax.nn.one_hot(experts, n, dtype=jnp.float32), axis=-2).reshape(-1, n)
    m = mask.reshape(-1).astype(jnp.float32)
    return jnp.sum(chosen * m[:, None], axis=0) / jnp.maximum(jnp.sum(m), 1.0)


def distinct_subsets(experts: Array, mask: Array) -> Array:
    """Number of distinct selected subsets (order ignored) among valid tokens: experts [..., k] -> float."""
    codes = jnp.sum(jnp.left_shift(jnp.int32(1), experts.astype(jnp.int32)), axis=-1).reshape(-1)
    codes = jnp.sort(jnp.where(mask.reshape(-1), codes, -1))
    new = jnp.concatenate([codes[:1] >= 0, (codes[1:] != codes[:-1]) & (codes[1:] >= 0)])
    return jnp.sum(new).astype(jnp.float32)


def logit_scale(logits: Array | None, mask: Array) -> Array:
    """Mean over the valid tokens of std_i z_i, the spread of one token's n router logits: logits [..., n] (None:
    a rule without logits, 0), mask [...] -> float. softmax is shift-invariant: this is the scale that matters."""
    if logits is None:
        return jnp.zeros((), jnp.float32)
    return masked_mean(jnp.std(logits.astype(jnp.float32), axis=-1), mask)


def routing_diagnostics(experts: Array, weights: Array, probs: Array, mask: Array, dense: bool,
                        logits: Array | None = None) -> dict:
    """Diagnostics of one routing site (no gradient). experts/weights [B, T, k], probs [B, T, n], mask [B, T],
    logits [B, T, n] (None for rules without a learned router).

    dense: the router weighs all experts (load is then the mean weight, one distinct subset).
    """
    experts, weights, probs, logits = jax.lax.stop_gradient((experts, weights, probs, logits))
    n = probs.shape[-1]
    pi = dense_weights(experts, weights, n)
    if dense:
        load = jnp.sum(pi.reshape(-1, n) * mask.reshape(-1, 1), axis=0) / jnp.maximum(jnp.sum(mask), 1)
        subsets = (jnp.sum(mask) > 0).astype(jnp.float32)
    else:
        load = expert_load(experts, n, mask)
        subsets = distinct_subsets(experts, mask)
    return {"ess_applied": masked_mean(effective_support_size(pi), mask),
            "ess_softmax": masked_mean(effective_support_size(probs), mask),
            "entropy": masked_mean(entropy(probs), mask),
            "load": load.astype(jnp.float32),
            "distinct_subsets": subsets,
            "logit_std": logit_scale(logits, mask)}


def _sites(tree: Any, path: tuple = ()) -> list[tuple[tuple, dict]]:
    if not isinstance(tree, dict) and not hasattr(tree, "items"):
        return []
    if "log_prob" in tree:
        return [(path, tree)]
    out = []
    for k, v in tree.items():
        out.extend(_sites(v, (*path, k)))
    return out


def collect_routing_stats(variables: Any) -> dict[str, Array]:
    """Aggregate the "routing_stats" collection over routing sites (one per block by default).

    variables: the mutated variables returned by ``model.apply(..., mutable=["routing_stats"])`` (or the
    collection itself). Returns {} when nothing routed, else:
        log_prob [L, B, T] (sum over sites), aux_loss [L] (sum over sites), and the mean over sites of
        ess_applied [L], ess_softmax [L], entropy [L], load [L, n], distinct_subsets [L], logit_std [L]
    (a key that some site lacks is left out).
    """
    if hasattr(variables, "items") and "routing_stats" in variables:
        variables = variables["routing_stats"]
    sites = _sites(variables)
    if not sites:
        return {}
    out = {}
    for key in STAT_KEYS:
        if not all(key in site for _, site in sites):
            continue
        vals = [site[key] for _, site in sites]
        total = vals[0]
        for v in vals[1:]:
            total = total + v
        out[key] = total if key in ("log_prob", "aux_loss") else total / len(vals)
    return out
