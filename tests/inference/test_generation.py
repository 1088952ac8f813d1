"""Batched KV-cache generation on a tiny random decoder: batching, caching, chunked prefill, stopping and
sampling."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.inference import generation
from remix_jax.inference.generation import (
    GenerationConfig,
    bucket_size,
    generate,
    left_pad,
    sample_token,
    truncate_at_stop_strings,
)
from remix_jax.inference.prefill import chunked_prefill
from remix_jax.models.attention import init_cache
from remix_jax.models.llama import Decoder, Projection, init_params, positions_from_segments
from remix_jax.models.model_config import named_config

PROMPTS = [[5, 17, 33], [9, 2, 250, 7, 7, 1, 80], list(range(40, 52)), [3] * 16, [101]]
MAX_NEW = 10


@pytest.fixture(scope="module")
def tiny():
    # Untied, random weights scaled up so greedy continuations are not all one token.
    cfg = named_config("tiny", max_position_embeddings=256)
    model = Decoder(cfg)
    variables = init_params(model, jax.random.key(0))
    variables = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, variables)
    return model, variables


@pytest.fixture(scope="module")
def batched(tiny):
    model, variables = tiny
    return generate(model, variables, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW))


def test_buckets_and_left_padding():
    assert [bucket_size(n, 16) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
    assert [bucket_size(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]
    toks, seg = left_pad([[1, 2], [3]], length=4, batch=4, pad_id=9)
    np.testing.assert_array_equal(toks, [[9, 9, 1, 2], [9, 9, 9, 3], [9] * 4, [9] * 4])
    np.testing.assert_array_equal(seg, [[0, 0, 1, 1], [0, 0, 0, 1], [0] * 4, [0] * 4])


def test_batched_equals_one_by_one(tiny, batched):
    model, variables = tiny
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    assert all(len(t) == MAX_NEW for t in batched.tokens)
    assert len({tuple(t) for t in batched.tokens}) == len(PROMPTS)  # non-degenerate continuations
    for i, p in enumerate(PROMPTS):
        single = generate(model, variables, [p], cfg)
        assert single.tokens[0] == batched.tokens[i]
        np.testing.assert_allclose(single.logprobs[0], batched.logprobs[i], atol=1e-4)
    # Chunks of max_batch prompts (batch buckets 4 and 1) give the same results, in order.
    chunked = generate(model, variables, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW, max_batch=4))
    assert chunked.tokens == batched.tokens


def test_kv_cache_decoding_equals_full_recompute(tiny, batched):
    """Each generated token's log-prob equals a full forward pass (no cache) over prompt + generated."""
    model, variables = tiny
    seqs = [p + t for p, t in zip(PROMPTS, batched.tokens, strict=True)]
    # One right-padded batch: padding after a sequence does not change its (causal) logits.
    toks, seg = np.zeros((len(seqs), 32), np.int32), np.zeros((len(seqs), 32), np.int32)
    for i, s in enumerate(seqs):
        toks[i, :len(s)], seg[i, :len(s)] = s, 1
    logits, _ = jax.jit(model.apply)(variables, jnp.asarray(toks), jnp.asarray(seg))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for i, (p, gen, lps) in enumerate(zip(PROMPTS, batched.tokens, batched.logprobs, strict=True)):
        steps = logp[i, len(p) - 1:len(p) - 1 + len(gen)]
        np.testing.assert_allclose(steps[np.arange(len(gen)), gen], lps, atol=1e-4)
        np.testing.assert_array_equal(steps.argmax(-1), gen)


def test_stop_tokens_cut_rows_and_exit_early(tiny, batched):
    model, variables = tiny
    # Stop on each row's 4th greedy token: rows end there (stop token excluded), the rest is unchanged.
    stops = tuple({t[3] for t in batched.tokens})
    out = generate(model, variables, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW, stop_token_ids=stops))
    for full, got, stopped in zip(batched.tokens, out.tokens, out.stopped, strict=True):
        cut = next(j for j, x in enumerate(full) if x in stops)
        assert got == full[:cut] and stopped and cut <= 3
    # All rows stopped: the loop exits before max_new_tokens steps.
    toks, seg = left_pad(PROMPTS, 16, 8, 0)
    *_, steps = generation._generate_batch(
        model, variables, jnp.asarray(toks), jnp.asarray(seg), jax.random.key(0), jnp.float32(0),
        jnp.float32(1), jnp.asarray(stops), max_new_tokens=MAX_NEW, greedy=True)
    assert int(steps) == 4


