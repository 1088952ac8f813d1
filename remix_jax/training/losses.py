"""Token and sequence cross-entropy, with a chunked form that never holds the full-vocabulary logits.

``token_cross_entropy`` takes logits [B, T, V]; ``chunked_token_cross_entropy`` takes the decoder's final
hidden states [B, T, d] and the frozen output matrix, [d, V] or a tied embedding's [V, d]
(``Decoder(..., return_hidden=True)``), and gives the same values without materialising [B, T, V]:

    for each chunk of C positions:  logits = hidden[:, chunk] @ head     [B, C, V] (compute dtype, f32 acc)
                                    nll    = logsumexp(logits) - logits[target]

The chunks run under ``lax.map``; each chunk's function has a custom VJP whose residuals are its inputs
and the log-normaliser [B, C], so the backward pass recomputes that chunk's logits instead of keeping
them, and forms d logits = g * softmax in one fused pass (the one-hot term goes through gathered head
columns, never through a [B, C, V] buffer): live memory is about two chunk-sized float32 buffers
instead of three full float32 [B, T, V] tensors. Gradients flow to ``hidden`` (and through it to
adapters); the head's gradient is defined too but is removed by XLA when unused.

With ``frozen_head=True`` (what the objective uses: the head is frozen base weight, the embedding in tied
models) the head is a constant and each chunk forms d nll / d hidden = softmax @ head^T - head[:, target]^T
already in the forward pass (it does not depend on the cotangent, which only scales it per position): two
products with the [d, V] head per chunk instead of three, and a [B, C, d] float32 residual instead of the
inputs and the log-normaliser.

Under ``jax.vmap`` over routing samples the chunk of each sample is batched together, so one step of the
map multiplies [M * B * C, d] by [d, V]: the matmul stays large while memory per step is M * B * C * V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.models.llama import lm_logits, vocab_major

Array = jax.Array


def token_cross_entropy(logits: Array, tokens: Array) -> Array:
    """ce [B, T]: ce[:, t] = -log p(tokens[:, t] | logits[:, t-1]); ce[:, 0] = 0 (nothing predicts it).

    logits [B, T, V] (any float dtype; computed in float32), tokens [B, T] int.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.pad(-tgt, ((0, 0), (1, 0)))


def _logits_lse_nll(hidden: Array, head: Array, targets: Array) -> tuple[Array, Array, Array]:
    """(logits [B, C, V] float32, log-normaliser [B, C], nll [B, C]) of one chunk."""
    logits = lm_logits(hidden, head)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logits, lse, lse - target_logit


def _hidden_grad(scaled_probs: Array, head_c: Array, targets: Array, scale: Array | float, d: int) -> Array:
    """scaled_probs @ head^T - scale * head[:, target]^T, float32 [B, C, d]: d nll / d hidden times the
    per-position ``scale`` (scaled_probs = scale * softmax, in the compute dtype). The one-hot part never
    touches a [B, C, V] buffer: the target columns of the head are gathered. head_c: [d, V] or [V, d]
    (``lm_logits``), d the hidden size."""
    if vocab_major(head_c, d):
        target_cols = jnp.take(head_c, targets, axis=0).astype(jnp.float32)  # [B, C, d]
        spec = "...v,vd->...d"
    else:
        target_cols = jnp.moveaxis(jnp.take(head_c, targets, axis=1), 0, -1).astype(jnp.float32)
        spec = "...v,dv->...d"
    return jnp.einsum(spec, scaled_probs, head_c, preferred_element_type=jnp.float32) - scale * target_cols


def _chunk_nll_fwd(hidden: Array, head: Array, targets: Array):
    _, lse, nll = _logits_lse_nll(hidden, head, targets)
    return nll, (hidden, head, targets, lse)


def _chunk_nll_bwd(res, g):
    """Recomputes the chunk's logits. d nll / d logits = softmax - onehot(target), so

        d hidden = (g * softmax) @ head^T - g * head[:, target]^T

    and the one-hot part never touches a [B, C, V] buffer (the target columns of the head are gathered).
    """
    hidden, head, targets, lse = res
    cdt = hidden.dtype
    logits = lm_logits(hidden, head)
    dsoft = (g[..., None] * jnp.exp(logits - lse[..., None])).astype(cdt)  # the compute dtype, as forward
    dh = _hidden_grad(dsoft, head.astype(cdt), targets, g[..., None], hidden.shape[-1])
    # The head's cotangent; unused (and removed by XLA) when the head is frozen, as in the objective.
    d = hidden.shape[-1]
    dhead = jnp.einsum("...d,...v->dv", hidden, dsoft, preferred_element_type=jnp.float32)
    gh = (g[..., None] * hidden.astype(jnp.float32)).reshape(-1, d)
    dhead = dhead.at[:, targets.reshape(-1)].add(-gh.T)
    if vocab_major(head, d):
        dhead = dhead.T
    return dh.astype(cdt), dhead.astype(head.dtype), np.zeros(targets.shape, jax.dtypes.float0)


