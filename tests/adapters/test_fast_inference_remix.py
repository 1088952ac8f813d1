"""ReMix's fused inference path (one matmul for router + A factors, sort-free top-k) against the reference path.

The reference is the same model applied with "routing_stats" mutable, which routes through route_site and
moe.mixture_delta exactly as training-time evaluation does.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.inference.generation import GenerationConfig, generate
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config

TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 0, 256)
SEGMENTS = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)

CONFIGS = {
    "ffn": dict(),
    "all": dict(targets="all"),
    "all-projection": dict(targets="all", router_scope="projection"),
    "gate-down": dict(targets=("gate_proj", "down_proj"), top_k=3),
    "down-only": dict(targets=("down_proj",), num_experts=5, top_k=1),
    "up-v": dict(targets=("v_proj", "up_proj"), num_experts=16, top_k=4, omega="rslora"),
}


@functools.cache
def built(dtype: str, name: str):
    """(model, variables) of the tiny decoder with a random remix adapter (nonzero B, spread router)."""
    cfg = named_config("tiny", dtype=dtype, max_position_embeddings=256)
    base = init_params(Decoder(cfg), jax.random.key(0))
    base = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, base)  # non-degenerate greedy tokens
    acfg = AdapterConfig(method="remix", router_init_std=0.5, **CONFIGS[name])
    model = build_model(cfg, acfg)
    extra = init_adapter_variables(model, jax.random.key(3))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(extra["adapter"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    extra["adapter"] = jax.tree_util.tree_unflatten(treedef, [
        0.3 * jax.random.normal(k, v.shape) if "lora_b" in jax.tree_util.keystr(p) else v
        for (p, v), k in zip(leaves, keys, strict=True)])
    return model, {**base, **extra}


def fast_logits(model, variables, tokens, segments):
    return model.apply(variables, tokens, segment_ids=segments, deterministic=True)[0]


def reference_logits(model, variables, tokens, segments):
    (logits, _), _ = model.apply(variables, tokens, segment_ids=segments, deterministic=True,
                                 mutable=["routing_stats"])
    return logits


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_equals_reference_float32(name):
    model, variables = built("float32", name)
    fast = jax.jit(functools.partial(fast_logits, model))(variables, TOKENS, SEGMENTS)
    ref = jax.jit(functools.partial(reference_logits, model))(variables, TOKENS, SEGMENTS)
    base = Decoder(model.config).apply({"params": variables["params"]}, TOKENS, segment_ids=SEGMENTS)[0]
    assert float(jnp.abs(ref - base).max()) > 0.1  # the adapter really acts
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ffn", "all"])
def test_fast_path_equals_reference_bfloat16(name):
    # bf16 compute: the fused matmul runs in the router's float32 on the bf16-rounded A factors, i.e. the same
    # products as the reference's bf16 matmul (bitwise equal on CPU; allow accumulation-order noise).
    model, variables = built("bfloat16", name)
    fast = jax.jit(functools.partial(fast_logits, model))(variables, TOKENS, SEGMENTS)
    ref = jax.jit(functools.partial(reference_logits, model))(variables, TOKENS, SEGMENTS)
    base = Decoder(model.config).apply({"params": variables["params"]}, TOKENS, segment_ids=SEGMENTS)[0]
    effect = float(jnp.abs(ref - base).max())
    err = float(jnp.abs(fast - ref).max())
    assert effect > 0.5 and err <= 0.01 * effect, (err, effect)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(fast, -1)), np.asarray(jnp.argmax(ref, -1)))


def test_fast_path_is_taken_with_fewer_matmuls_and_no_top_k():
    model, variables = built("float32", "ffn")
    fast = str(jax.make_jaxpr(functools.partial(fast_logits, model))(variables, TOKENS, SEGMENTS))
    ref = str(jax.make_jaxpr(functools.partial(reference_logits, model))(variables, TOKENS, SEGMENTS))
    assert not re.search(r"\b(top_k|sort)\[", fast)
    # per block: router + 2 per gate/up/down (7) -> router&A_gate&A_up + stacked B_gate/B_up + 2 for down (4)
    assert ref.count("dot_general") - fast.count("dot_general") == 3
    # training draws still use lax.top_k (Gumbel-top-k)
    train = jax.make_jaxpr(lambda v: model.apply(v, TOKENS, deterministic=False, rngs={"routing": jax.random.key(0)},
                                                 mutable=["routing_stats"]))(variables)
    assert re.search(r"\btop_k\[", str(train))


def test_generation_tokens_are_reference_argmaxes():
    """Generated (fast path, KV cache) tokens are the argmax of the reference path's full forward."""
    model, variables = built("float32", "all")
    prompts = [[5, 17, 33], [9, 2, 250, 7, 7, 1, 80], [101]]
    new = 6
    out = generate(model, variables, prompts, GenerationConfig(max_new_tokens=new))
    ref = jax.jit(functools.partial(reference_logits, model))
    width = 16
    for prompt, gen in zip(prompts, out.tokens, strict=True):
        assert len(gen) == new
        seq = prompt + gen
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq
        seg = (np.arange(width) < len(seq)).astype(np.int32)[None]
        logits = ref(variables, jnp.asarray(tokens), jnp.asarray(seg))
        want = np.asarray(jnp.argmax(logits[0, len(prompt) - 1:len(seq) - 1], axis=-1)).tolist()
        assert gen == want
    assert len({tuple(t) for t in out.tokens}) > 1
