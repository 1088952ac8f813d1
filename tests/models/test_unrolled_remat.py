"""The fully unrolled layer loop under remat (models.unrolled): each layer's checkpoint takes the stacked variables
and slices them inside, so no layer's slices are saved for the backward pass; the numbers, the written collections
and the variable tree are the rolled loop's, and sampled routing draws on each layer's own split of the stream."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.adapters.modules import TRACE
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config
from remix_jax.training.objective import ObjectiveConfig, adapter_objective

L, D, F = 3, 64, 256


def _config(unroll: int, remat: str = "save_proj_out"):
    return named_config("tiny", hidden_size=D, intermediate_size=F, num_layers=L, num_heads=4, num_kv_heads=2,
                        head_dim=16, vocab_size=128, remat=remat, scan_unroll=unroll)


@pytest.fixture(scope="module")
def remix():
    acfg = AdapterConfig(method="remix", num_experts=4, top_k=1, rank=4)
    model = build_model(_config(1), acfg)
    base = init_params(Decoder(_config(1)), jax.random.key(0))["params"]
    variables = jax.tree.map(lambda x: x + 0.02, init_adapter_variables(model, jax.random.key(1)))
    tokens = jax.random.randint(jax.random.key(2), (2, 24), 0, 128)
    return acfg, {"params": base, **variables}, tokens


def _apply(acfg, unroll, variables, tokens, **kw):
    return jax.jit(lambda v: build_model(_config(unroll), acfg).apply(
        v, tokens, mutable=["routing_stats", TRACE], **kw))(variables)


def test_deterministic_outputs_and_written_collections_equal_the_rolled_loop(remix):
    acfg, variables, tokens = remix
    (ref, _), ref_state = _apply(acfg, 1, variables, tokens)
    (got, _), state = _apply(acfg, L, variables, tokens)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    # stacked on the leading layer axis, as nn.scan stacks them
    assert state[TRACE]["layers"]["mlp"]["experts"].shape[0] == L
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), state, ref_state)


def test_initialisation_is_the_rolled_loops():
    a = init_params(Decoder(_config(1)), jax.random.key(0))
    b = init_params(Decoder(_config(L)), jax.random.key(0))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _scan_unrolls(jaxpr) -> list:
    """The unroll of every lax.scan in a closed jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append(eqn.params["unroll"])
        for sub in jax.core.jaxprs_in_params(eqn.params):
            found += _scan_unrolls(sub)
    return found


@pytest.mark.parametrize("remat", ["none", "save_proj_out"])
def test_initialisation_runs_a_rolled_loop_whatever_the_unroll(remat):
    """A fully unrolled config initialises through a rolled loop (same variables, a program that compiles in a
    fraction of the time); its forward pass keeps the unroll it asks for."""
    model, tokens = Decoder(_config(L, remat)), jnp.zeros((1, 8), jnp.int32)
    init = jax.make_jaxpr(lambda k: model.init(k, tokens))(jax.random.key(0))
    assert _scan_unrolls(init.jaxpr) == [1]
    if remat == "none":  # under remat the unrolled forward pass is straight-line code (models.unrolled)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
        fwd = jax.make_jaxpr(lambda v: model.apply(v, tokens))(params)
        assert _scan_unrolls(fwd.jaxpr) == [L]


def test_gradients_equal_the_rolled_loop():
    acfg = AdapterConfig(method="mixlora", num_experts=4, top_k=2, rank=4)
    base = init_params(Decoder(_config(1)), jax.random.key(0))["params"]
    trainable = jax.tree.map(lambda x: x + 0.02, init_adapter_variables(build_model(_config(1), acfg),
                                                                         jax.random.key(1)))
    t = 32
    batch = {"tokens": jax.random.randint(jax.random.key(3), (2, t), 0, 128), "loss_mask": jnp.ones((2, t)),
             "segment_ids": jnp.ones((2, t), jnp.int32), "positions": jnp.broadcast_to(jnp.arange(t), (2, t))}
    out = {}
    for unroll in (1, L):
        model = build_model(_config(unroll), acfg)
        out[unroll] = jax.jit(jax.value_and_grad(lambda tr, model=model: adapter_objective(
            model.apply, tr, base, batch, jax.random.key(4), ObjectiveConfig())[0]))(trainable)
    np.testing.assert_allclose(out[L][0], out[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6), out[L][1], out[1][1])


def _checkpoint_input_shapes(unroll: int) -> list[tuple]:
    """Shapes of the inputs of every checkpoint in the jaxpr of a LoRA loss through the decoder (what a checkpoint
    takes in is what it keeps for the backward pass)."""
    acfg = AdapterConfig(method="lora", rank=4)
    model = build_model(_config(unroll), acfg)
    base = jax.eval_shape(lambda: init_params(Decoder(_config(1)), jax.random.key(0))["params"])
    trainable = jax.eval_shape(lambda: init_adapter_variables(model, jax.random.key(1)))
    tokens = jnp.zeros((2, 16), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda tr, base: jnp.sum(model.apply({"params": base, **tr}, tokens)[0]))(
        trainable, base)
    shapes = []

    def visit(jp):
        for e in jp.eqns:
            if e.primitive.name in ("checkpoint", "remat", "remat2"):
                shapes.extend(tuple(v.aval.shape) for v in e.invars)
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return shapes


def test_each_checkpoint_slices_the_stacked_weights_inside():
    """Unrolled, the checkpoints' inputs are the stacked [L, d, ffn] kernels, never one layer's [d, ffn] slice; the
    rolled loop's checkpoints take the slices (there the backward loop slices them again itself)."""
    unrolled, rolled = _checkpoint_input_shapes(L), _checkpoint_input_shapes(1)
    assert unrolled and rolled
    assert (L, D, F) in unrolled and (D, F) not in unrolled
    assert (D, F) in rolled and (L, D, F) not in rolled


def test_sampled_routing_draws_each_layer_its_own_stream(remix):
    """With a zero router every expert is equally likely: each layer picks each of the 4 experts for about a
    quarter of the 48 tokens, and the layers' picks differ (one shared key would make them identical)."""
    acfg, variables, tokens = remix
    zero = jax.tree.map(jnp.zeros_like, variables["router"])
    _, state = _apply(acfg, L, {**variables, "router": zero}, tokens, deterministic=False,
                      rngs={"routing": jax.random.key(5)})
    experts = np.asarray(state[TRACE]["layers"]["mlp"]["experts"]).reshape(L, -1)  # top_k = 1
    for layer in experts:
        counts = np.bincount(layer, minlength=4)
        assert counts.min() >= 4 and counts.max() <= 24, counts
    assert not np.array_equal(experts[0], experts[1]) and not np.array_equal(experts[1], experts[2])
