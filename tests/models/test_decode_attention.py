"""Decode attention: one new token against the cache (heads-first layout, multiply-and-sum form) gives the same
output as the batched-matmul form over the sequence-first layout, in float32 and bfloat16, with padding masked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.models.attention import attention_mask, xla_attention


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_decode_form_equals_matmul_form(dtype, tol):
    b, s, h, kvh, hd = 3, 11, 6, 2, 16
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, 1, h, hd), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, s, kvh, hd), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (b, s, kvh, hd), jnp.float32).astype(dtype)
    # row 0 full, row 1 left-padded by 4, row 2 with only 3 keys filled so far
    key_seg = jnp.ones((b, s), jnp.int32).at[1, :4].set(0).at[2, 3:].set(0)
    key_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    q_pos = jnp.full((b, 1), s - 1, jnp.int32).at[2, 0].set(2)
    mask = attention_mask(q_pos, jnp.ones((b, 1), jnp.int32), key_pos, key_seg)
    ref = xla_attention(q, k, v, mask)
    out = xla_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, heads_first=True)
    assert out.shape == ref.shape == (b, 1, h, hd) and out.dtype == ref.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol, rtol=tol)
    # masked keys do not matter: spoiling them leaves row 2 unchanged
    spoiled = v.at[2, 3:].set(100.0)
    out2 = xla_attention(q, k.transpose(0, 2, 1, 3), spoiled.transpose(0, 2, 1, 3), mask, heads_first=True)
    np.testing.assert_array_equal(np.asarray(out2[2], np.float32), np.asarray(out[2], np.float32))