@jax.custom_vjp
def _chunk_nll(hidden: Array, head: Array, targets: Array) -> Array:
    """nll [B, C] of targets [B, C] under logits = hidden [B, C, d] @ head [d, V] (float32).

    A custom VJP whose residuals are only the inputs and the log-normaliser [B, C]: neither the forward
    nor the backward pass keeps a [B, C, V] tensor beyond the chunk's own computation.
    """
    return _chunk_nll_fwd(hidden, head, targets)[0]


_chunk_nll.defvjp(_chunk_nll_fwd, _chunk_nll_bwd)


def _frozen_fwd(hidden: Array, head: Array, targets: Array):
    """nll and, already in the forward pass, u = d nll / d hidden per position (the backward scales it by g).

    d nll_t / d hidden_t = softmax_t @ head^T - head[:, target_t]^T does not depend on the cotangent g_t, which
    only scales it, so the head's matmul that the recomputing form runs in the backward pass runs here
    instead, and the backward pass is one multiply: two products with the head per chunk instead of three.
    The residual u is [B, C, d] float32 (the recomputing form keeps hidden [B, C, d] and lse [B, C]).
    """
    cdt = hidden.dtype
    logits, lse, nll = _logits_lse_nll(hidden, head, targets)
    probs = jnp.exp(logits - lse[..., None]).astype(cdt)  # the compute dtype, as the recomputing form
    u = _hidden_grad(probs, head.astype(cdt), targets, 1.0, hidden.shape[-1])
    # (an empty array carries hidden's dtype to the backward pass: the cotangent must have it)
    return nll, (u, head, jnp.zeros((0,), cdt))


def _frozen_bwd(res, g):
    u, head, dtype_of = res
    return ((g[..., None] * u).astype(dtype_of.dtype), jnp.zeros_like(head),
            np.zeros(u.shape[:-1], jax.dtypes.float0))


@jax.custom_vjp
def _chunk_nll_frozen_head(hidden: Array, head: Array, targets: Array) -> Array:
    """``_chunk_nll`` for a frozen head: the gradient reaches ``hidden`` only (the head's cotangent is zero;
    callers pass ``jax.lax.stop_gradient(head)`` so that this is also what differentiation means)."""
    return _frozen_fwd(hidden, head, targets)[0]


_chunk_nll_frozen_head.defvjp(_frozen_fwd, _frozen_bwd)


