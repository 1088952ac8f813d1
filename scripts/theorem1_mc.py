"""Monte Carlo check of the paper's Theorem 1: softmax routing weights of a Gaussian router are born
collapsed onto at most two experts.

    python scripts/theorem1_mc.py [--n=8] [--d=1024] [--sigma=1.0] [--eps=0.01] [--num_samples=100000]

Setting (docs/method.md §5): a router P (n x d) with i.i.d. N(0, sigma^2) entries, an input x in {-1, +1}^d
(Rademacher), logits z = P x, routing weights q = softmax(z). The paper's example (n = 8, d = 1024,
sigma = 1) states that at most two experts carry weight with probability >= 84.19%.

Source caveat: the exact wording of the paper's Theorem 1 (its event and its bound formula) was not
available to us; only the example's numbers and the summary above were. This script therefore states the
event precisely itself and proves its own lower bound for it:

    event E_eps:  the experts outside the two largest weights together carry at most eps of the weight,
                  R = 1 - q_(1) - q_(2) <= eps.

Bound. For any fixed x, z = P x ~ N(0, s^2 I_n) exactly, with s = sigma * ||x||_2 = sigma * sqrt(d). Since
R = sum_{j>=3} exp(z_(j) - z_(1)) / sum_j exp(z_(j) - z_(1)) <= (n - 2) exp(-(z_(1) - z_(3))),

    E_eps  contains  G = {z_(1) - z_(3) >= delta},   delta = log((n - 2) / eps),

and, with t = delta / s and Phi, phi the standard normal cdf and density (the largest value at u, the other
n - 1 below u, at most one of them in (u - t, u)):

    P(G) = n * integral phi(u) [Phi(u - t)^(n-1) + (n-1) (Phi(u) - Phi(u - t)) Phi(u - t)^(n-2)] du.

So P(E_eps) >= P(G): the "exact-gap bound". The looser closed-form union bound over the C(n, 3) triples
that could be the top three, P(E_eps) >= 1 - C(n, 3) * P(range of 3 i.i.d. N(0,1) < t) with
P(range3 < t) = 3 * integral phi(u) (Phi(u + t) - Phi(u))^2 du, is printed too. The Monte Carlo estimate
simulates P and x literally and reports the binomial standard error sqrt(p (1 - p) / N).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

PAPER_EXAMPLE = {"n": 8, "d": 1024, "sigma": 1.0, "reported_probability": 0.8419}  # quoted, not computed

_U = np.linspace(-12.0, 12.0, 24001)  # integration grid in standard units (trapezoid rule)


def _integrate(values: np.ndarray) -> float:
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trapezoid(values, _U))


def _phi(u: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


def logit_scale(sigma: float, d: int) -> float:
    """Standard deviation s of each logit z_i = P_i . x for a Rademacher x: sigma * sqrt(d)."""
    return sigma * math.sqrt(d)


def gap_threshold(n: int, eps: float) -> float:
    """delta such that z_(1) - z_(3) >= delta implies rest mass R <= eps: log((n - 2) / eps)."""
    if n < 3:
        raise ValueError(f"n={n}: the event is trivial for fewer than 3 experts")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps={eps}: must be in (0, 1)")
    return math.log((n - 2) / eps)


def prob_top3_gap_at_least(n: int, t: float) -> float:
    """P(z_(1) - z_(3) >= t) for n i.i.d. N(0, 1) values (t in standard units), by the formula above."""
    F_lo, F = ndtr(_U - t), ndtr(_U)
    inner = F_lo ** (n - 1) + (n - 1) * (F - F_lo) * F_lo ** (n - 2)
    return n * _integrate(_phi(_U) * inner)


def prob_range3_below(t: float) -> float:
    """P(max - min of 3 i.i.d. N(0, 1) < t)."""
    return 3.0 * _integrate(_phi(_U) * (ndtr(_U + t) - ndtr(_U)) ** 2)


def lower_bounds(n: int, d: int, sigma: float, eps: float) -> dict[str, float]:
    """Lower bounds on P(E_eps): {"exact_gap": P(G), "union": 1 - C(n,3) P(range3 < t)} and delta, s."""
    s, delta = logit_scale(sigma, d), gap_threshold(n, eps)
    t = delta / s
    return {"exact_gap": prob_top3_gap_at_least(n, t), "union": 1.0 - math.comb(n, 3) * prob_range3_below(t),
            "delta": delta, "scale": s}


def rest_mass(z: np.ndarray) -> np.ndarray:
    """R = 1 - q_(1) - q_(2) of q = softmax(z) over the last axis. z: [..., n] -> [...]."""
    zs = np.sort(z.astype(np.float64), axis=-1)[..., ::-1]
    w = np.exp(zs - zs[..., :1])
    return w[..., 2:].sum(-1) / w.sum(-1)


def ess(z: np.ndarray) -> np.ndarray:
    """Effective support size (sum q)^2 / sum q^2 = 1 / sum q^2 of q = softmax(z). z: [..., n] -> [...]."""
    w = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    q = w / w.sum(-1, keepdims=True)
    return 1.0 / (q * q).sum(-1)


def sample_logits(rng: np.random.Generator, batch: int, n: int, d: int, sigma: float) -> np.ndarray:
    """z = P x for ``batch`` independent draws of P ~ N(0, sigma^2)^(n x d), x ~ Rademacher^d: [batch, n]."""
    P = rng.standard_normal((batch, n, d), dtype=np.float32) * np.float32(sigma)
    x = rng.integers(0, 2, size=(batch, d), dtype=np.int8).astype(np.float32) * 2.0 - 1.0
    return np.einsum("bnd,bd->bn", P, x, dtype=np.float64)


def monte_carlo(n: int, d: int, sigma: float, num_samples: int, seed: int = 0, batch: int = 2048,
                events: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> dict[str, tuple]:
    """Frequencies of events of the logits z [batch, n]: {name: (p_hat, binomial standard error, N)}."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(events, 0)
    done = 0
    while done < num_samples:
        b = min(batch, num_samples - done)
        z = sample_logits(rng, b, n, d, sigma)
        for name, fn in events.items():
            counts[name] += int(np.count_nonzero(fn(z)))
        done += b
    out = {}
    for name, c in counts.items():
        p = c / num_samples
        out[name] = (p, math.sqrt(p * (1.0 - p) / num_samples), num_samples)
    return out


