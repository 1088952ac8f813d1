"""Batched autoregressive generation with a KV cache, jitted with fixed shapes.

Prompts are left-padded into buckets (power-of-two lengths; the batch padded to a power of two, up
to ``max_batch``), so a run over many prompts compiles a handful of times. One jitted function does
the prefill (in chunks of ``prefill_chunk`` prompt tokens: ``inference.prefill``) and the whole decode loop
(``lax.while_loop``, which exits early once every row has produced a stop token). Compiled functions are
cached by (model, shapes, decoding mode) and reused across calls.

Works for any ``Decoder`` variables dict (the base "params" plus adapter collections such as
"adapter" and "router"): the model is applied with ``deterministic=True`` and ``rngs={"routing":
key}`` (a fresh key per step) so routers that sample at inference can.

Decoding: greedy (``temperature == 0``) or sampling with temperature and nucleus (top-p) filtering.
Stop token ids end a row inside the loop; stop strings are applied afterwards on the decoded text.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.inference import remix_kernels
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK, check_prefill_chunk, chunked_prefill
from remix_jax.inference.variables import (
    adapter_config_of,
    cast_factors_for_inference,
    foldable_norms,
    fuse_projections,
    fuse_remix_inference,
    remix_precomputed_ffn,
)
from remix_jax.models.attention import init_cache
from remix_jax.models.llama import Decoder, lm_logits, positions_from_segments, projection_class_fuses

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    pad_id: int = 0
    max_batch: int = 64  # rows per compiled call; larger prompt lists run in chunks
    min_prompt_bucket: int = 16
    # The inference copy of the layer weights while decoding (inference.variables.fuse_projections): one matmul
    # for q/k/v and one for gate/up per layer, every matrix stored [out, in] (single-token products as one row
    # reduction each: +50% tokens/s at batch 1 on an H200, docs/notes/benchmarks-log.md run H), for a temporary
    # copy of the layer weights during the call. False reads the parameters as they are (no extra memory).
    fuse_projections: bool = True
    # Layers per iteration of the decoder's layer loop while decoding (model.scan_unroll for this call;
    # 0 keeps the model's own). On an H200 for SmolLM2-135M 2 beats 1 by 12% / 8% at batch 16 / 128 and 3 by 3%
    # to 7% at batch 16 (docs/notes/benchmarks-log.md run H), for about a second more compile time per bucket;
    # results are identical.
    scan_unroll: int = 2
    # With fused projections: the blocks' RMSNorm scales folded into the fused kernels (Decoder.fold_norms), one
    # elementwise kernel less per norm and decode step; applied only where no adapter reads a norm's output
    # outside those kernels (inference.variables.foldable_norms). Same products up to bf16 rounding.
    fold_norms: bool = True
    # ReMix's routed FFN halves while decoding small batches (at most remix_kernels.MAX_TOKENS tokens per call) as
    # two Pallas kernels (inference.remix_kernels): "auto" on CUDA GPUs (compute capability >= 8.0), "xla" never,
    # "pallas" always (Pallas's interpreter off GPUs: slow, for tests). Needs fused projections, folded norms and the
    # variables on one device ("auto" keeps XLA's form for variables spread over several devices).
    remix_kernels: str = "auto"
    # Prompt tokens a prefill step (inference.prefill): the prompt runs through the KV cache in chunks of this many
    # columns (a power of two), so the cached attention's float32 scores are [B, KV, G, chunk, T + max_new_tokens]
    # rather than [B, KV, G, T, T + max_new_tokens]; 0 runs the whole prompt at once. Same tokens and log-probs up
    # to float rounding.
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch} must be >= 1")
        if self.scan_unroll < 0:
            raise ValueError(f"scan_unroll={self.scan_unroll} must be >= 0 (0 keeps the model's own)")
        remix_kernels.check_mode(self.remix_kernels)
        check_prefill_chunk(self.prefill_chunk)


@dataclasses.dataclass
class GenerationOutput:
    """Per prompt: new token ids (stop token excluded) and the log-prob of each under the model.

    ``logprobs`` are log softmax of the raw logits (before temperature / top-p), float32.
    ``stopped`` tells whether the row ended with a stop token (else it hit max_new_tokens).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    stopped: list[bool]


