"""scripts/theorem1_mc.py: the bounds against independent integrals, the Monte Carlo estimator against an
exact computation in a tiny case, and the paper's example (estimate >= bound)."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from scipy import stats

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "theorem1_mc.py"
_spec = importlib.util.spec_from_file_location("theorem1_mc", _PATH)
mc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)


def test_event_functions_on_known_logits():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [5.0, 5.0, -30.0, -30.0]])
    e = math.exp(10)
    np.testing.assert_allclose(mc.rest_mass(z), [0.5, 2 / (e + 3), math.exp(-35)], rtol=1e-9)
    np.testing.assert_allclose(mc.ess(z), [4.0, (e + 3) ** 2 / (e**2 + 3), 2.0], rtol=1e-9)
    # the sufficient condition: gap >= log((n-2)/eps) implies rest mass <= eps, on random logits
    rng = np.random.default_rng(0)
    z = rng.normal(scale=5.0, size=(5000, 6))
    ev = mc.standard_events(6, 0.05)
    assert np.all(ev["rest_mass_le_eps"](z)[ev["top3_gap_ge_delta"](z)])


@pytest.mark.parametrize("n,t", [(3, 0.5), (8, 0.2), (5, 1.3)])
def test_gap_and_range_probabilities_match_direct_sampling(n, t):
    # independent of the formulas: order statistics of directly sampled i.i.d. N(0, 1) values
    num = 400_000
    z = np.sort(np.random.default_rng(n).standard_normal((num, n)), axis=-1)
    p_gap = np.mean(z[:, -1] - z[:, -3] >= t)
    se = math.sqrt(p_gap * (1 - p_gap) / num)
    assert abs(mc.prob_top3_gap_at_least(n, t) - p_gap) < 4 * se + 1e-6
    r = z[:, :3].max(-1) - z[:, :3].min(-1) if n == 3 else np.ptp(
        np.random.default_rng(n + 1).standard_normal((num, 3)), axis=-1)
    p_r = np.mean(r < t)
    assert abs(mc.prob_range3_below(t) - p_r) < 4 * math.sqrt(p_r * (1 - p_r) / num) + 1e-6


def _exact_rest_mass_prob_n3(s: float, eps: float) -> float:
    """P(q_min <= eps) for n=3 logits i.i.d. N(0, s^2), by a 2-D grid integral over the two larger logits:
    3 * E[ Phi(min(a, b, log(eps/(1-eps)) + logaddexp(a, b)) / s) ] over a, b ~ N(0, s^2)."""
    u = np.linspace(-9, 9, 1801)
    a, b = np.meshgrid(s * u, s * u, indexing="ij")
    c = np.log(eps / (1 - eps)) + np.logaddexp(a, b)
    w = stats.norm.pdf(u)[:, None] * stats.norm.pdf(u)[None, :]
    f = stats.norm.cdf(np.minimum(np.minimum(a, b), c) / s) * w
    return 3 * np.trapezoid(np.trapezoid(f, u, axis=1), u) if hasattr(np, "trapezoid") else \
        3 * np.trapz(np.trapz(f, u, axis=1), u)


def test_monte_carlo_matches_exact_tiny_case():
    n, d, sigma, eps = 3, 1, 1.0, 0.2  # logits N(0, 1): the event is far from certain
    exact = _exact_rest_mass_prob_n3(mc.logit_scale(sigma, d), eps)
    gap_exact = mc.prob_top3_gap_at_least(n, mc.gap_threshold(n, eps) / mc.logit_scale(sigma, d))
    assert 0.3 < exact < 0.9 and gap_exact < exact
    est = mc.monte_carlo(n, d, sigma, num_samples=40000, seed=1, events=mc.standard_events(n, eps))
    p, se, num = est["rest_mass_le_eps"]
    assert num == 40000 and se == pytest.approx(math.sqrt(p * (1 - p) / num))
    assert abs(p - exact) < 4 * se, (p, exact, se)
    pg, seg, _ = est["top3_gap_ge_delta"]
    assert abs(pg - gap_exact) < 4 * seg, (pg, gap_exact, seg)


def test_paper_example_estimate_is_at_least_the_bound():
    n, d, sigma, eps = 8, 1024, 1.0, 0.01
    b = mc.lower_bounds(n, d, sigma, eps)
    assert b["scale"] == 32.0 and b["delta"] == pytest.approx(math.log(600))
    assert 0.0 < b["union"] < b["exact_gap"] < 1.0
    est = mc.monte_carlo(n, d, sigma, num_samples=3000, seed=0, events=mc.standard_events(n, eps))
    p, se, _ = est["rest_mass_le_eps"]
    assert p >= b["exact_gap"] - 4 * se
    assert p >= mc.PAPER_EXAMPLE["reported_probability"] - 4 * se


def test_cli_prints_both_numbers(capsys):
    mc.main(["--num_samples=500", "--seed=3"])
    out = capsys.readouterr().out
    assert "lower bound (exact gap probability):" in out and "Monte Carlo P(event):" in out
    assert "N=500" in out and "84.19%" in out
    with pytest.raises(ValueError, match="eps=1.5"):
        mc.lower_bounds(8, 1024, 1.0, 1.5)
