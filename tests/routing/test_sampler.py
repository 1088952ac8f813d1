"""Gumbel-top-k sampling, the exact ordered-draw log-probability, and top-k at inference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.routing.routers import remix_route
from remix_jax.routing.sampler import gumbel_top_k, ordered_log_prob, top_k_select

N, K = 5, 3
LOGITS = jnp.array([1.3, -0.4, 0.2, 2.1, -1.5], jnp.float32)
PERMS = np.array(list(itertools.permutations(range(N), K)), np.int32)  # all 60 ordered selections
CHI2_CRIT_DF59_P001 = 98.324  # scipy.stats.chi2.ppf(0.999, 59)


def _plackett_luce_reference(logits, sel):
    """prod_j q_{i_j} / (1 - sum_{j' < j} q_{i_j'}) in float64."""
    q = np.exp(np.asarray(logits, np.float64))
    q /= q.sum()
    p, used = 1.0, 0.0
    for i in sel:
        p *= q[i] / (1.0 - used)
        used += q[i]
    return p


def _exact_probs(logits):
    idx = jnp.asarray(PERMS)
    return np.exp(np.asarray(ordered_log_prob(jnp.broadcast_to(logits, (len(PERMS), N)), idx), np.float64))


def test_enumeration_sums_to_one_and_matches_plackett_luce():
    assert len(PERMS) == 60
    probs = _exact_probs(LOGITS)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    ref = np.array([_plackett_luce_reference(LOGITS, s) for s in PERMS])
    np.testing.assert_allclose(probs, ref, rtol=1e-5)


def _counts(indices):
    codes = np.asarray(indices) @ np.array([N * N, N, 1])
    table = {int(c): i for i, c in enumerate(PERMS @ np.array([N * N, N, 1]))}
    counts = np.zeros(len(PERMS))
    for c, m in zip(*np.unique(codes, return_counts=True), strict=True):
        counts[table[int(c)]] = m
    return counts


def test_gumbel_top_k_frequencies_match_exact_probabilities():
    samples = 100_000
    logits = jnp.broadcast_to(LOGITS, (samples, N))
    idx = jax.jit(gumbel_top_k, static_argnums=1)(logits, K, jax.random.key(7))
    idx = np.asarray(idx)
    assert idx.shape == (samples, K)
    assert np.all(np.sort(idx, axis=1)[:, 1:] != np.sort(idx, axis=1)[:, :-1])  # k distinct experts
    counts = _counts(idx)
    expected = samples * _exact_probs(LOGITS)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < CHI2_CRIT_DF59_P001, chi2
    # The same test has power: the frequencies reject the probabilities of other logits.
    wrong = samples * _exact_probs(LOGITS[::-1])
    assert np.sum((counts - wrong) ** 2 / wrong) > 10 * CHI2_CRIT_DF59_P001


def test_inference_selection_is_top_k_of_logits():
    logits = jax.random.normal(jax.random.key(3), (4, 6, 8))
    sel = top_k_select(logits, 3)
    ref = np.argsort(-np.asarray(logits), axis=-1)[..., :3]
    np.testing.assert_array_equal(np.asarray(sel), ref)
    out = remix_route(logits, 3, omega=0.5, key=None)
    np.testing.assert_array_equal(np.asarray(out.experts), ref)
    np.testing.assert_array_equal(np.asarray(out.log_prob), 0.0)
    sampled = remix_route(logits, 3, omega=0.5, key=jax.random.key(0))
    np.testing.assert_allclose(np.asarray(sampled.log_prob),
                               np.asarray(ordered_log_prob(logits, sampled.experts)), rtol=1e-6)


@pytest.mark.parametrize("n,k", [(8, 1), (8, 8), (3, 2)])
def test_log_prob_normalised_for_other_sizes(n, k):
    logits = jax.random.normal(jax.random.key(n * 10 + k), (n,)) * 2
    perms = np.array(list(itertools.permutations(range(n), k)), np.int32)
    lp = ordered_log_prob(jnp.broadcast_to(logits, (len(perms), n)), jnp.asarray(perms))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(lp))), 1.0, rtol=1e-5)
