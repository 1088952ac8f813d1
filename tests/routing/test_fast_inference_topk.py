"""The sort-free deterministic top-k (pairwise ranks) selects exactly what lax.top_k selects, ties included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.routing.routers import remix_inference_weights, remix_route
from remix_jax.routing.sampler import (
    RANK_TOP_K_MAX_N,
    ascending_rank,
    descending_rank,
    top_k_mask,
    top_k_select,
)

CASES = [(n, k) for n in (2, 3, 8, 17, 64) for k in sorted({1, 2, n // 2, n - 1, n}) if 1 <= k <= n]


def tied_logits(n: int, dtype, seed: int) -> jax.Array:
    """[128, n] logits from 3 values (many ties) plus rows with +-0, +-inf and float noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(-1, 2, (96, n)).astype(np.float32)
    zeros = rng.choice(np.array([0.0, -0.0], np.float32), (16, n))
    special = rng.choice(np.array([np.inf, -np.inf, 0.5, -0.0, 0.0], np.float32), (8, n))
    noise = rng.normal(size=(8, n)).astype(np.float32)
    return jnp.asarray(np.concatenate([coarse, zeros, special, noise]), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n,k", CASES)
def test_rank_top_k_equals_lax_top_k(n, k, dtype):
    z = tied_logits(n, dtype, seed=n * 100 + k)
    _, ref = jax.lax.top_k(z, k)
    np.testing.assert_array_equal(np.asarray(top_k_select(z, k)), np.asarray(ref))
    ref_mask = np.zeros(z.shape, bool)
    np.put_along_axis(ref_mask, np.asarray(ref), True, axis=-1)
    np.testing.assert_array_equal(np.asarray(top_k_mask(z, k)), ref_mask)
    np.testing.assert_array_equal(np.asarray(top_k_mask(z, k, from_below=True)), ref_mask)
    # rank is a permutation of 0..n-1 in every row, and the ascending rank its mirror image
    np.testing.assert_array_equal(np.sort(np.asarray(descending_rank(z)), axis=-1),
                                  np.broadcast_to(np.arange(n), z.shape))
    np.testing.assert_array_equal(np.asarray(ascending_rank(z)), n - 1 - np.asarray(descending_rank(z)))


def test_nan_and_signed_zero_follow_lax_top_k_order():
    nan = float("nan")
    z = jnp.array([[nan, 1.0, -nan, 3.0, -jnp.inf, jnp.inf], [0.0, -0.0, 0.0, -0.0, -0.0, 0.0]], jnp.float32)
    for k in range(1, 7):
        np.testing.assert_array_equal(np.asarray(top_k_select(z, k)), np.asarray(jax.lax.top_k(z, k)[1]))


def test_large_n_falls_back_to_lax_top_k():
    n = RANK_TOP_K_MAX_N + 16
    z = tied_logits(n, jnp.float32, seed=7)
    np.testing.assert_array_equal(np.asarray(top_k_select(z, 5)), np.asarray(jax.lax.top_k(z, 5)[1]))
    assert int(jnp.sum(top_k_mask(z, 5), axis=-1).min()) == 5


@pytest.mark.parametrize("n,k", [(8, 2), (16, 4), (5, 5)])
def test_remix_inference_weights_equal_remix_route_scatter(n, k):
    z = tied_logits(n, jnp.float32, seed=3)
    out = remix_route(z, k, omega=0.75, key=None)
    dense = jnp.sum(jax.nn.one_hot(out.experts, n) * out.weights[..., None], axis=-2)
    np.testing.assert_array_equal(np.asarray(remix_inference_weights(z, k, 0.75)), np.asarray(dense))
    np.testing.assert_array_equal(np.asarray(remix_inference_weights(z, k, 0.75, from_below=True)),
                                  np.asarray(dense))


def test_small_n_compiles_without_sort_or_top_k():
    z = jax.ShapeDtypeStruct((4, 8), jnp.float32)
    text = jax.jit(lambda z: (top_k_select(z, 2), top_k_mask(z, 2))).lower(z).as_text()
    assert "top_k" not in text and "sort" not in text
    ref = jax.jit(lambda z: jax.lax.top_k(z, 2)).lower(z).as_text()
    assert "top_k" in ref or "sort" in ref
