"""The opt-in routing_trace collection: per-token router input, logits and chosen experts of every block, and a
traced forward pass computes the same logits as the untraced one (which takes ReMix's fast inference path)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.adapters.modules import TRACE
from remix_jax.models import llama
from remix_jax.models.model_config import named_config


def _model(method: str):
    cfg = named_config("tiny", num_layers=3)
    acfg = AdapterConfig(method=method, targets="ffn", num_experts=6, top_k=2, rank=4, alpha=8.0)
    model = build_model(cfg, acfg)

    @jax.jit  # one program for the variables (op by op, the initialisation took most of the test's time)
    def make():
        base = llama.init_params(llama.Decoder(cfg), jax.random.key(0))["params"]
        var = init_adapter_variables(model, jax.random.key(1))
        # Non-zero B (the experts then change the output) and router logits far from uniform.
        var = {"adapter": jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                                       var["adapter"]),
               "router": jax.tree.map(lambda x: 30.0 * x, var["router"])}
        return {"params": base, **var}

    tokens = jax.random.randint(jax.random.key(3), (2, 10), 0, cfg.vocab_size)
    return model, make(), tokens


def _apply(model, variables, tokens, mutable=False):
    """``model.apply(variables, tokens, deterministic=True, mutable=mutable)``, jitted (the traced and untraced
    forms are still separate programs: the collection is fixed when tracing)."""
    return jax.jit(functools.partial(model.apply, deterministic=True, mutable=mutable))(variables, tokens)


@pytest.mark.parametrize("method", ["remix", "mixlora"])
def test_trace_records_the_routing_each_block_applied(method):
    model, variables, tokens = _model(method)
    (logits, _), mut = _apply(model, variables, tokens, mutable=[TRACE])
    tr = mut[TRACE]["layers"]["mlp"]
    x, z, experts = (np.asarray(tr[k], np.float64) for k in ("input", "logits", "experts"))
    w = np.asarray(variables["router"]["layers"]["mlp"]["weight"], np.float64)  # [L, d, n]
    assert x.shape == (3, 2, 10, 64) and z.shape == (3, 2, 10, 6) and experts.shape == (3, 2, 10, 2)
    np.testing.assert_allclose(z, np.einsum("lbtd,ldn->lbtn", x, w), rtol=1e-4, atol=1e-5)
    top2 = np.sort(np.argsort(-z, axis=-1)[..., :2], axis=-1)
    np.testing.assert_array_equal(np.sort(experts, axis=-1), top2)
    # The recorded input is the block's normalised FFN input: RMS 1 per token (the random model's norm scales
    # are 1), not the residual stream.
    np.testing.assert_allclose(np.sqrt(np.mean(x ** 2, -1)), 1.0, rtol=1e-3)
    plain, _ = _apply(model, variables, tokens)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_no_trace_unless_asked():
    model, variables, tokens = _model("remix")
    _, mut = _apply(model, variables, tokens, mutable=["routing_stats"])
    assert TRACE not in mut
    # A different routing changes the output: the recorded experts are the ones that mattered.
    (a, _), mut = _apply(model, variables, tokens, mutable=[TRACE])
    flipped = {**variables, "router": jax.tree.map(lambda w: -w, variables["router"])}
    (b, _), mut_b = _apply(model, flipped, tokens, mutable=[TRACE])
    assert not np.array_equal(mut[TRACE]["layers"]["mlp"]["experts"], mut_b[TRACE]["layers"]["mlp"]["experts"])
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
