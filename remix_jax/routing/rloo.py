"""The RLOO (REINFORCE leave-one-out) surrogate for the ReMix router (docs/method.md §3).

For each sequence b we draw M whole-model routing selections J_1..J_M and observe their losses L[b, m].
The router gradient is G_P = 1/(M-1) * sum_m (L_m - Lbar) * grad log Q(J_m): REINFORCE with the
leave-one-out baseline b_m = mean_{m' != m} L_m', averaged over m. The functions below are pure and
operate on [N, M] arrays; the advantages are wrapped in stop_gradient so only log Q is differentiated.
With causal credit (§3.1) the rows are routed positions instead of sequences: each position's return is
the loss from that position to the end of its sequence, and its log Q the log-probability of its routing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

BASELINES = ("rloo", "none")
# What a routing decision's advantage is computed from: the whole sequence's loss (the paper's estimator,
# (3.2)) or the loss of the positions it can change (causal credit, (3.5)).
CREDITS = ("sequence", "causal")


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
                   weights: Array | None = None, denominator: Array | float | None = None) -> Array:
    """Scalar surrogate whose gradient w.r.t. the router is the (RLOO or plain) REINFORCE estimator.

    losses [N, M]: the return of each row under each routing sample (treated as a constant): per-sequence
        losses (sequence credit), or per-position suffix losses (causal credit).
    log_q  [N, M]: log-probability of the routing each row's return is credited to (differentiable in the
        router): the whole-model selection of a sequence, or the routing of one position in every block.
    weights [N] (optional): 1 for real rows, 0 for empty slots.
    denominator (optional): what the weighted sum over rows is divided by; default sum(weights) (or N): a
        mean over sequences. Causal credit sums over positions and divides by the number of sequences.

    Returns sum_n w_n mean_m stop_gradient(adv[n, m]) * log_q[n, m] / denominator. With "rloo" and sequence
    rows its gradient is mean_b 1/(M-1) sum_m (L_m - Lbar) grad log Q_m. Its value carries no meaning; report
    it separately.
    """
    adv = jax.lax.stop_gradient(reinforce_advantages(losses, baseline))
    per_row = jnp.mean(adv * log_q, axis=-1)  # [N]
    if weights is not None:
        per_row = per_row * weights
    if denominator is None:
        denominator = per_row.shape[0] if weights is None else jnp.sum(weights)
    return jnp.sum(per_row) / jnp.maximum(denominator, 1.0)
