"""Chunked prefill: a prompt [B, T] fed through the KV cache C tokens at a time, so that the cached attention's float32
scores are [B, KV, G, C, S] rather than [B, KV, G, T, S] (S = the cache's slots).

Each chunk writes its keys, values, positions and segment ids at the cache's running ``index`` (``Decoder`` advances
it by the chunk's length) and attends over every slot written so far; the masks are those of the whole prompt at
once (same segment, key position <= query position), so the hidden states are the same up to float rounding. The
chunks run in one ``lax.fori_loop``: one copy of the model in the compiled program whatever their number.

Left padding may fill whole chunks: a padding query (segment 0) matches no key, its scores are all
``finfo(float32).min`` and its softmax is uniform (finite, never NaN), and no real token attends to a padding key.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_PREFILL_CHUNK = 256  # tokens a prefill step: scores of 256 query rows at a time


def check_prefill_chunk(chunk: int, key: str = "prefill_chunk") -> None:
    """Raise ValueError naming ``key`` unless ``chunk`` is 0 (the whole prompt at once) or a power of two."""
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 0 or chunk & (chunk - 1):
        raise ValueError(f"{key}={chunk!r} must be 0 (the whole prompt at once) or a power of two (e.g. 256)")


def chunk_length(length: int, chunk: int) -> int:
    """Tokens a prefill step for a prompt of ``length`` columns: ``length`` itself when ``chunk`` is 0 or at least
    ``length``, else ``chunk``, which must then divide it (power-of-two buckets above a power-of-two chunk do)."""
    if chunk <= 0 or chunk >= length:
        return length
    if length % chunk:
        raise ValueError(f"prefill chunk {chunk} does not divide the prompt length {length}")
    return chunk


# step(tokens, segment_ids, positions, cache, key) of one chunk [B, C] -> (last, total, cache): ``last`` is kept from
# the final chunk (e.g. the logits of the last column), ``total`` is summed over the chunks (e.g. token-weighted
# statistics; () for none).
Step = Callable[[Array, Array, Array, dict, Array], tuple[Any, Any, dict]]


def chunked_prefill(step: Step, tokens: Array, segment_ids: Array, positions: Array, cache: dict, key: Array,
                    chunk: int) -> tuple[Any, Any, dict]:
    """Run ``step`` over the prompt tokens, segment_ids, positions [B, T] in chunks of ``chunk_length(T, chunk)``
    columns, threading the cache. Returns (``last`` of the final chunk, ``total`` summed over the chunks, the
    filled cache). A single chunk is one call of ``step`` with ``key`` itself (the unchunked prefill, unchanged)."""
    t = tokens.shape[1]
    c = chunk_length(t, chunk)
    if c == t:
        return step(tokens, segment_ids, positions, cache, key)

    def run(i, cache):
        piece = [jax.lax.dynamic_slice_in_dim(x, i * c, c, axis=1) for x in (tokens, segment_ids, positions)]
        # A routing key per chunk (fold_in of its index): a router that samples at inference never reuses one
        # chunk's draws for another's tokens; deterministic top-k routing ignores it.
        return step(*piece, cache, jax.random.fold_in(key, i))

    last, total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(run, 0, cache)[:2])

    def body(i, carry):
        _, total, cache = carry
        last, part, cache = run(i, cache)
        return last, jax.tree.map(jnp.add, total, part), cache

    return jax.lax.fori_loop(0, t // c, body, (last, total, cache))
