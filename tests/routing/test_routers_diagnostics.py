"""Routing rules (MixLoRA top-k renormalisation, load-balancing loss) and the diagnostics, by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.routing.diagnostics import (
    collect_routing_stats,
    dense_weights,
    distinct_subsets,
    effective_support_size,
    entropy,
    expert_load,
    logit_scale,
    routing_diagnostics,
)
from remix_jax.routing.routers import dense_softmax_route, load_balancing_loss, mixlora_route, remix_route


def test_effective_support_size_known_values():
    np.testing.assert_allclose(float(effective_support_size(jnp.ones(8) / 8)), 8.0, rtol=1e-6)
    np.testing.assert_allclose(float(effective_support_size(jnp.eye(8)[3])), 1.0, rtol=1e-6)
    paper = jnp.array([0.933, 0.022, 0.015, 0.010, 0.007, 0.005, 0.005, 0.003])  # docs/method.md §5
    np.testing.assert_allclose(float(effective_support_size(paper)), 1.15, atol=0.005)
    np.testing.assert_allclose(float(effective_support_size(jnp.array([0.5, -0.5, 0.0]))), 2.0, rtol=1e-6)


def test_entropy_and_load_and_subsets_by_hand():
    np.testing.assert_allclose(float(entropy(jnp.ones(8) / 8)), np.log(8), rtol=1e-6)
    np.testing.assert_allclose(float(entropy(jnp.eye(4)[0])), 0.0, atol=1e-7)
    experts = jnp.array([[[0, 1], [1, 0], [2, 3], [3, 2], [0, 2]]])  # [B=1, T=5, k=2]
    mask = jnp.array([[True, True, True, False, True]])
    np.testing.assert_allclose(np.asarray(expert_load(experts, 4, mask)), [3 / 4, 2 / 4, 2 / 4, 1 / 4])
    assert float(distinct_subsets(experts, mask)) == 3.0  # {0,1}, {2,3}, {0,2}; order and padding ignored
    assert float(distinct_subsets(experts, jnp.zeros_like(mask))) == 0.0


def test_mixlora_weights_are_renormalised_top_k_of_softmax():
    logits = jax.random.normal(jax.random.key(0), (3, 7, 8)) * 3
    out = mixlora_route(logits, 2)
    np.testing.assert_allclose(np.asarray(jnp.sum(out.weights, -1)), 1.0, rtol=1e-6)
    q = np.asarray(jax.nn.softmax(logits, -1))
    top = np.sort(q, -1)[..., ::-1][..., :2]
    np.testing.assert_allclose(np.asarray(out.weights), top / top.sum(-1, keepdims=True), rtol=1e-5)
    # Learned: the weights depend on the logits (a gradient flows to the router).
    g = jax.grad(lambda z: jnp.sum(mixlora_route(z, 2).weights[..., 0] ** 2))(logits)
    assert float(jnp.abs(g).max()) > 0


def test_load_balancing_loss_hand_computation():
    probs = jnp.array([[0.5, 0.3, 0.1, 0.1],
                       [0.1, 0.2, 0.6, 0.1],
                       [0.25, 0.25, 0.25, 0.25]])  # the third token is padding
    experts = jnp.array([[0, 1], [2, 1], [3, 2]])
    mask = jnp.array([True, True, False])
    # f = fraction of the 2 valid tokens selecting each expert; Pbar = mean probability over them.
    f = np.array([1 / 2, 2 / 2, 1 / 2, 0.0])
    pbar = np.array([0.3, 0.25, 0.35, 0.1])
    hand = 4 * np.sum(f * pbar)  # n * sum_i f_i Pbar_i = 4 * 0.575 = 2.3
    np.testing.assert_allclose(float(load_balancing_loss(probs, experts, mask)), hand, rtol=1e-6)
    np.testing.assert_allclose(hand, 2.3, rtol=1e-12)


def test_remix_applied_ess_is_exactly_k_and_dense_router_diagnostics():
    logits = jax.random.normal(jax.random.key(1), (2, 9, 8)) * 4
    mask = jnp.ones((2, 9), bool).at[1, 5:].set(False)
    for k in (1, 2, 3, 8):
        out = remix_route(logits, k, omega=16.0 / (k * 8), key=jax.random.key(k))
        d = routing_diagnostics(out.experts, out.weights, out.probs, mask, dense=False)
        # Exactly k by construction, per token (float32 rounding aside).
        per_token = effective_support_size(dense_weights(out.experts, out.weights, 8))
        np.testing.assert_allclose(np.asarray(per_token), k, rtol=1e-6)
        np.testing.assert_allclose(float(d["ess_applied"]), k, rtol=1e-6)
        np.testing.assert_allclose(float(jnp.sum(d["load"])), k, rtol=1e-6)
    dense = dense_softmax_route(logits)
    d = routing_diagnostics(dense.experts, dense.weights, dense.probs, mask, dense=True)
    np.testing.assert_allclose(float(d["ess_applied"]), float(d["ess_softmax"]), rtol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(d["load"])), 1.0, rtol=1e-6)
    assert float(d["distinct_subsets"]) == 1.0


def test_collect_routing_stats_sums_log_prob_over_sites():
    site = lambda v: {"log_prob": jnp.full((2, 1, 3), v), "aux_loss": jnp.full((2,), v),
                      "ess_applied": jnp.full((2,), v), "ess_softmax": jnp.zeros(2), "entropy": jnp.zeros(2),
                      "load": jnp.zeros((2, 4)), "distinct_subsets": jnp.zeros(2)}
    stats = {"routing_stats": {"layers": {"mlp": {"gate_proj": site(1.0), "down_proj": site(3.0)}}}}
    out = collect_routing_stats(stats)
    np.testing.assert_allclose(np.asarray(out["log_prob"]), 4.0)
    np.testing.assert_allclose(np.asarray(out["aux_loss"]), 4.0)
    np.testing.assert_allclose(np.asarray(out["ess_applied"]), 2.0)
    assert "logit_std" not in out  # a statistic the sites lack is left out
    assert collect_routing_stats({}) == {}


def test_logit_scale_by_hand():
    """The mean over valid tokens of the population std of each token's n logits; shift-invariant; 0 without
    logits; reported by the diagnostics and averaged over sites."""
    logits = jnp.array([[[1.0, 3.0, 1.0, 3.0], [0.0, 0.0, 0.0, 4.0], [9.0, -9.0, 9.0, -9.0]]])  # [1, 3, 4]
    mask = jnp.array([[True, True, False]])
    hand = (1.0 + np.sqrt(3.0)) / 2  # std of (1, 3, 1, 3) is 1; of (0, 0, 0, 4) sqrt(3); the third is padding
    np.testing.assert_allclose(float(logit_scale(logits, mask)), hand, rtol=1e-6)
    np.testing.assert_allclose(float(logit_scale(logits + 5.0, mask)), hand, rtol=1e-6)
    assert float(logit_scale(None, mask)) == 0.0
    out = remix_route(logits, 2, omega=1.0, key=jax.random.key(0))
    d = routing_diagnostics(out.experts, out.weights, out.probs, mask, dense=False, logits=logits)
    np.testing.assert_allclose(float(d["logit_std"]), hand, rtol=1e-6)
    site = lambda v: {**d, "logit_std": jnp.full((2,), v), "log_prob": jnp.zeros((2, 1, 3))}
    out = collect_routing_stats({"a": site(1.0), "b": site(2.0)})
    np.testing.assert_allclose(np.asarray(out["logit_std"]), 1.5)