def bucket_size(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def left_pad(prompts: Sequence[Sequence[int]], length: int, batch: int,
             pad_id: int) -> tuple[np.ndarray, ...]:
    """tokens, segment_ids [batch, length] int32; prompts right-aligned, extra rows all padding."""
    tokens = np.full((batch, length), pad_id, np.int32)
    seg = np.zeros((batch, length), np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p):] = np.asarray(p, np.int32)
            seg[i, length - len(p):] = 1
    return tokens, seg


def sample_token(logits: Array, key: Array, temperature: Array, top_p: Array, greedy: bool) -> Array:
    """Next token [B] from logits [B, V] (float32): argmax, or temperature + nucleus sampling."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "fuse", "prefill_chunk"))
def _generate_batch(model: Decoder, variables: dict, tokens: Array, segment_ids: Array, rng: Array,
                    temperature: Array, top_p: Array, stop_ids: Array, max_new_tokens: int, greedy: bool,
                    fuse: bool = True, prefill_chunk: int = 0):
    """Prefill (in chunks of ``prefill_chunk`` columns, 0 = all at once: ``inference.prefill``) + decode loop for
    one left-padded bucket.

    tokens, segment_ids [B, T]; stop_ids [S] (-1 entries never match). Returns out [B, N] int32 (pad
    after a row stops), logprobs [B, N] float32, stopped [B] bool, with N = max_new_tokens.
    """
    b, t = tokens.shape
    n = max_new_tokens
    variables = cast_factors_for_inference(variables, model.config.dtype)  # once, not at every decode step
    if fuse:
        fold = model.fold_norms
        variables = fuse_projections(variables, model.config.dtype, fold_norms=fold)
        variables = fuse_remix_inference(variables, adapter_config_of(model), model.config.dtype, fold_norms=fold,
                                         kernels=model.broadcast_stacked)
    cache = init_cache(model.config, b, t + n)
    positions = positions_from_segments(segment_ids)

    def forward(tok, seg, pos, cache, key):
        # Logits of the last column only: the prefill never materialises [B, T, vocab].
        (hidden, head), cache = model.apply(variables, tok, segment_ids=seg, positions=pos, cache=cache,
                                            deterministic=True, return_hidden=True, rngs={"routing": key})
        return lm_logits(hidden[:, -1], head), cache

    def prefill_step(tok, seg, pos, cache, key):
        logits, cache = forward(tok, seg, pos, cache, key)
        return logits, (), cache

    rng, key = jax.random.split(rng)
    logits, _, cache = chunked_prefill(prefill_step, tokens, segment_ids, positions, cache, key, prefill_chunk)
    next_pos = jnp.sum(segment_ids != 0, axis=-1).astype(jnp.int32)  # [B]
    done = jnp.all(segment_ids == 0, axis=-1)  # batch-padding rows are finished from the start
    pad = jnp.zeros((b,), jnp.int32)
    out = jnp.zeros((b, n), jnp.int32)
    logprobs = jnp.zeros((b, n), jnp.float32)
    stopped = jnp.zeros((b,), bool)

    def cond(state):
        step, _, _, _, _, _, done, _, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, cache, logits, pos, out, logprobs, done, stopped, rng = state
        rng, k_sample, k_route = jax.random.split(rng, 3)
        tok = sample_token(logits, k_sample, temperature, top_p, greedy)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
        tok = jnp.where(done, pad, tok)
        is_stop = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1) & ~done
        out = out.at[:, step].set(tok)
        logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, lp))
        stopped = stopped | is_stop
        done = done | is_stop
        logits, cache = forward(tok[:, None], jnp.ones((b, 1), jnp.int32), pos[:, None], cache, k_route)
        return step + 1, cache, logits, pos + 1, out, logprobs, done, stopped, rng

    state = (jnp.zeros((), jnp.int32), cache, logits, next_pos, out, logprobs, done, stopped, rng)
    state = jax.lax.while_loop(cond, body, state)
    step, _, _, _, out, logprobs, done, stopped, _ = state
    # Columns never reached (early exit) hold zeros; callers cut rows at their stop token.
    return out, logprobs, stopped, step


def on_one_device(variables) -> bool:
    """Whether every jax array of ``variables`` lives on a single device (not sharded or replicated over several)."""
    return all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(variables) if isinstance(leaf, jax.Array))


def generate(model: Decoder, variables: dict, prompts: Sequence[Sequence[int]], config: GenerationConfig,
             rng: Array | None = None, progress: Callable[[int], None] | None = None) -> GenerationOutput:
    """Generate continuations of token-id prompts (each a non-empty list of ids).

    Prompts are grouped into chunks of ``config.max_batch`` in the given order, each left-padded to a
    power-of-two length and batch. Returns new tokens per prompt, cut before the first stop token.
    ``progress(n)`` is called after each chunk with its number of prompts (e.g. a progress bar's update).
    """
    if rng is None:
        rng = jax.random.key(0)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
    greedy = config.temperature == 0.0
    if config.scan_unroll and config.scan_unroll != model.config.scan_unroll:
        # No backward pass here: no remat (whose offloading policy also refuses a fully unrolled loop)
        model = model.clone(config=dataclasses.replace(model.config, scan_unroll=config.scan_unroll, remat="none",
                                                       offload_keep_fraction=0.0))
    fold = (config.fold_norms and config.fuse_projections and projection_class_fuses(model.proj_cls)
            and foldable_norms(adapter_config_of(model)))
    if fold != model.fold_norms:
        model = model.clone(fold_norms=fold)
    stacked = fold and remix_precomputed_ffn(adapter_config_of(model)) and remix_kernels.use_kernels(
        config.remix_kernels)
    if stacked and not on_one_device(variables):  # the kernels have no partitioning rule
        if config.remix_kernels == "pallas":
            raise ValueError("remix_kernels='pallas' needs the variables on one device; they are spread over several "
                             "(use 'auto', which then keeps XLA's form, or 'xla')")
        stacked = False
    if stacked != model.broadcast_stacked:
        model = model.clone(broadcast_stacked=stacked)
    stop = np.asarray(config.stop_token_ids or (-1,), np.int32)
    tokens_out: list[list[int]] = []
    lps_out: list[list[float]] = []
    stopped_out: list[bool] = []
    for start in range(0, len(prompts), config.max_batch):
        chunk = prompts[start:start + config.max_batch]
        length = bucket_size(max(len(p) for p in chunk), config.min_prompt_bucket)
        batch = min(bucket_size(len(chunk)), config.max_batch)
        toks, seg = left_pad(chunk, length, batch, config.pad_id)
        rng, key = jax.random.split(rng)
        out, lps, stopped, _ = _generate_batch(
            model, variables, jnp.asarray(toks), jnp.asarray(seg), key,
            jnp.float32(config.temperature), jnp.float32(config.top_p), jnp.asarray(stop),
            max_new_tokens=config.max_new_tokens, greedy=greedy, fuse=config.fuse_projections,
            prefill_chunk=config.prefill_chunk)
        out, lps, stopped = np.asarray(out), np.asarray(lps), np.asarray(stopped)
        stop_set = set(config.stop_token_ids)
        for i in range(len(chunk)):
            row = out[i].tolist()
            cut = next((j for j, x in enumerate(row) if x in stop_set), len(row))
            tokens_out.append(row[:cut])
            lps_out.append(lps[i, :cut].tolist())
            stopped_out.append(bool(stopped[i]))
        if progress is not None:
            progress(len(chunk))
    return GenerationOutput(tokens_out, lps_out, stopped_out)


def truncate_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def generate_text(model: Decoder, variables: dict, tokenizer: Any, prompts: Sequence[str],
                  config: GenerationConfig, stop_strings: Sequence[str] = (), chat: bool = False,
                  rng: Array | None = None, progress: Callable[[int], None] | None = None,
                  add_special_tokens: bool = True) -> list[str]:
    """Generate completions of text prompts; returns decoded new text cut at ``stop_strings``.

    With ``chat`` each prompt becomes one user turn in the tokenizer's chat template. ``add_special_tokens=False``:
    prompts that hold their special tokens already (a rendered chat template). ``progress``: as ``generate``'s.
    """
    from remix_jax.models.tokenizer import encode_prompt

    ids = [encode_prompt(tokenizer, p, chat=chat, add_special_tokens=add_special_tokens) for p in prompts]
    out = generate(model, variables, ids, config, rng, progress=progress)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]
    return [truncate_at_stop_strings(t, stop_strings) for t in texts]
