"""lora.lora_b_product's hand-written gradient equals JAX's own rule for the plain product, in float64, also under
the objective's vmap over routing samples (B broadcast), and through LoRA's delta and the mixtures built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import lora, moe


def _plain_product(h, b_all):
    return jnp.einsum("...m,mf->...f", h, b_all)


def _plain_mix_hidden(h, b, pi):
    n, r, _ = b.shape
    return _plain_product(h * jnp.repeat(pi, r, axis=-1), b.reshape(n * r, -1))


@pytest.mark.parametrize("lead", [(5,), (2, 3), (2, 3, 4)])
def test_lora_b_product_value_and_gradients_equal_the_plain_product(lead):
    with jax.enable_x64(True):
        kh, kb, kg = jax.random.split(jax.random.key(0), 3)
        h = jax.random.normal(kh, (*lead, 6), jnp.float64)
        b_all = jax.random.normal(kb, (6, 7), jnp.float64)
        g = jax.random.normal(kg, (*lead, 7), jnp.float64)  # a cotangent that is not all ones
        np.testing.assert_allclose(lora.lora_b_product(h, b_all), _plain_product(h, b_all), rtol=1e-12)
        _, vjp = jax.vjp(lora.lora_b_product, h, b_all)
        _, vjp_ref = jax.vjp(_plain_product, h, b_all)
        for got, ref in zip(vjp(g), vjp_ref(g), strict=True):
            assert got.shape == ref.shape and got.dtype == jnp.float64
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_mix_hidden_gradients_under_a_vmap_over_samples_with_shared_weights():
    """The objective's structure: M samples vmapped, the factors broadcast (in_axes None), so the cotangent of b
    is summed over the samples; a nonlinearity after the product makes the cotangent depend on the sample."""
    with jax.enable_x64(True):
        m, bsz, t, n, r, f = 3, 2, 5, 4, 2, 6
        ks = jax.random.split(jax.random.key(1), 3)
        h = jax.random.normal(ks[0], (m, bsz, t, n * r), jnp.float64)
        b = jax.random.normal(ks[1], (n, r, f), jnp.float64)
        pi = jax.nn.softmax(jax.random.normal(ks[2], (m, bsz, t, n), jnp.float64))

        def loss(fn, h, b, pi):
            y = jax.vmap(fn, in_axes=(0, None, 0))(h, b, pi)
            return jnp.sum(jax.nn.silu(y) * jnp.arange(f))

        got = jax.grad(lambda *a: loss(moe.mix_hidden, *a), argnums=(0, 1, 2))(h, b, pi)
        ref = jax.grad(lambda *a: loss(_plain_mix_hidden, *a), argnums=(0, 1, 2))(h, b, pi)
        for x, y in zip(got, ref, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "shared_a"])
def test_mixture_gradients_equal_a_per_expert_reference(kind):
    """dense_mixture (ReMix, MixLoRA dense) and shared_a_mixture (HydraLoRA) against sum_i pi_i x A_i B_i
    written expert by expert, gradients for x, A, B and pi."""
    with jax.enable_x64(True):
        d, n, r, f = 5, 3, 2, 4
        ks = jax.random.split(jax.random.key(2), 4)
        x = jax.random.normal(ks[0], (2, 3, d), jnp.float64)
        a = jax.random.normal(ks[1], (n, d, r) if kind == "dense" else (d, r), jnp.float64)
        b = jax.random.normal(ks[2], (n, r, f), jnp.float64)
        pi = jax.random.uniform(ks[3], (2, 3, n), jnp.float64)
        fn = moe.dense_mixture if kind == "dense" else moe.shared_a_mixture

        def reference(x, a, b, pi):
            a_i = (lambda i: a[i]) if kind == "dense" else (lambda i: a)
            return sum(pi[..., i, None] * (x @ a_i(i) @ b[i]) for i in range(n))

        np.testing.assert_allclose(fn(x, a, b, pi), reference(x, a, b, pi), rtol=1e-12)
        g = jnp.cos(jnp.arange(2 * 3 * f, dtype=jnp.float64)).reshape(2, 3, f)
        got = jax.grad(lambda *v: jnp.sum(fn(*v) * g), argnums=(0, 1, 2, 3))(x, a, b, pi)
        ref = jax.grad(lambda *v: jnp.sum(reference(*v) * g), argnums=(0, 1, 2, 3))(x, a, b, pi)
        for u, v in zip(got, ref, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12)


def test_lora_delta_gradients_equal_the_reference():
    with jax.enable_x64(True):
        ks = jax.random.split(jax.random.key(3), 4)
        x, a = jax.random.normal(ks[0], (2, 3, 5), jnp.float64), jax.random.normal(ks[1], (5, 2), jnp.float64)
        b, g = jax.random.normal(ks[2], (2, 4), jnp.float64), jax.random.normal(ks[3], (2, 3, 4), jnp.float64)
        got = jax.grad(lambda *v: jnp.sum(lora.lora_delta(*v, 0.7) * g), argnums=(0, 1, 2))(x, a, b)
        ref = jax.grad(lambda x, a, b: jnp.sum(0.7 * (x @ a @ b) * g), argnums=(0, 1, 2))(x, a, b)
        for u, v in zip(got, ref, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12)


def test_lora_b_product_keeps_bfloat16():
    h = jnp.ones((4, 8), jnp.bfloat16)
    b_all = jnp.full((8, 3), 0.5, jnp.bfloat16)
    y, vjp = jax.vjp(lora.lora_b_product, h, b_all)
    dh, db = vjp(jnp.ones_like(y))
    assert y.dtype == dh.dtype == db.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(db, np.float32), np.full((8, 3), 4.0, np.float32))
