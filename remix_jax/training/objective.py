"""The training objective: per-sequence response-token cross-entropy, plus the router's RLOO surrogate.

For ``remix`` the forward pass is vmapped over M routing keys with every parameter broadcast
(in_axes None), so the M samples share the frozen weights and run as one large batched computation.
Per sequence s and sample m, L[s, m] is the mean cross-entropy over the response tokens of s; the
objective is

    mean_s mean_m L[s, m] + rloo_surrogate(L, logQ) + aux_loss_weight * sum_blocks(aux_loss)

The adapters receive ordinary backprop of the first term (each sample's selection held fixed); the
router receives the RLOO estimator through the second (method.md section 3). A packed row holds several
sequences (segment ids 1, 2, ...): losses and log Q are summed per (row, segment) slot, and slots without
response tokens are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from remix_jax.routing.diagnostics import collect_routing_stats
from remix_jax.routing.rloo import rloo_surrogate

Array = jax.Array

DIAGNOSTIC_STATS = ("ess_applied", "ess_softmax", "entropy", "distinct_subsets")


def token_cross_entropy(logits: Array, tokens: Array) -> Array:
    """ce [B, T]: ce[:, t] = -log p(tokens[:, t] | logits[:, t-1]); ce[:, 0] = 0 (nothing predicts it).

    logits [B, T, V] (any float dtype; computed in float32), tokens [B, T] int.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.pad(-tgt, ((0, 0), (1, 0)))


def per_sequence_sums(values: Array, segment_ids: Array) -> Array:
    """Sums [B, T] of ``values`` [B, T] per (row, segment): slot s-1 holds segment s; padding dropped."""
    t = values.shape[1]
    seg = segment_ids.astype(jnp.int32)

    def row(v, s):
        return jax.ops.segment_sum(jnp.where(s > 0, v, 0.0), s, num_segments=t + 1)[1:]

    return jax.vmap(row)(values.astype(jnp.float32), seg)


def sequence_losses(logits: Array, tokens: Array, loss_mask: Array,
                    segment_ids: Array) -> tuple[Array, Array]:
    """(loss [B, T], valid [B, T]): mean response-token CE of each (row, segment) slot, and slot validity.

    loss_mask [B, T] is 1 where tokens[t] is a response token predicted from position t-1.
    """
    ce = token_cross_entropy(logits, tokens)
    mask = loss_mask.astype(jnp.float32) * (segment_ids > 0)
    num = per_sequence_sums(ce * mask, segment_ids)
    den = per_sequence_sums(mask, segment_ids)
    valid = den > 0
    return jnp.where(valid, num / jnp.maximum(den, 1.0), 0.0), valid


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static settings of the objective.

    num_samples: M routing samples per sequence (>= 2 for the RLOO baseline; 1 for learned routers).
    baseline: "rloo" (leave-one-out) or "none" (plain REINFORCE ablation).
    sampling_router: True when the router is trained by the estimator (remix), else log Q is ignored.
    aux_loss_weight: multiplies the routers' auxiliary loss (mixlora load balancing). The adapters
        already scale it by AdapterConfig.load_balance_coef, so 1.0 adds it as emitted; 0.0 drops it.
    """

    num_samples: int = 1
    baseline: str = "rloo"
    sampling_router: bool = False
    aux_loss_weight: float = 1.0


def remix_objective(apply_fn: Callable, trainable: dict, base: Any, batch: dict, key: Array,
                    cfg: ObjectiveConfig) -> tuple[Array, dict]:
    """(total objective scalar, metrics) for one batch.

    apply_fn: ``model.apply``; trainable: {"adapter": ..., "router": ...}; base: frozen "params" tree;
    batch: tokens / loss_mask / segment_ids / positions, each [B, T]; key: this step's routing key.
    Metrics (scalars): loss (mean task loss), surrogate, aux_loss, num_sequences, routing/* diagnostics
    averaged over blocks and samples, and routing/<stat>_per_block [L].
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    keys = jax.random.split(key, cfg.num_samples)

    def one_sample(k):
        (logits, _), mut = apply_fn(
            {"params": base, **trainable}, tokens, segment_ids=seg, positions=batch["positions"],
            deterministic=False, rngs={"routing": k}, mutable=["routing_stats"])
        loss, valid = sequence_losses(logits, tokens, batch["loss_mask"], seg)
        stats = collect_routing_stats(mut)
        if cfg.sampling_router and "log_prob" in stats:
            per_token = jnp.sum(stats["log_prob"].astype(jnp.float32), axis=0)  # [B, T]: sum over blocks
            log_q = per_sequence_sums(per_token, seg)
        else:
            log_q = jnp.zeros_like(loss)
        return loss, log_q, valid, stats

    # Parameters are closed over (broadcast); only the routing key is mapped.
    losses, log_q, valid, stats = jax.vmap(one_sample)(keys)  # [M, B, T] each
    m = cfg.num_samples
    w = valid[0].reshape(-1).astype(jnp.float32)  # [B*T]; validity does not depend on the sample
    l_sm = losses.reshape(m, -1).T  # [B*T, M]
    q_sm = log_q.reshape(m, -1).T
    num_seq = jnp.maximum(jnp.sum(w), 1.0)
    task_loss = jnp.sum(jnp.mean(l_sm, axis=-1) * w) / num_seq
    total = task_loss
    metrics = {"loss": task_loss, "num_sequences": jnp.sum(w)}
    if cfg.sampling_router:
        surrogate = rloo_surrogate(l_sm, q_sm, cfg.baseline, w)
        total = total + surrogate
        metrics["surrogate"] = surrogate
        metrics["routing/log_q"] = jnp.sum(jnp.mean(q_sm, axis=-1) * w) / num_seq
    if "aux_loss" in stats:
        aux_loss = jnp.mean(jnp.sum(stats["aux_loss"].astype(jnp.float32), axis=-1))  # sum over blocks
        metrics["aux_loss"] = aux_loss
        if cfg.aux_loss_weight:
            total = total + cfg.aux_loss_weight * aux_loss
    for name in DIAGNOSTIC_STATS:
        if name in stats:
            per_block = jnp.mean(stats[name].astype(jnp.float32), axis=0)  # [M, L] -> [L]
            metrics[f"routing/{name}"] = jnp.mean(per_block)
            metrics[f"routing/{name}_per_block"] = per_block
    if "routing/ess_softmax" in metrics:
        metrics["routing/ess"] = metrics["routing/ess_softmax"]
    if "load" in stats:  # [M, L, n]: the busiest expert's share, averaged over blocks
        metrics["routing/max_load"] = jnp.mean(jnp.max(stats["load"].astype(jnp.float32), axis=-1))
    return total, metrics
