"""model.scan_unroll (layers per iteration of the scanned layer loop) changes the compiled loop, never the
numbers: logits, KV-cache decoding and gradients equal the rolled loop; parameters keep their layout. (Fully
unrolled under remat the loop is models.unrolled, whose sampled routing draws other keys: tests/models/
test_unrolled_remat.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.models.attention import init_cache
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import ModelLoadError, named_config


@pytest.fixture(scope="module")
def setup():
    cfg = named_config("tiny")
    params = init_params(Decoder(cfg), jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    return cfg, params, tokens


def _decode(cfg, params, tokens, steps=3):
    apply = jax.jit(Decoder(cfg).apply)  # one program for the prefill, one for the decoding steps
    cache = init_cache(cfg, tokens.shape[0], tokens.shape[1] + steps)
    logits, cache = apply(params, tokens, cache=cache)
    out = [logits[:, -1]]
    for i in range(steps):
        nxt = jnp.argmax(out[-1], axis=-1)[:, None]
        pos = jnp.full((tokens.shape[0], 1), tokens.shape[1] + i)
        logits, cache = apply(params, nxt, positions=pos, cache=cache)
        out.append(logits[:, -1])
    return jnp.stack(out)


@pytest.mark.parametrize("unroll", [2, 1000])
def test_unrolled_loop_gives_the_same_numbers(setup, unroll):
    cfg, params, tokens = setup
    ucfg = cfg.replace(scan_unroll=unroll)
    # same parameter layout (stacked [num_layers, ...] leaves)
    uparams = init_params(Decoder(ucfg), jax.random.key(0))
    assert jax.tree.structure(uparams) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, uparams, params)
    # Each form jitted (op by op, most of the test's time went to dispatching): the rolled and the unrolled loop
    # are still two compiled programs, compared as before.
    ref, _ = jax.jit(Decoder(cfg).apply)(params, tokens)
    got, _ = jax.jit(Decoder(ucfg).apply)(params, tokens)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_decode(ucfg, params, tokens), _decode(cfg, params, tokens), rtol=1e-5, atol=1e-5)

    def loss(p, c):
        return jnp.mean(Decoder(c).apply(p, tokens)[0] ** 2)

    g_ref, g = (jax.jit(jax.grad(lambda p, c=c: loss(p, c)))(params) for c in (cfg, ucfg))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


def test_bad_unroll_is_refused(setup):
    cfg = setup[0]
    with pytest.raises(ModelLoadError, match="scan_unroll"):
        cfg.replace(scan_unroll=0)