def test_compiles_once_per_bucket(tiny, batched):
    model, variables = tiny
    if not hasattr(generation._generate_batch, "_cache_size"):
        pytest.skip("jax.jit has no _cache_size in this jax version")
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    generate(model, variables, [[1]], cfg)  # the 1 x 16 bucket (the 8 x 16 one: the batched fixture)
    before = generation._generate_batch._cache_size()
    # Different prompt lengths and counts that fall in the buckets already compiled (8 x 16, 1 x 16).
    generate(model, variables, [[1, 2, 3] * 5, [4] * 16, [5], [6, 7], [8] * 9], cfg)
    generate(model, variables, [[8, 9]], cfg)
    assert generation._generate_batch._cache_size() == before


def test_sampling(tiny, batched):
    model, variables = tiny
    # A vanishing nucleus keeps only the top token: sampling reduces to greedy.
    nucleus = generate(model, variables, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW, temperature=1.0,
                                                                   top_p=1e-6), jax.random.key(3))
    assert nucleus.tokens == batched.tokens
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, temperature=1.5)
    a = generate(model, variables, PROMPTS, cfg, jax.random.key(1))
    b = generate(model, variables, PROMPTS, cfg, jax.random.key(1))
    c = generate(model, variables, PROMPTS, cfg, jax.random.key(2))
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_sample_token_respects_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    sample = jax.jit(sample_token, static_argnames="greedy")
    top2 = np.asarray(sample(logits, keys, jnp.float32(1.0), jnp.float32(0.7), greedy=False))
    assert set(np.unique(top2)) == {0, 1}  # 0.5 < 0.7 <= 0.8: exactly the two most likely
    assert abs(np.mean(top2 == 0) - 0.5 / 0.8) < 0.03
    full = np.asarray(sample(logits, keys, jnp.float32(1.0), jnp.float32(1.0), greedy=False))
    assert set(np.unique(full)) == {0, 1, 2, 3}
    greedy = sample(logits[:2], keys, jnp.float32(0), jnp.float32(1), greedy=True)
    np.testing.assert_array_equal(greedy, [0, 0])


class _NoisyAdapterProjection(Projection):
    """A projection with an "adapter" collection and a router-style draw from the "routing" rng."""

    @nn.compact
    def __call__(self, x, deterministic=True, token_mask=None):
        y = self.base_forward(x)
        scale = self.variable("adapter", "scale", lambda: jnp.zeros((), jnp.float32))
        noise = jax.random.uniform(self.make_rng("routing"), y.shape[:-1] + (1,), dtype=y.dtype)
        return y + scale.value.astype(y.dtype) * noise


def test_adapter_collections_and_routing_rng(tiny, batched):
    model, base_vars = tiny
    adapted = Decoder(model.config, proj_cls=_NoisyAdapterProjection)
    variables = init_params(adapted, jax.random.key(0))
    assert variables["adapter"]["layers"]["attn"]["q_proj"]["scale"].shape == (model.config.num_layers,)
    variables = {**variables, "params": base_vars["params"]}
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    # Zero adapter: identical to the base model; a non-zero one changes the continuations.
    assert generate(adapted, variables, PROMPTS, cfg).tokens == batched.tokens
    noisy = {**variables, "adapter": jax.tree.map(lambda s: s + 5.0, variables["adapter"])}
    assert generate(adapted, noisy, PROMPTS, cfg).tokens != batched.tokens


def test_truncate_at_stop_strings_and_config_errors():
    assert truncate_at_stop_strings("a\n\nQuestion: b", ["Question:", "\n\n"]) == "a"
    assert truncate_at_stop_strings("abc", ["x", ""]) == "abc"
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(None, {}, [[1], []], GenerationConfig())
    for bad in (24, -16, 3):
        with pytest.raises(ValueError, match=f"prefill_chunk={bad} must be 0 .* or a power of two"):
            GenerationConfig(prefill_chunk=bad)
    assert GenerationConfig(prefill_chunk=0).prefill_chunk == 0 and GenerationConfig(prefill_chunk=1).prefill_chunk == 1


# Prompt bucket 128: with chunks of 16 the short rows' first chunks (and the batch-padding rows, 6 prompts in a
# batch of 8) are all padding.
LONG_PROMPTS = [list(range(1, 128)), [7], [3, 9, 27], list(range(200, 100, -1)), [5] * 17, list(range(60, 93))]


