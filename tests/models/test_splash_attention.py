"""The TPU splash-attention path (models/tpu_attention.py) against the XLA attention, in Pallas' interpreter.

Same outputs and gradients as ``xla_attention`` with its explicit mask, for grouped-query heads, packed rows
(two segments) and right padding; checked on the tokens the loss reads (padding rows attend differently).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.models import tpu_attention
from remix_jax.models.attention import attention_mask, resolve_attention_impl, xla_attention
from remix_jax.models.llama import positions_from_segments
from remix_jax.models.model_config import named_config


def inputs(t: int):
    b, h, kv, hd = 2, 4, 2, 16
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (b, t, h, hd))
    k = jax.random.normal(ks[1], (b, t, kv, hd))
    v = jax.random.normal(ks[2], (b, t, kv, hd))
    seg = np.zeros((b, t), np.int32)
    seg[0, : t // 3], seg[0, t // 3: t - 10] = 1, 2  # two packed sequences, then padding
    seg[1, : t - t // 4] = 1  # one sequence, right padding
    return q, k, v, jnp.asarray(seg)


def reference(q, k, v, seg):
    pos = positions_from_segments(seg)
    return xla_attention(q, k, v, attention_mask(pos, seg, pos, seg))


@pytest.mark.slow
def test_outputs_match_xla_attention():
    q, k, v, seg = inputs(256)
    out = tpu_attention.splash_attention(q, k, v, seg, interpret=True)
    ref = reference(q, k, v, seg)
    real = np.asarray(seg) != 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gradients_match_xla_attention():
    q, k, v, seg = inputs(128)
    w = (seg != 0).astype(jnp.float32)[:, :, None, None]  # the loss reads real tokens only

    def loss(fn):
        return lambda q, k, v: jnp.sum(w * jnp.sin(fn(q, k, v)))

    got = jax.grad(loss(lambda q, k, v: tpu_attention.splash_attention(q, k, v, seg, interpret=True)),
                   argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: reference(q, k, v, seg)), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)


def test_sequence_length_must_be_a_multiple_of_128():
    q, k, v, seg = inputs(128)
    with pytest.raises(ValueError, match="multiple of 128, got 100"):
        tpu_attention.splash_attention(q[:, :100], k[:, :100], v[:, :100], seg[:, :100])
    assert tpu_attention.block_sizes(2048).block_q == 512 and tpu_attention.block_sizes(384).block_kv == 128


def test_auto_is_xla_on_cpu_and_with_a_cache():
    cfg = named_config("tiny", attention_impl="auto")
    assert jax.default_backend() == "cpu"
    assert resolve_attention_impl(cfg, cached=False, seq_len=256) == "xla"
    assert resolve_attention_impl(cfg.replace(attention_impl="splash"), cached=True, seq_len=256) == "xla"
    assert resolve_attention_impl(cfg.replace(attention_impl="splash"), cached=False, seq_len=256) == "splash"