def chunked_token_cross_entropy(hidden: Array, head: Array, tokens: Array, chunk_len: int,
                                frozen_head: bool = False, needed: Array | None = None) -> Array:
    """ce [B, T] equal to ``token_cross_entropy(lm_logits(hidden, head), tokens)``, in chunks of positions.

    hidden [B, T, d] (the compute dtype), head [d, V] or [V, d] (``lm_logits``), tokens [B, T] int;
    chunk_len: positions per chunk (any value >= 1; T need not be a multiple: the remainder is one smaller chunk).
    Live memory of the forward and backward pass is O(B * chunk_len * V) instead of O(B * T * V).
    frozen_head: the head gets no gradient (it is treated as a constant), and d ce / d hidden is formed in
    the forward pass (``_frozen_fwd``): one product with the [d, V] head fewer per chunk than recomputing
    the logits in the backward pass. The objective uses it (the head is frozen base weight).
    needed: optional [B, T] bool, True where ce[:, t] is used (a response token: the loss mask). Each row's
    needed positions are then moved to the front (a stable sort, so the chunks hold them in order) and a chunk
    with no needed position in any row skips the head (``lax.cond``): with prompts masked out, most of the
    vocabulary projection is never computed. ce at a position that is not needed is its value or 0.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len={chunk_len}: the number of positions per loss chunk must be >= 1")
    b, t, d = hidden.shape
    if tokens.shape != (b, t):
        raise ValueError(f"tokens {tokens.shape} do not match hidden states {hidden.shape}")
    c = min(int(chunk_len), t)
    # Position t predicts tokens[t + 1]; the last position's target is a placeholder, dropped below.
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1).astype(jnp.int32)

    nll = _chunk_nll
    if frozen_head:
        nll, head = _chunk_nll_frozen_head, jax.lax.stop_gradient(head)
    if needed is None:
        def chunk_fn(h, hd, tg, start):
            return nll(h, hd, tg)
    else:
        # Position p predicts tokens[p + 1]: its prediction is needed where token p + 1 is.
        use = jnp.concatenate([needed[:, 1:], jnp.zeros_like(needed[:, :1])], axis=1).astype(bool)
        order = jnp.argsort(~use, axis=1, stable=True)  # [B, T]: each row's needed positions first, in order
        hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
        targets = jnp.take_along_axis(targets, order, axis=1)
        most = jnp.max(jnp.sum(use, axis=1))  # needed positions of the fullest row: chunks from there are skipped

        def chunk_fn(h, hd, tg, start):
            return jax.lax.cond(start < most, lambda: nll(h, hd, tg), lambda: jnp.zeros(tg.shape, jnp.float32))

    n_full = t // c
    h_main = hidden[:, :n_full * c].reshape(b, n_full, c, d).swapaxes(0, 1)  # [n, B, C, d]
    tg_main = targets[:, :n_full * c].reshape(b, n_full, c).swapaxes(0, 1)
    starts = jnp.arange(n_full) * c
    per_chunk = jax.lax.map(lambda xs: chunk_fn(xs[0], head, xs[1], xs[2]), (h_main, tg_main, starts))  # [n, B, C]
    parts = [per_chunk.swapaxes(0, 1).reshape(b, n_full * c)]
    if t > n_full * c:
        parts.append(chunk_fn(hidden[:, n_full * c:], head, targets[:, n_full * c:], n_full * c))
    per_position = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    if needed is not None:  # back to the positions' own order
        per_position = jnp.take_along_axis(per_position, jnp.argsort(order, axis=1), axis=1)
    return jnp.pad(per_position[:, :-1], ((0, 0), (1, 0)))


def per_sequence_sums(values: Array, segment_ids: Array) -> Array:
    """Sums [B, T] of ``values`` [B, T] per (row, segment): slot s-1 holds segment s; padding dropped."""
    t = values.shape[1]
    seg = segment_ids.astype(jnp.int32)

    def row(v, s):
        return jax.ops.segment_sum(jnp.where(s > 0, v, 0.0), s, num_segments=t + 1)[1:]

    return jax.vmap(row)(values.astype(jnp.float32), seg)


def sequence_losses_from_ce(ce: Array, loss_mask: Array, segment_ids: Array) -> tuple[Array, Array]:
    """(loss [B, T], valid [B, T]) from per-token ce [B, T]: mean response-token CE of each (row, segment)
    slot, and slot validity (the slot has at least one response token).

    loss_mask [B, T] is 1 where tokens[t] is a response token predicted from position t-1.
    """
    mask = loss_mask.astype(jnp.float32) * (segment_ids > 0)
    num = per_sequence_sums(ce * mask, segment_ids)
    den = per_sequence_sums(mask, segment_ids)
    valid = den > 0
    return jnp.where(valid, num / jnp.maximum(den, 1.0), 0.0), valid


def suffix_losses_from_ce(ce: Array, loss_mask: Array, segment_ids: Array) -> Array:
    """The causal credit of every routed position (docs/method.md §3.1): suffix [B, T] float32,

        suffix[b, p] = sum over q >= p in the same run of segment ids as p of u[b, q],
        u[b, q] = ce[b, q + 1] * mask[b, q + 1] / n(b, seg[b, q + 1])   (u[b, T - 1] = 0),

    u[b, q] the share, in its sequence's loss (``sequence_losses_from_ce``: the mean over the n response
    tokens of its (row, segment) slot), of the token that position q predicts. The routing of position p
    changes the hidden states of positions p, p + 1, ... of its own segment only (causal attention within a
    packed segment), so suffix[b, p] is every part of the loss it can change; at the first position of a
    segment it is that sequence's whole loss. ce / loss_mask / segment_ids [B, T] as for
    ``sequence_losses_from_ce``. Two cumulative sums over T (no [T, T] array): the reverse cumulative sum of u,
    minus its value just past the end of p's segment.
    """
    seg = segment_ids.astype(jnp.int32)
    mask = loss_mask.astype(jnp.float32) * (seg > 0)
    counts = per_sequence_sums(mask, seg)  # [B, T]: slot s - 1 holds segment s
    n_tok = jnp.take_along_axis(counts, jnp.maximum(seg - 1, 0), axis=1)  # each token's slot count
    v = jnp.where(mask > 0, ce.astype(jnp.float32) * mask / jnp.maximum(n_tok, 1.0), 0.0)
    u = jnp.pad(v[:, 1:], ((0, 0), (0, 1)))  # u[q] = v[q + 1]: the loss position q's hidden state predicts
    t = u.shape[1]
    rev = jnp.pad(jnp.cumsum(u[:, ::-1], axis=1)[:, ::-1], ((0, 0), (0, 1)))  # [B, T + 1]: sum_{q >= p} u[q]
    idx = jnp.arange(t, dtype=jnp.int32)
    last = jnp.concatenate([seg[:, 1:] != seg[:, :-1], jnp.ones_like(seg[:, :1], bool)], axis=1)
    end = jax.lax.cummin(jnp.where(last, idx, t), axis=1, reverse=True)  # last position of p's run
    return rev[:, :t] - jnp.take_along_axis(rev, end + 1, axis=1)


def sequence_losses(logits: Array, tokens: Array, loss_mask: Array,
                    segment_ids: Array) -> tuple[Array, Array]:
    """``sequence_losses_from_ce`` of ``token_cross_entropy(logits [B, T, V], tokens)``."""
    return sequence_losses_from_ce(token_cross_entropy(logits, tokens), loss_mask, segment_ids)