def standard_events(n: int, eps: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """E_eps (rest mass <= eps), its sufficient event G (top-3 logit gap >= delta) and ESS <= 2."""
    delta = gap_threshold(n, eps)

    def top3_gap(z):
        zs = np.sort(z, axis=-1)
        return zs[..., -1] - zs[..., -3] >= delta

    return {"rest_mass_le_eps": lambda z: rest_mass(z) <= eps, "top3_gap_ge_delta": top3_gap,
            "ess_le_2": lambda z: ess(z) <= 2.0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=PAPER_EXAMPLE["n"], help="number of experts")
    p.add_argument("--d", type=int, default=PAPER_EXAMPLE["d"], help="input dimension")
    p.add_argument("--sigma", type=float, default=PAPER_EXAMPLE["sigma"], help="router init std")
    p.add_argument("--eps", type=float, default=0.01, help="weight allowed outside the top two")
    p.add_argument("--num_samples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    b = lower_bounds(a.n, a.d, a.sigma, a.eps)
    mc = monte_carlo(a.n, a.d, a.sigma, a.num_samples, a.seed, events=standard_events(a.n, a.eps))
    print(f"Gaussian router n={a.n}, d={a.d}, sigma={a.sigma}, Rademacher x: logit std s={b['scale']:.4g}")
    print(f"event: weight outside the top two experts <= eps={a.eps} (sufficient: top-3 logit gap >= "
          f"delta={b['delta']:.4f})")
    print(f"lower bound (exact gap probability):      {100 * b['exact_gap']:.2f}%")
    print(f"lower bound (union over C(n,3) triples):  {100 * b['union']:.2f}%")
    for name, label in (("rest_mass_le_eps", "Monte Carlo P(event)"),
                        ("top3_gap_ge_delta", "Monte Carlo P(top-3 gap >= delta)"),
                        ("ess_le_2", "Monte Carlo P(ESS(q) <= 2)")):
        pr, se, num = mc[name]
        print(f"{label + ':':42s}{100 * pr:.2f}% +- {100 * se:.2f}% (N={num}, binomial s.e.)")
    if (a.n, a.d, a.sigma) == (PAPER_EXAMPLE["n"], PAPER_EXAMPLE["d"], PAPER_EXAMPLE["sigma"]):
        print(f"paper's reported bound for this example (quoted): >= "
              f"{100 * PAPER_EXAMPLE['reported_probability']:.2f}% (its exact event was not available)")


if __name__ == "__main__":
    main()
