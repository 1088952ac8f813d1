"""The RLOO (REINFORCE leave-one-out) surrogate for the ReMix router (docs/method.md §3).

For each sequence b we draw M whole-model routing selections J_1..J_M and observe their losses L[b, m].
The router gradient is G_P = 1/(M-1) * sum_m (L_m - Lbar) * grad log Q(J_m): REINFORCE with the
leave-one-out baseline b_m = mean_{m' != m} L_m', averaged over m. Both functions below are pure and
operate on a [batch, M] array; the advantages are wrapped in stop_gradient so only log Q is differentiated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

BASELINES = ("rloo", "none")


def rloo_advantages(losses: Array) -> Array:
    """Leave-one-out advantages [B, M] from losses [B, M] (M >= 2).

    adv[b, m] = L[b, m] - mean_{m' != m} L[b, m'] = M / (M - 1) * (L[b, m] - mean_m L[b, m]).
    """
    m = losses.shape[-1]
    if m < 2:
        raise ValueError(f"RLOO needs at least 2 routing samples per sequence, got M={m}")
    return (losses - jnp.mean(losses, axis=-1, keepdims=True)) * (m / (m - 1))


def reinforce_advantages(losses: Array, baseline: str = "rloo") -> Array:
    """Advantages [B, M] for ``baseline`` "rloo" (leave-one-out) or "none" (plain REINFORCE: L itself)."""
    if baseline == "rloo":
        return rloo_advantages(losses)
    if baseline == "none":
        return losses
    raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")


def rloo_surrogate(losses: Array, log_q: Array, baseline: str = "rloo",
                   weights: Array | None = None) -> Array:
    """Scalar surrogate whose gradient w.r.t. the router is the (RLOO or plain) REINFORCE estimator.

    losses [B, M]: per-sequence loss of each routing sample (treated as a constant).
    log_q  [B, M]: log-probability of each sample's whole-model selection (differentiable in the router).
    weights [B] (optional): 1 for real sequences, 0 for empty slots; the result is a weighted mean over b.

    Returns mean_b mean_m stop_gradient(adv[b, m]) * log_q[b, m]. With "rloo" its gradient is
    mean_b 1/(M-1) sum_m (L_m - Lbar) grad log Q_m. Its value carries no meaning; report it separately.
    """
    adv = jax.lax.stop_gradient(reinforce_advantages(losses, baseline))
    per_seq = jnp.mean(adv * log_q, axis=-1)  # [B]
    if weights is None:
        return jnp.mean(per_seq)
    return jnp.sum(per_seq * weights) / jnp.maximum(jnp.sum(weights), 1.0)
