"""The training objective of every method: per-sequence response-token cross-entropy, plus the terms a method's
router adds (ReMix's RLOO surrogate, MixLoRA's load-balancing loss).

The forward pass is vmapped over M routing keys with every parameter broadcast (in_axes None), so the M
samples share the frozen weights and run as one large batched computation (M = 1 for every method but ReMix:
LoRA/rsLoRA/DoRA, MixLoRA, HydraLoRA, ... run one pass and get the first term, plus MixLoRA's aux_loss).
Per sequence s and sample m, L[s, m] is the mean cross-entropy over the response tokens of s; the
objective is

    mean_s mean_m L[s, m] + rloo_surrogate(L, logQ) + aux_loss_weight * sum_blocks(aux_loss)

(the surrogate only when ``ObjectiveConfig.sampling_router``, i.e. ReMix). The adapters receive ordinary
backprop of the first term (each sample's selection held fixed); ReMix's router receives the RLOO estimator
through the second (docs/method.md §3). A packed row holds several sequences (segment ids 1, 2, ...): losses
and log Q are summed per (row, segment) slot, and slots without response tokens are ignored. With
``credit="causal"`` (docs/method.md §3.1) the surrogate's rows are the routed positions instead: the
routing of position p in every block is credited with the loss from p to the end of its sequence
(``losses.suffix_losses_from_ce``), the leave-one-out baseline taken over the M samples' suffixes at p.

Memory of the M samples. The cross-entropy is chunked (``loss_chunk_tokens``, losses.py): each step of
the chunk loop multiplies [M * B * C, d] hidden states by the frozen [d, V] head, with
C = loss_chunk_tokens // (M * B) positions, and forms the chunk's d loss / d hidden right there (the head
is frozen: ``frozen_head=True``), keeping only that [M * B * C, d] float32 residual, so the loss holds
about two float32 [loss_chunk_tokens, V] buffers (8192 x 128256: 2 x 3.9 GiB) instead of
three float32 [M, B, T, V] tensors (M=4, B=4, T=1024, V=128256: 3 x 7.8 GiB). What remains per sample
is the decoder's saved activations, per token and layer, in the compute dtype (bf16 here; L layers,
d model width, F FFN width, q/kv the query/key-value widths, n*r the experts' stacked rank):

    remat policy    saved per token per layer                          Llama-3-8B, B*T = 4096, per sample
    full            carry d                                            1.0 GiB
    save_qkv_ffn    carry d + qkv (q + 2 kv) + attn_out q + ffn F      7.0 GiB
    save_proj_out   carry + every projection's output (base + delta    12.5 GiB with or without adapters
                    as one tensor) + attn_out
    dots_no_batch   carry + q + 2 kv + o d + every projection's dot    19.6 GiB with adapted gate/up/down
                    output; an adapted projection saves the base       (11.5 GiB without adapters)
                    output, its adapter's delta (same width) and x@A
    none            everything, including attention internals          (not bounded by the above)

(estimates from these counts, not measurements; measured peaks are in docs/performance.md, and per remat policy in
docs/notes/benchmarks-log.md, training run D: LoRA on the 8B shape 28.9 GiB with save_proj_out, the configs'
default, against 36.0 with dots_no_batch, at 1.4% more tokens/s).
With dots_no_batch the FFN dominates: the base outputs
(2F + d per layer) and, as large again, the adapters' full-width deltas; M=4 on the Llama-3-8B shape
needs about 78 GiB of activations plus 15 GiB of bf16 weights, and M=8 (157 GiB) needs
``save_qkv_ffn`` (about 56 GiB) to fit one 141 GB device. The attention
scores are never saved under these policies (cuDNN flash attention keeps none; the XLA path's batched
dots are not "no batch" dots), but the XLA path's per-layer backward transiently holds float32
[M, B, H, T, T] scores. The per-sequence losses, log Q and routing statistics are O(M * B * T).

Sample chunking (``sample_chunk`` c > 0, c divides M; ``objective_value_and_grad``). All of the above is
per sample and multiplies by M. With c > 0 only c samples are in flight: the step costs one extra
forward pass and holds the activations of c samples instead of M (M=8, save_qkv_ffn, c=2: about
14 GiB instead of 56 GiB on the Llama-3-8B shape, by the table above). The RLOO coefficient of a
sample depends on all M losses, so the step runs two passes, both over the chunks of
keys = split(key, M) (chunk j: keys[j*c:(j+1)*c], the same routing samples as the unchunked path):

    1. forward only (``lax.map``): L, log Q, validity [M, B, T] and the routing statistics of all M
       samples; the value, every metric and the advantages adv (rloo or none) come from these, the
       first two through the same reduction as the unchunked objective;
    2. forward + backward (``lax.scan`` accumulating gradients): each chunk's share of the objective,
           sum_{m in chunk} [ sum_s w_s (L[s, m] + adv[s, m] log Q[s, m]) / (M num_seq)
                              + aux_loss_weight * sum_blocks(aux_loss[m]) / M ],
       with adv constant; the shares sum to the objective, so their gradients sum to its gradient.
       With causal credit s runs over the positions (w_s = 1), adv[s, m] is the advantage of position s's
       suffix loss and log Q[s, m] the log-probability of its routing.

Gradients and metrics equal the unchunked ones up to float rounding (same keys, same selections). The
cross-entropy chunks are sized for c samples in flight (``loss_chunk_len``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from remix_jax.models.llama import lm_logits
from remix_jax.routing.diagnostics import collect_routing_stats
from remix_jax.routing.rloo import CREDITS, reinforce_advantages, rloo_surrogate
from remix_jax.training.losses import (
    chunked_token_cross_entropy,
    per_sequence_sums,
    sequence_losses,
    sequence_losses_from_ce,
    suffix_losses_from_ce,
    token_cross_entropy,
)

__all__ = ["DIAGNOSTIC_STATS", "ObjectiveConfig", "loss_chunk_len", "per_sequence_sums", "adapter_objective",
           "objective_value_and_grad", "router_surrogate", "routing_samples", "sequence_losses",
           "suffix_losses_from_ce", "token_cross_entropy"]

Array = jax.Array

DIAGNOSTIC_STATS = ("ess_applied", "ess_softmax", "entropy", "distinct_subsets", "logit_std")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static settings of the objective.

    num_samples: M routing samples per sequence (>= 2 for the RLOO baseline; 1 for learned routers).
    baseline: "rloo" (leave-one-out) or "none" (plain REINFORCE ablation).
    credit: "sequence" (the paper's estimator: every routing decision of a sequence gets the advantage of the
        sequence's loss) or "causal" (the routing of position p gets the advantage of the loss from p to the
        end of its sequence; unbiased, docs/method.md §3.1). The adapters' gradient is the same for both.
    sampling_router: True when the router is trained by the estimator (remix), else log Q is ignored.
    aux_loss_weight: multiplies the routers' auxiliary loss (mixlora load balancing). The adapters
        already scale it by AdapterConfig.load_balance_coef, so 1.0 adds it as emitted; 0.0 drops it.
    loss_chunk_tokens: logits rows per cross-entropy chunk, counted over the M samples and the (global)
        batch rows: each chunk covers max(1, loss_chunk_tokens // (M * B)) positions. Live loss memory is
        about 2 x loss_chunk_tokens x V float32 (per device: divided by the data-parallel degree).
        0 materialises the full [M, B, T, V] logits (the reference; fine for small vocabularies).
    sample_chunk: 0 vmaps all M samples at once (``adapter_objective``); c > 0 (c divides M) makes
        ``objective_value_and_grad`` process them c at a time in two passes (one extra forward pass; peak
        activation memory of c samples instead of M). Same gradients and metrics up to float rounding.
    loss_skip_chunks: n > 0 cuts each row's positions into at most n loss chunks (chunks no longer than
        loss_chunk_tokens allows) after moving its response positions to the front, and skips the head on
        chunks with no response position in any row: the prompts' vocabulary projection is never computed
        (losses.chunked_token_cross_entropy's ``needed``). 0 chunks by loss_chunk_tokens only, in position
        order. Same losses and gradients up to float rounding.
    """

    num_samples: int = 1
    baseline: str = "rloo"
    credit: str = "sequence"
    sampling_router: bool = False
    aux_loss_weight: float = 1.0
    loss_chunk_tokens: int = 8192
    sample_chunk: int = 0
    loss_skip_chunks: int = 8

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"ObjectiveConfig.num_samples={self.num_samples}: must be >= 1")
        if self.credit not in CREDITS:
            raise ValueError(f"ObjectiveConfig.credit={self.credit!r}: expected one of {CREDITS}")
        if self.loss_skip_chunks < 0:
            raise ValueError(f"ObjectiveConfig.loss_skip_chunks={self.loss_skip_chunks}: must be >= 0 (0: no skipping)")
        if self.loss_chunk_tokens < 0:
            raise ValueError(f"ObjectiveConfig.loss_chunk_tokens={self.loss_chunk_tokens}: must be >= 0 "
                             "(0 materialises the full logits)")
        if self.sample_chunk < 0 or (self.sample_chunk and self.num_samples % self.sample_chunk):
            raise ValueError(f"ObjectiveConfig.sample_chunk={self.sample_chunk}: must be 0 (all samples at once) "
                             f"or a positive divisor of num_samples={self.num_samples}")