@functools.cache
def remix_tiny():
    """The tiny decoder with a ReMix adapter (nonzero B, a router that spreads its choices), float32."""
    cfg = named_config("tiny", max_position_embeddings=256)
    base = init_params(Decoder(cfg), jax.random.key(0))
    base = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, base)
    model = build_model(cfg, AdapterConfig(method="remix", num_experts=4, top_k=2, rank=4, router_init_std=0.5))
    extra = init_adapter_variables(model, jax.random.key(1))
    extra["adapter"] = jax.tree.map(lambda x: x + 0.05, extra["adapter"])
    return model, {**base, **extra}


@pytest.mark.parametrize("kind", ["base", "remix"])
def test_chunked_prefill_equals_whole_prompt(tiny, kind):
    model, variables = tiny if kind == "base" else remix_tiny()
    runs = {c: generate(model, variables, LONG_PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW, prefill_chunk=c))
            for c in (0, 16, 64, 256)}
    assert len({tuple(t) for t in runs[0].tokens}) == len(LONG_PROMPTS)  # non-degenerate continuations
    for c in (16, 64, 256):
        assert runs[c].tokens == runs[0].tokens
        for got, want in zip(runs[c].logprobs, runs[0].logprobs, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


def test_chunked_prefill_fills_the_cache_as_one_pass(tiny):
    """Successive writes of 16 columns leave the cache of one 128-column write: index, positions and segment ids
    equal, keys and values of the prompt tokens equal up to rounding, everything finite (left padding fills whole
    chunks, whose queries match no key)."""
    model, variables = tiny
    toks, seg = left_pad(LONG_PROMPTS, 128, 8, 0)
    toks, seg = jnp.asarray(toks), jnp.asarray(seg)

    def step(tok, sg, pos, cache, key):
        (hidden, _), cache = model.apply(variables, tok, segment_ids=sg, positions=pos, cache=cache,
                                         return_hidden=True, rngs={"routing": key})
        return hidden[:, -1], jnp.sum(sg), cache

    @functools.partial(jax.jit, static_argnames="chunk")
    def fill(chunk):
        return chunked_prefill(step, toks, seg, positions_from_segments(seg), init_cache(model.config, 8, 136),
                               jax.random.key(0), chunk)

    (h0, n0, c0), (h16, n16, c16) = fill(0), fill(16)
    assert int(c0["index"]) == int(c16["index"]) == 128 and int(n0) == int(n16) == int(seg.sum())
    np.testing.assert_array_equal(c16["pos"], c0["pos"])
    np.testing.assert_array_equal(c16["seg"], c0["seg"])
    assert np.isfinite(np.asarray(c16["kv"])).all() and np.isfinite(np.asarray(h16)).all()
    valid = np.asarray(seg, bool)  # [B, T]: slots of prompt tokens (padding slots hold other, unread values)
    kv0, kv16 = (np.moveaxis(np.asarray(c["kv"])[..., :128, :], 4, 3)[:, :, valid] for c in (c0, c16))
    np.testing.assert_allclose(kv16, kv0, rtol=0, atol=1e-5 * np.abs(kv0).max())  # float32 rounding of values ~40
    np.testing.assert_allclose(np.asarray(h16)[:6], np.asarray(h0)[:6], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prefill chunk 48 does not divide the prompt length 128"):
        fill(48)


def test_chunked_prefill_needs_less_memory(tiny):
    """The compiled generation step's temporary buffers shrink with chunks of 16 (scores [B, KV, G, 16, S] rather
    than [B, KV, G, 128, S]); compile-time figures, nothing is run."""
    model, variables = tiny
    toks, seg = (jnp.asarray(a) for a in left_pad(LONG_PROMPTS, 128, 8, 0))

    def temp_bytes(chunk):
        lowered = generation._generate_batch.lower(
            model, variables, toks, seg, jax.random.key(0), jnp.float32(0), jnp.float32(1), jnp.asarray([-1]),
            max_new_tokens=64, greedy=True, prefill_chunk=chunk)
        stats = lowered.compile().memory_analysis()
        return None if stats is None else stats.temp_size_in_bytes

    whole, chunked = temp_bytes(0), temp_bytes(16)
    if not whole:
        pytest.skip("this jax's CPU backend reports no memory analysis")
    scores = 8 * model.config.num_heads * 128 * (128 + 64) * 4  # one float32 score tensor of the whole prompt
    assert chunked < whole - scores // 2, (whole, chunked)
