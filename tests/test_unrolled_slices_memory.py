"""scripts/unrolled_slices_memory.py: its five ways of running a remat'd layer stack compute the same gradients
(against a float64 reference written here), and the compiled programs have the matmul counts the ways imply."""

import importlib.util
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "unrolled_slices_memory.py"
_spec = importlib.util.spec_from_file_location("unrolled_slices_memory", _PATH)
usm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(usm)

L, N, D, F = 3, 8, 4, 6


def _reference_grads(ps, x):
    """d/d(w1, w2) of sum(x_L^2), x_{l+1} = x_l + (sin(h) h) w2_l, h = tanh(x_l w1_l): numpy float64, by hand."""
    w1, w2 = (np.asarray(ps[k], np.float64) for k in ("w1", "w2"))
    xs, hs = [np.asarray(x, np.float64)], []
    for layer in range(L):
        h = np.tanh(xs[-1] @ w1[layer])
        hs.append(h)
        xs.append(xs[-1] + (np.sin(h) * h) @ w2[layer])
    g = 2 * xs[-1]
    g1, g2 = np.zeros_like(w1), np.zeros_like(w2)
    for layer in reversed(range(L)):
        h = hs[layer]
        g2[layer] = (np.sin(h) * h).T @ g
        dh = (g @ w2[layer].T) * (np.cos(h) * h + np.sin(h)) * (1 - h**2)
        g1[layer] = xs[layer].T @ dh
        g = g + dh @ w1[layer].T
    return {"w1": g1, "w2": g2}


@pytest.mark.parametrize("mode", usm.MODES)
def test_every_way_has_the_reference_gradient(mode):
    rng = np.random.default_rng(0)
    ps = {"w1": jnp.asarray(rng.normal(0, 0.5, (L, D, F)), jnp.float32),
          "w2": jnp.asarray(rng.normal(0, 0.5, (L, F, D)), jnp.float32)}
    x = jnp.asarray(rng.normal(0, 1, (N, D)), jnp.float32)
    got = usm.make_grad(mode, L)(ps, x)
    want = _reference_grads(ps, x)
    for k in ("w1", "w2"):
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-4, atol=1e-5)


def test_matmul_counts():
    """Rolled: the two loop bodies (2 forward, 4 backward); unrolled, with the slices outside or inside the
    checkpoint: 6 a layer less the first layer's unused input gradient (the saved matmul output is not recomputed)."""
    ps = {"w1": jnp.zeros((L, D, F), jnp.bfloat16), "w2": jnp.zeros((L, F, D), jnp.bfloat16)}
    x = jnp.zeros((N, D), jnp.bfloat16)

    def matmuls(mode):
        text = usm.make_grad(mode, L).lower(ps, x).compile().as_text()
        return len(re.findall(r"= \S+ (?:dot|convolution)\(", text))

    assert matmuls("rolled") == 6
    assert matmuls("unrolled") == matmuls("inside") == 6 * L - 1


def test_unknown_mode_is_refused(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["x", "--modes=rolled,bogus"])
    with pytest.raises(SystemExit, match="bogus"):
        usm.main()