def loss_chunk_len(cfg: ObjectiveConfig, batch_size: int, seq_len: int) -> int:
    """Positions per cross-entropy chunk: loss_chunk_tokens spread over the samples in flight (M, or
    sample_chunk when it is > 0) and B rows (at least 1), and at most ceil(seq_len / loss_skip_chunks) when that
    is > 0; ``seq_len`` (one chunk, the full logits) when loss_chunk_tokens is 0."""
    if cfg.loss_chunk_tokens == 0:
        return seq_len
    in_flight = cfg.sample_chunk or cfg.num_samples
    c = max(1, min(seq_len, cfg.loss_chunk_tokens // (in_flight * batch_size)))
    return min(c, -(-seq_len // cfg.loss_skip_chunks)) if cfg.loss_skip_chunks else c


def _sample_fn(apply_fn: Callable, trainable: dict, base: Any, batch: dict, cfg: ObjectiveConfig) -> Callable:
    """The forward pass of one routing sample: key -> (loss [B, T], log_q [B, T], valid [B, T], stats, credit).

    loss / log_q / valid per (row, segment) slot; stats as ``collect_routing_stats`` returns them; credit the
    rows of the router's surrogate: for cfg.credit "sequence" (), for "causal" (suffix [B, T], token_log_q
    [B, T]): each position's suffix loss and the log-probability of its routing summed over blocks (0 at
    padding). Meant to be vmapped over routing keys."""
    tokens, seg = batch["tokens"], batch["segment_ids"]
    chunk_len = loss_chunk_len(cfg, *tokens.shape)

    def one_sample(k):
        ((hidden, head), _), mut = apply_fn(
            {"params": base, **trainable}, tokens, segment_ids=seg, positions=batch["positions"],
            deterministic=False, rngs={"routing": k}, mutable=["routing_stats"], return_hidden=True)
        if cfg.loss_chunk_tokens:
            needed = batch["loss_mask"] > 0 if cfg.loss_skip_chunks else None
            ce = chunked_token_cross_entropy(hidden, head, tokens, chunk_len, frozen_head=True, needed=needed)
        else:
            ce = token_cross_entropy(lm_logits(hidden, head), tokens)
        loss, valid = sequence_losses_from_ce(ce, batch["loss_mask"], seg)
        stats = collect_routing_stats(mut)
        if cfg.sampling_router and "log_prob" in stats:
            per_token = jnp.sum(stats["log_prob"].astype(jnp.float32), axis=0)  # [B, T]: sum over blocks
        else:
            per_token = jnp.zeros_like(loss)
        log_q = per_sequence_sums(per_token, seg)
        credit = ()
        if cfg.sampling_router and cfg.credit == "causal":
            credit = (suffix_losses_from_ce(ce, batch["loss_mask"], seg), per_token)
        return loss, log_q, valid, stats, credit

    return one_sample


def routing_samples(apply_fn: Callable, trainable: dict, base: Any, batch: dict, keys: Array,
                    cfg: ObjectiveConfig) -> tuple:
    """The forward passes of the routing samples keys [M] (vmapped, parameters broadcast): (loss, log_q, valid
    [M, B, T], stats, credit), each as ``_sample_fn`` returns it with a leading [M]; what the objective and its
    surrogate (``router_surrogate``) are computed from."""
    return jax.vmap(_sample_fn(apply_fn, trainable, base, batch, cfg))(keys)


def _credit_rows(losses: Array, log_q: Array, valid: Array, credit: tuple,
                 cfg: ObjectiveConfig) -> tuple[Array, Array, Array | None]:
    """The surrogate's rows: (returns [N, M], log_q [N, M], weights [N] or None) from the M samples' per-slot
    losses / log_q / valid [M, B, T] (sequence credit: N = B*T slots, weighted by validity) or their credit
    (causal: N = B*T positions, suffix losses and token log Q, no weights: padding has log Q 0 and suffix 0)."""
    m = cfg.num_samples
    if cfg.credit == "causal":
        suffix, token_log_q = credit
        return suffix.reshape(m, -1).T, token_log_q.reshape(m, -1).T, None
    return losses.reshape(m, -1).T, log_q.reshape(m, -1).T, valid[0].reshape(-1).astype(jnp.float32)


def router_surrogate(losses: Array, log_q: Array, valid: Array, credit: tuple, cfg: ObjectiveConfig) -> Array:
    """The router's surrogate, (3.3) (cfg.credit "sequence") or (3.7) ("causal"), from the M samples' per-slot
    losses / log_q / valid [M, B, T] and credit (``_sample_fn``'s, leading [M]); divided by the number of
    sequences either way. Only its gradient through log_q (sequence) or credit's token log Q (causal) means
    anything."""
    returns, credit_log_q, weights = _credit_rows(losses, log_q, valid, credit, cfg)
    num_seq = jnp.maximum(jnp.sum(valid[0].astype(jnp.float32)), 1.0)
    return rloo_surrogate(returns, credit_log_q, cfg.baseline, weights, num_seq)


def _objective_from_samples(losses: Array, log_q: Array, valid: Array, stats: dict, credit: tuple,
                            cfg: ObjectiveConfig) -> tuple[Array, dict]:
    """(total, metrics) from the M samples' losses / log_q / valid [M, B, T], stats (leading [M]) and credit
    (``_sample_fn``'s, leading [M])."""
    m = cfg.num_samples
    w = valid[0].reshape(-1).astype(jnp.float32)  # [B*T]; validity does not depend on the sample
    l_sm = losses.reshape(m, -1).T  # [B*T, M]
    q_sm = log_q.reshape(m, -1).T
    num_seq = jnp.maximum(jnp.sum(w), 1.0)
    task_loss = jnp.sum(jnp.mean(l_sm, axis=-1) * w) / num_seq
    total = task_loss
    metrics = {"loss": task_loss, "num_sequences": jnp.sum(w)}
    if cfg.sampling_router:
        surrogate = router_surrogate(losses, log_q, valid, credit, cfg)
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


def adapter_objective(apply_fn: Callable, trainable: dict, base: Any, batch: dict, key: Array,
                    cfg: ObjectiveConfig) -> tuple[Array, dict]:
    """(total objective scalar, metrics) for one batch of any method, all M samples vmapped at once.

    apply_fn: ``model.apply``; trainable: {"adapter": ..., "router": ...}; base: frozen "params" tree;
    batch: tokens / loss_mask / segment_ids / positions, each [B, T]; key: this step's routing key.
    Metrics (scalars): loss (mean task loss), surrogate, aux_loss, num_sequences, routing/* diagnostics
    averaged over blocks and samples, and routing/<stat>_per_block [L].
    ``cfg.sample_chunk`` is ignored here (``objective_value_and_grad`` honours it).
    """
    cfg = dataclasses.replace(cfg, sample_chunk=0)  # all M in flight (sizes the cross-entropy chunks)
    keys = jax.random.split(key, cfg.num_samples)
    # Parameters are closed over (broadcast); only the routing key is mapped.
    losses, log_q, valid, stats, credit = routing_samples(apply_fn, trainable, base, batch, keys, cfg)
    return _objective_from_samples(losses, log_q, valid, stats, credit, cfg)


def objective_value_and_grad(apply_fn: Callable, trainable: dict, base: Any, batch: dict, key: Array,
                         cfg: ObjectiveConfig) -> tuple[tuple[Array, dict], Any]:
    """((total, metrics), grads w.r.t. ``trainable``): what ``jax.value_and_grad(adapter_objective,
    has_aux=True)`` returns, with the M samples processed ``cfg.sample_chunk`` at a time when it is > 0.

    sample_chunk 0: exactly ``jax.value_and_grad`` of ``adapter_objective``. sample_chunk c > 0 (c | M):
      pass 1, forward only: ``lax.map`` over the M / c chunks of keys = split(key, M) (chunk j holds
        keys[j*c:(j+1)*c]) gives losses / log_q / valid [M, B, T] and the routing stats [M, ...]; the
        value and every metric come from these through the same reduction as the unchunked objective,
        and the advantages adv [M, B*T] (rloo or none) are fixed from all M losses;
      pass 2, forward + backward: ``lax.scan`` over the chunks, summing the gradients of each chunk's
        share of the objective with adv held constant,
            sum_{m in chunk} [ sum_s w_s (L[s,m] + adv[s,m] log_q[s,m]) / (M * num_seq)
                               + aux_loss_weight * sum_blocks(aux_loss[m]) / M ],
        whose sum over chunks is the objective, term by term.
    """
    if not cfg.sample_chunk:
        fn = functools.partial(adapter_objective, apply_fn, cfg=cfg)
        return jax.value_and_grad(fn, has_aux=True)(trainable, base, batch, key)
    m, c = cfg.num_samples, cfg.sample_chunk
    keys = jax.random.split(key, m)
    chunk_keys = keys.reshape((m // c, c) + keys.shape[1:])

    def merge(x):  # [M / c, c, ...] -> [M, ...]
        return x.reshape((m,) + x.shape[2:])

    # Pass 1: forward only, c samples in flight; nothing here is differentiated.
    fwd = jax.vmap(_sample_fn(apply_fn, trainable, base, batch, cfg))
    losses, log_q, valid, stats, credit = jax.tree.map(merge, jax.lax.map(fwd, chunk_keys))
    total, metrics = _objective_from_samples(losses, log_q, valid, stats, credit, cfg)

    w = valid[0].reshape(-1).astype(jnp.float32)  # [B*T]
    norm = jnp.maximum(jnp.sum(w), 1.0) * m
    if cfg.sampling_router:
        returns, _, weights = _credit_rows(losses, log_q, valid, credit, cfg)
        adv = reinforce_advantages(returns, cfg.baseline).T  # [M, N]
        if weights is not None:
            adv = adv * weights
    else:
        adv = jnp.zeros((m, w.shape[0]), jnp.float32)
    chunk_adv = adv.reshape(m // c, c, -1)

    def chunk_objective(tr, ks, a):
        lc, qc, _, sc, cc = jax.vmap(_sample_fn(apply_fn, tr, base, batch, cfg))(ks)  # [c, B, T]
        part = jnp.sum(lc.reshape(c, -1) * w) / norm
        if cfg.sampling_router:
            credit_q = cc[1] if cfg.credit == "causal" else qc  # [c, B, T]: the rows' log Q
            part = part + jnp.sum(a * credit_q.reshape(c, -1)) / norm
        if "aux_loss" in sc and cfg.aux_loss_weight:
            part = part + cfg.aux_loss_weight * jnp.sum(sc["aux_loss"].astype(jnp.float32)) / m
        return part

    chunk_grad = jax.grad(chunk_objective)

    def body(acc, xs):
        g = chunk_grad(trainable, *xs)
        return jax.tree.map(jnp.add, acc, g), None

    # Pass 2: forward + backward, c samples' activations live at a time.
    grads, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, trainable), (chunk_keys, chunk_adv))
    return (total, metrics), grads
