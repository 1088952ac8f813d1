"""The objective: masked per-sequence CE, and the gradients it gives adapters and routers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.routing.diagnostics import collect_routing_stats
from remix_jax.training.objective import (
    ObjectiveConfig,
    adapter_objective,
    per_sequence_sums,
    sequence_losses,
    token_cross_entropy,
)


def test_sequence_losses_match_numpy_reference():
    rng = np.random.default_rng(0)
    b, t, v = 3, 10, 7
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t)).astype(np.int32)
    # row 0: one sequence with padding; row 1: two packed sequences; row 2: a sequence with no response.
    seg = np.array([[1] * 7 + [0] * 3, [1] * 4 + [2] * 6, [1] * 5 + [0] * 5], np.int32)
    mask = np.zeros((b, t), np.float32)
    mask[0, 3:7] = 1
    mask[1, 2:4] = 1
    mask[1, 6:10] = 1
    logits, tokens, mask, seg = map(jnp.asarray, (logits, tokens, mask, seg))
    loss, valid = sequence_losses(logits, tokens, mask, seg)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    def ref(row, positions):
        return -np.mean([logp[row, p - 1, tokens[row, p]] for p in positions])

    np.testing.assert_allclose(loss[0, 0], ref(0, range(3, 7)), rtol=1e-5)
    np.testing.assert_allclose(loss[1, 0], ref(1, range(2, 4)), rtol=1e-5)
    np.testing.assert_allclose(loss[1, 1], ref(1, range(6, 10)), rtol=1e-5)
    expect_valid = np.zeros((b, t), bool)
    expect_valid[0, 0] = expect_valid[1, 0] = expect_valid[1, 1] = True
    np.testing.assert_array_equal(np.asarray(valid), expect_valid)
    np.testing.assert_array_equal(np.asarray(token_cross_entropy(logits, tokens))[:, 0], 0)
    np.testing.assert_allclose(per_sequence_sums(jnp.ones((b, t)), seg)[1, :2], [4, 6])


@pytest.fixture(scope="module")
def remix_setup(remix_bundle, batch, perturb):
    """Jitted pieces common to the gradient tests (each compiled once)."""
    bundle = remix_bundle
    tr = perturb(bundle.trainable)
    cfg = ObjectiveConfig(num_samples=3, baseline="rloo", sampling_router=True)

    def single(trainable, key):
        """(mean task loss, per-sequence loss [B], per-sequence log Q [B]) under one routing key."""
        (logits, _), mut = bundle.model.apply(
            {"params": bundle.base, **trainable}, batch["tokens"], segment_ids=batch["segment_ids"],
            positions=batch["positions"], deterministic=False, rngs={"routing": key},
            mutable=["routing_stats"])
        loss, valid = sequence_losses(logits, batch["tokens"], batch["loss_mask"], batch["segment_ids"])
        lq = per_sequence_sums(jnp.sum(collect_routing_stats(mut)["log_prob"], 0), batch["segment_ids"])
        w = valid.astype(jnp.float32)
        return jnp.sum(loss * w) / jnp.sum(w), loss[:, 0], lq[:, 0]

    fns = dict(
        objective_grad=jax.jit(jax.grad(
            lambda t, k, c: adapter_objective(bundle.model.apply, t, bundle.base, batch, k, c), has_aux=True),
            static_argnums=2),
        single=jax.jit(single),
        adapter_grad=jax.jit(jax.grad(lambda a, k: single({**tr, "adapter": a}, k)[0])),
        router_grad=jax.jit(jax.grad(lambda r, k, w: jnp.sum(single({**tr, "router": r}, k)[2] * w))),
    )
    return tr, cfg, fns


def test_lora_gradient_is_mean_of_per_sample_gradients(remix_setup):
    tr, cfg, f = remix_setup
    key = jax.random.key(7)
    grads, metrics = f["objective_grad"](tr, key, cfg)
    keys = jax.random.split(key, cfg.num_samples)
    per_sample = [f["adapter_grad"](tr["adapter"], k) for k in keys]
    expected = jax.tree.map(lambda *g: sum(g) / len(g), *per_sample)
    flat_g, flat_e = jax.tree.leaves(grads["adapter"]), jax.tree.leaves(expected)
    assert max(float(jnp.max(jnp.abs(e))) for e in flat_e) > 1e-4  # the check is not vacuous
    for g, e in zip(flat_g, flat_e, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=1e-6)
    losses = [float(f["single"](tr, k)[0]) for k in keys]
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(losses), rtol=1e-5)


def test_router_gradient_is_rloo_estimator(remix_setup):
    """grad_router = mean_b 1/(M-1) sum_m (L_bm - Lbar_b) grad log Q_bm, from per-sample pieces."""
    tr, cfg, f = remix_setup
    key = jax.random.key(11)
    grads, _ = f["objective_grad"](tr, key, cfg)
    keys = jax.random.split(key, cfg.num_samples)
    losses = jnp.stack([f["single"](tr, k)[1] for k in keys], -1)  # [B, M]
    assert float(jnp.std(losses)) > 1e-4  # samples really differ
    adv = (losses - losses.mean(-1, keepdims=True)) / (cfg.num_samples - 1)
    b = losses.shape[0]
    parts = [f["router_grad"](tr["router"], k, adv[:, m]) for m, k in enumerate(keys)]
    expected = jax.tree.map(lambda *g: sum(g) / b, *parts)
    # The advantages are float32 differences of losses near 6.6 that differ by ~0.01-0.03, so the reference's
    # rounding reaches ~1e-5 of the gradient's scale (1.5e-6 at a largest entry of 0.18 measured): entries near
    # zero are compared against that scale. A wrong estimator moves entries by far more: with the 1/M of a
    # plain average instead of RLOO's 1/(M-1) the comparison fails (checked below).
    m = cfg.num_samples
    for g, e in zip(jax.tree.leaves(grads["router"]), jax.tree.leaves(expected), strict=True):
        g, e = np.asarray(g), np.asarray(e)
        atol = 5e-5 * float(np.max(np.abs(e)))
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=atol)
        assert not np.allclose(g, e * (m - 1) / m, rtol=1e-3, atol=atol)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["router"])) > 0


def test_no_rloo_switch_changes_router_gradient_only(remix_setup):
    import dataclasses

    tr, cfg, f = remix_setup
    key = jax.random.key(5)
    g_rloo, _ = f["objective_grad"](tr, key, cfg)
    g_none, _ = f["objective_grad"](tr, key, dataclasses.replace(cfg, baseline="none"))
    for a, b in zip(jax.tree.leaves(g_rloo["adapter"]), jax.tree.leaves(g_none["adapter"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(g_rloo["router"]), jax.tree.leaves(g_none["router"]), strict=True))
    assert diff > 1e-6


def test_uniform_random_with_m_samples_averages_m_independent_draws(make_config, batch, perturb):
    """uniform_random (no router) with train.num_samples M: the loss and the adapters' gradient are the mean over
    M uniform routings drawn with the keys split(key, M), each computed alone here; the draws differ; processing
    them c at a time (sample_chunk) gives the same; there is no router and no surrogate."""
    from remix_jax.training import loop
    from remix_jax.training.objective import objective_value_and_grad

    bundle = loop.build_model_bundle(make_config("uniform_random", num_samples=1))
    tr = perturb(bundle.trainable, seed=4)
    assert not jax.tree.leaves(tr.get("router", {}))

    @jax.jit
    def single(adapter, key):
        (logits, _), _ = bundle.model.apply(
            {"params": bundle.base, **tr, "adapter": adapter}, batch["tokens"], segment_ids=batch["segment_ids"],
            positions=batch["positions"], deterministic=False, rngs={"routing": key}, mutable=["routing_stats"])
        loss, valid = sequence_losses(logits, batch["tokens"], batch["loss_mask"], batch["segment_ids"])
        w = valid.astype(jnp.float32)
        return jnp.sum(loss * w) / jnp.sum(w)

    m, key = 4, jax.random.key(21)
    keys = jax.random.split(key, m)
    losses = [float(single(tr["adapter"], k)) for k in keys]
    assert np.std(losses) > 1e-4  # the M draws route differently
    grads = [jax.grad(single)(tr["adapter"], k) for k in keys]
    expected = jax.tree.map(lambda *g: sum(g) / m, *grads)
    for chunk in (0, 2):
        cfg = ObjectiveConfig(num_samples=m, sampling_router=False, sample_chunk=chunk)
        (total, metrics), g = jax.jit(lambda t, k, c=cfg: objective_value_and_grad(
            bundle.model.apply, t, bundle.base, batch, k, c))(tr, key)
        assert "surrogate" not in metrics
        np.testing.assert_allclose(float(metrics["loss"]), np.mean(losses), rtol=1e-5)
        np.testing.assert_allclose(float(total), np.mean(losses), rtol=1e-5)
        for a, e in zip(jax.tree.leaves(g["adapter"]), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=2e-4, atol=1e-6)
        # not the gradient of one draw alone
        assert not all(np.allclose(np.asarray(a), np.asarray(e), rtol=2e-4, atol=1e-6) for a, e in
                       zip(jax.tree.leaves(g["adapter"]), jax.tree.leaves(grads[0]), strict=True))
