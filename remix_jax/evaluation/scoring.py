"""Log-likelihood scoring of (context, continuation) token rows: the jitted forward passes and their batching.

Three ways to score rows, with equal results up to float rounding:

- ``full_batches`` + ``score_batch``: every row as one sequence (context + continuation), left-padded, so the
  continuation of every row ends in the last column.
- ``shared_batches`` + ``score_shared_batch``: the options of one multiple-choice question share its context, so
  the context runs once. One prefill of the contexts [Q, Lc] (left-padded; in chunks of ``prefill_chunk`` columns:
  ``inference.prefill``) fills a KV cache of Lc + Lx slots; each question's cache rows are copied to its options (a
  gather along the batch axis) and the continuations [R, Lx] (right-padded, positions continuing from their
  context's length) run against it. The log-probability of an option's first token comes from the prefill's last
  column. Adapters and routers act per token, so they see the same inputs either way; a router that samples at
  inference draws other keys.
- ``packed_batches`` + ``score_packed_batch`` (the default for shared contexts): each question is one tree, its
  context then every option, each option's positions continuing from the context's end and its tokens attending
  to the context and to themselves only (``branch_ids``: ``models.attention.attention_mask``); questions are
  packed into rows of a fixed length (best fit, longest first), one forward pass, no cache, no padding between
  them. Only the hidden states that predict an option token go through the vocabulary projection (the batch's
  target slots as one list: ``flat_targets``).

Shapes are bucketed to powers of two (lengths, and batches below ``batch_size``), so a run compiles a few times.
A batch holds at most ``batch_size`` rows (shared: continuations, each with its own copy of the cache).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.inference.generation import bucket_size
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK, chunked_prefill
from remix_jax.models.attention import init_cache
from remix_jax.models.llama import Decoder, lm_logits, positions_from_segments
from remix_jax.routing.diagnostics import collect_routing_stats

ROUTING_KEYS = ("ess_applied", "ess_softmax", "entropy", "load", "distinct_subsets")
Rows = Sequence[tuple[list[int], list[int]]]
CTX_MIN, CONT_MIN = 16, 8  # shortest padded context / continuation of a shared batch (powers of two above)
TARGETS_MIN = 8  # fewest target slots of a packed row (a power of two)
DEFAULT_PACK_LEN = 256  # tokens of a packed row (eval.pack_len)
PACKED_TOKENS_PER_ROW = 64  # a packed batch holds batch_size x this many tokens (rows of pack_len tokens)


def _apply(model: Decoder, variables: dict, tokens, key, with_stats: bool, **kw):
    """model.apply -> ((hidden, head), cache) and the routing statistics ({} without ``with_stats``)."""
    kw = dict(deterministic=True, return_hidden=True, rngs={"routing": key}, **kw)
    if with_stats:
        out, mutated = model.apply(variables, tokens, mutable=["routing_stats"], **kw)
        return out, {k: v for k, v in collect_routing_stats(mutated).items() if k in ROUTING_KEYS}
    return model.apply(variables, tokens, **kw), {}


@functools.partial(jax.jit, static_argnames=("model", "num_targets", "with_stats"))
def score_batch(model: Decoder, variables: dict, tokens: jax.Array, segment_ids: jax.Array, target_mask: jax.Array,
                rng: jax.Array, num_targets: int, with_stats: bool):
    """Summed log-probs of the target tokens of left-padded rows, and routing statistics.

    tokens, segment_ids, target_mask [B, T] (targets sit in the last ``num_targets`` columns); only the
    hidden states predicting those columns go through the vocabulary projection. Returns (loglik [B],
    stats dict of the "routing_stats" collection, {} without routing).
    """
    ((hidden, head), _), stats = _apply(model, variables, tokens, rng, with_stats, segment_ids=segment_ids)
    t = tokens.shape[1]
    logits = lm_logits(hidden[:, t - num_targets - 1 : t - 1], head)  # predicts tokens[:, t-num_targets:]
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, t - num_targets :, None], axis=-1)[..., 0]
    return jnp.sum(picked * target_mask[:, t - num_targets :], axis=-1), stats


@functools.partial(jax.jit, static_argnames=("model", "with_stats", "prefill_chunk"))
def score_shared_batch(model: Decoder, variables: dict, ctx_tokens: jax.Array, ctx_seg: jax.Array,
                       cont_tokens: jax.Array, cont_seg: jax.Array, owner: jax.Array, rng: jax.Array,
                       with_stats: bool, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
    """Summed log-probs of continuations scored against their question's cached context.

    ctx_tokens, ctx_seg [Q, Lc]: contexts, left-padded (segment 0 on pads). cont_tokens, cont_seg [R, Lx]:
    continuations, right-padded (segment 0 on pads). owner [R]: the context row of each continuation.
    prefill_chunk: context columns a prefill step (``inference.prefill``; 0 = all at once).
    Returns (loglik [R], routing statistics of the prefill, of the continuation pass; {} without routing). The
    prefill's statistics are the means over its chunks weighted by their valid tokens: the whole prefill's, except
    distinct_subsets (the chunks' counts, averaged as the evaluator averages them over batches).
    """
    q, lc = ctx_tokens.shape
    lx = cont_tokens.shape[1]
    k_ctx, k_cont = jax.random.split(rng)

    def prefill_step(tok, seg, pos, cache, key):
        ((hidden, head), cache), stats = _apply(model, variables, tok, key, with_stats, segment_ids=seg,
                                                positions=pos, cache=cache)
        # Statistics are means over a chunk's valid tokens: summed weighted by them, divided by their total below.
        n = jnp.sum(seg != 0).astype(jnp.float32)
        return lm_logits(hidden[:, -1], head), ({k: v * n for k, v in stats.items()}, n), cache

    cache = init_cache(model.config, q, lc + lx)
    logits, (ctx_stats, n_ctx), cache = chunked_prefill(prefill_step, ctx_tokens, ctx_seg,
                                                        positions_from_segments(ctx_seg), cache, k_ctx, prefill_chunk)
    ctx_stats = {k: v / jnp.maximum(n_ctx, 1.0) for k, v in ctx_stats.items()}
    first = jax.nn.log_softmax(logits, axis=-1)[owner]  # [R, V]: predicts token 0
    cache = {"kv": cache["kv"][:, :, owner], "pos": cache["pos"][owner], "seg": cache["seg"][owner],
             "index": cache["index"]}
    ctx_len = jnp.sum(ctx_seg != 0, axis=-1).astype(jnp.int32)[owner]
    positions = ctx_len[:, None] + jnp.arange(lx, dtype=jnp.int32)[None, :]
    ((hidden, head), _), cont_stats = _apply(model, variables, cont_tokens, k_cont, with_stats,
                                             segment_ids=cont_seg, positions=positions, cache=cache)
    logp = jax.nn.log_softmax(lm_logits(hidden[:, :-1], head), axis=-1)  # [R, Lx-1, V]: predicts tokens 1..
    rest = jnp.take_along_axis(logp, cont_tokens[:, 1:, None], axis=-1)[..., 0]
    head_lp = jnp.take_along_axis(first, cont_tokens[:, :1], axis=-1)[:, 0]
    valid = (cont_seg != 0).astype(jnp.float32)
    return head_lp * valid[:, 0] + jnp.sum(rest * valid[:, 1:], axis=-1), ctx_stats, cont_stats


@functools.partial(jax.jit, static_argnames=("model", "with_stats"))
def score_packed_batch(model: Decoder, variables: dict, tokens: jax.Array, segment_ids: jax.Array,
                       positions: jax.Array, branch_ids: jax.Array, pred: jax.Array, targets: jax.Array,
                       rng: jax.Array, with_stats: bool):
    """Log-probs of the target tokens of packed rows (``packed_batches``), and routing statistics.

    tokens, segment_ids, positions, branch_ids [B, T]; pred, targets [N] (``flat_targets``): the position in the
    flattened [B * T] hidden states that predicts each target token, and the token. Returns (log-probs [N],
    statistics; {} without routing).
    """
    ((hidden, head), _), stats = _apply(model, variables, tokens, rng, with_stats, segment_ids=segment_ids,
                                        positions=positions, branch_ids=branch_ids)
    h = jnp.take(hidden.reshape(-1, hidden.shape[-1]), pred, axis=0)  # [N, d]
    logp = jax.nn.log_softmax(lm_logits(h, head), axis=-1)
    return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0], stats


def _batch_rows(n: int, batch_size: int) -> int:
    """Rows of a batch of ``n``: a power of two below ``batch_size``, at most ``batch_size``."""
    return min(bucket_size(n), batch_size)


@dataclasses.dataclass
class FullBatch:
    rows: list[int]  # indices into the scored rows, one per batch row
    tokens: np.ndarray  # [B, T] left-padded context + continuation
    segment_ids: np.ndarray  # [B, T]
    target_mask: np.ndarray  # [B, T] 1 on continuation tokens
    num_targets: int  # continuation columns, bucketed


def full_batches(rows: Rows, indices: Sequence[int], batch_size: int, pad: int) -> Iterator[FullBatch]:
    """Batches of ``batch_size`` of the rows ``indices`` (shortest first), each a left-padded power-of-two length."""
    order = sorted(indices, key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [rows[i][0] + rows[i][1] for i in idx]
        length = bucket_size(max(len(s) for s in seqs), 16)
        n_tgt = min(bucket_size(max(len(rows[i][1]) for i in idx), 8), length - 1)
        b = _batch_rows(len(idx), batch_size)
        tokens = np.full((b, length), pad, np.int32)
        seg = np.zeros((b, length), np.int32)
        tgt = np.zeros((b, length), np.float32)
        for j, (i, s) in enumerate(zip(idx, seqs, strict=True)):
            tokens[j, length - len(s) :], seg[j, length - len(s) :] = s, 1
            if rows[i][1]:
                tgt[j, length - len(rows[i][1]) :] = 1.0
        yield FullBatch(idx, tokens, seg, tgt, n_tgt)


def context_groups(rows: Rows, batch_size: int) -> tuple[list[list[int]], list[int]]:
    """(groups, singles): runs of at least two consecutive rows with equal context ids, cut into chunks of at most
    ``batch_size`` rows; and the rows alone in their run (nothing to share)."""
    groups, singles, i = [], [], 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j][0] == rows[i][0]:
            j += 1
        if j - i == 1:
            singles.append(i)
        else:
            groups += [list(range(s, min(s + batch_size, j))) for s in range(i, j, batch_size)]
        i = j
    return groups, singles


@dataclasses.dataclass
class SharedBatch:
    rows: list[int]  # indices into the scored rows, one per continuation row
    ctx_tokens: np.ndarray  # [Q, Lc] left-padded contexts
    ctx_seg: np.ndarray  # [Q, Lc]
    cont_tokens: np.ndarray  # [R, Lx] right-padded continuations
    cont_seg: np.ndarray  # [R, Lx]
    owner: np.ndarray  # [R] context row of each continuation (0 for padding rows)
    num_questions: int  # context rows in use

    def num_tokens(self) -> tuple[int, int]:
        """(context tokens, continuation tokens): each context counted once."""
        return int(self.ctx_seg.sum()), int(self.cont_seg.sum())


def shared_batches(rows: Rows, groups: Sequence[list[int]], batch_size: int, pad: int) -> Iterator[SharedBatch]:
    """Batches of whole groups with at most ``batch_size`` continuation rows; contexts padded to a power-of-two
    length >= CTX_MIN, continuations to one >= CONT_MIN.

    Groups are ordered by their context's padded length, then by their longest continuation: every row of a batch
    is padded to its longest continuation, so one long option among short ones would double the columns of all
    (multiple-choice options are mostly a few tokens and a few are long). Each row is scored on its own, so the
    order changes no log-likelihood beyond float rounding (a router that samples at inference draws other keys).
    """
    def key(g: list[int]) -> tuple[int, int, int]:
        ctx_len = len(rows[g[0]][0])
        return bucket_size(ctx_len, CTX_MIN), max(len(rows[i][1]) for i in g), ctx_len

    order = sorted(groups, key=key)
    batch: list[list[int]] = []
    for g in order:
        if batch and sum(map(len, batch)) + len(g) > batch_size:
            yield _shared_arrays(rows, batch, batch_size, pad)
            batch = []
        batch.append(g)
    if batch:
        yield _shared_arrays(rows, batch, batch_size, pad)


def _shared_arrays(rows: Rows, batch: list[list[int]], batch_size: int, pad: int) -> SharedBatch:
    idx = [i for g in batch for i in g]
    lc = bucket_size(max(len(rows[g[0]][0]) for g in batch), CTX_MIN)
    lx = bucket_size(max(len(rows[i][1]) for i in idx), CONT_MIN)
    q, r = _batch_rows(len(batch), batch_size), _batch_rows(len(idx), batch_size)
    ctx_tokens, ctx_seg = np.full((q, lc), pad, np.int32), np.zeros((q, lc), np.int32)
    cont_tokens, cont_seg = np.full((r, lx), pad, np.int32), np.zeros((r, lx), np.int32)
    owner = np.zeros((r,), np.int32)
    j = 0
    for k, g in enumerate(batch):
        ctx = rows[g[0]][0]
        ctx_tokens[k, lc - len(ctx) :], ctx_seg[k, lc - len(ctx) :] = ctx, 1
        for i in g:
            cont = rows[i][1]
            cont_tokens[j, : len(cont)], cont_seg[j, : len(cont)] = cont, 1
            owner[j] = k
            j += 1
    return SharedBatch(idx, ctx_tokens, ctx_seg, cont_tokens, cont_seg, owner, len(batch))


@dataclasses.dataclass
class PackedBatch:
    rows: list[int]  # the scored rows it holds
    tokens: np.ndarray  # [B, T]
    segment_ids: np.ndarray  # [B, T] question number within its row, from 1; 0 on padding
    positions: np.ndarray  # [B, T] 0.. along the context, each option continuing from the context's end
    branch_ids: np.ndarray  # [B, T] 0 on contexts, j on the j-th option of its question
    pred: np.ndarray  # [B, N] column whose hidden state predicts each target token
    targets: np.ndarray  # [B, N] target tokens
    owner: np.ndarray  # [B, N] scored row of each target token, -1 on padding

    def num_tokens(self) -> int:
        return int((self.segment_ids != 0).sum())


def packed_batches(rows: Rows, groups: Sequence[list[int]], batch_size: int, pad: int,
                   pack_len: int, full_rows: bool = False) -> Iterator[PackedBatch]:
    """Batches of rows of ``T = max(pack_len, the longest question's tokens as a power of two)`` tokens, each
    holding whole questions (``groups``: rows sharing one context; a row alone is a group of one), laid out as
    context, option 1, option 2, ... Questions go longest first into the fullest row they fit (best fit
    decreasing). A batch holds max(1, batch_size * PACKED_TOKENS_PER_ROW // T) rows; its target slots are the
    most any of its rows needs, as a power of two >= TARGETS_MIN. ``full_rows``: the last batch too gets the full
    number of rows (padding rows: segment 0), so that every batch has one shape."""
    if not groups:
        return
    size = [len(rows[g[0]][0]) + sum(len(rows[i][1]) for i in g) for g in groups]
    t = bucket_size(max(max(size), pack_len), CTX_MIN)
    free: list[list[int]] = [[] for _ in range(t + 1)]  # free[c]: packed rows with c tokens left
    packed: list[list[int]] = []
    for u in sorted(range(len(groups)), key=lambda u: -size[u]):
        c = next((c for c in range(size[u], t + 1) if free[c]), None)
        if c is None:
            r, c = len(packed), t
            packed.append([])
        else:
            r = free[c].pop()
        packed[r].append(u)
        free[c - size[u]].append(r)
    per_batch = max(1, batch_size * PACKED_TOKENS_PER_ROW // t)
    for start in range(0, len(packed), per_batch):
        b = per_batch if full_rows else _batch_rows(len(packed[start:start + per_batch]), per_batch)
        yield _packed_arrays(rows, [[groups[u] for u in r] for r in packed[start:start + per_batch]], t, b, pad)


def no_targets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``flat_targets``'s (pred, targets, owner) for a pass that needs only the routing statistics: TARGETS_MIN
    padding slots, the same for every batch (the forward pass, and so the statistics, do not depend on them)."""
    return (np.zeros(TARGETS_MIN, np.int32), np.zeros(TARGETS_MIN, np.int32), np.full(TARGETS_MIN, -1, np.int64))


def flat_targets(batch: PackedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target slots of all rows of a packed batch as one list, for ``score_packed_batch``: (pred, targets,
    owner) [N], pred the position in the flattened [B * T] hidden states (row-major: row by row, each row's slots in
    order), N the slots in use as a power of two >= TARGETS_MIN (padding: position 0, token 0, owner -1). The
    vocabulary projection then runs on about as many rows as there are target tokens, where the per-row slots
    [B, N] give every row as many as the fullest one needs (twice the targets on the quickstart's batches)."""
    valid = batch.owner >= 0
    rows = np.nonzero(valid)[0]
    n = bucket_size(rows.size, TARGETS_MIN)
    pred, targets, owner = np.zeros(n, np.int32), np.zeros(n, np.int32), np.full(n, -1, np.int64)
    pred[:rows.size] = rows * batch.tokens.shape[1] + batch.pred[valid]
    targets[:rows.size], owner[:rows.size] = batch.targets[valid], batch.owner[valid]
    return pred, targets, owner


def _packed_arrays(rows: Rows, batch: list[list[list[int]]], t: int, b: int, pad: int) -> PackedBatch:
    n = bucket_size(max(sum(len(rows[i][1]) for g in r for i in g) for r in batch), TARGETS_MIN)
    tokens, seg = np.full((b, t), pad, np.int32), np.zeros((b, t), np.int32)
    pos, branch = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
    pred, targets, owner = np.zeros((b, n), np.int32), np.zeros((b, n), np.int32), np.full((b, n), -1, np.int64)
    for k, packed_row in enumerate(batch):
        col, slot = 0, 0
        for q, g in enumerate(packed_row, start=1):
            ctx = rows[g[0]][0]
            lc = len(ctx)
            tokens[k, col:col + lc], seg[k, col:col + lc], pos[k, col:col + lc] = ctx, q, np.arange(lc)
            last = col + lc - 1  # predicts every option's first token
            col += lc
            for j, i in enumerate(g, start=1):
                cont = rows[i][1]
                m = len(cont)
                if not m:
                    continue
                tokens[k, col:col + m], seg[k, col:col + m] = cont, q
                pos[k, col:col + m], branch[k, col:col + m] = lc + np.arange(m), j
                pred[k, slot:slot + m] = [last] + list(range(col, col + m - 1))
                targets[k, slot:slot + m], owner[k, slot:slot + m] = cont, i
                col += m
                slot += m
    return PackedBatch([i for r in batch for g in r for i in g], tokens, seg, pos, branch, pred, targets, owner)
