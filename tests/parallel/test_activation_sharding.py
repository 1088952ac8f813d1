"""Activation sharding constraints (parallel/logical.py ``constrain``) in the decoder, and the optimizer state's
placement.

Without an active mesh, or on a one-device mesh, the decoder's traced program has no sharding constraint at all
(the single-device path is unchanged); inside ``activation_sharding`` on 8 (fake) devices every block pins its
residual stream, q/k/v, attention output and FFN hidden units to the logical rules, and the logits are the same.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from remix_jax.models import llama
from remix_jax.models.model_config import named_config
from remix_jax.parallel import logical
from remix_jax.parallel import mesh as mesh_lib


def constraint_specs(fn, *args) -> list:
    """The PartitionSpecs of every sharding_constraint in fn's jaxpr (nested jaxprs included)."""
    specs = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "sharding_constraint":
                specs.append(eqn.params["sharding"].spec)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return specs


@pytest.fixture(scope="module")
def decoder():
    cfg = named_config("tiny")
    model = llama.Decoder(cfg)
    params = llama.init_params(model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, cfg.vocab_size)
    return model, params, tokens


def test_no_constraint_without_a_mesh_or_on_one_device(decoder):
    model, params, tokens = decoder
    x = jnp.ones((8, 16, 64))
    assert logical.constrain(x, llama.BTD) is x
    assert constraint_specs(lambda p, t: model.apply(p, t)[0], params, tokens) == []
    with logical.activation_sharding(mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])):
        assert logical.constrain(x, llama.BTD) is x
        assert constraint_specs(lambda p, t: model.apply(p, t)[0], params, tokens) == []


def test_constraints_follow_the_rules_and_keep_the_logits(decoder):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    model, params, tokens = decoder
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows = ("data", "fsdp")
    with logical.activation_sharding(mesh):
        specs = constraint_specs(lambda p, t: model.apply(p, t)[0], params, tokens)
        sharded = jax.jit(lambda p, t: model.apply(p, t)[0])(params, tokens)
    # embedding, final norm input; per block: input, q, k, v, attention output, FFN hidden
    assert specs.count(P(rows, None, None)) == 3
    assert specs.count(P(rows, None, "tensor", None)) == 4  # q, k, v (2 kv heads over tensor 2), attention out
    assert specs.count(P(rows, None, "tensor")) == 1  # FFN hidden [B, T, 128]
    assert len(specs) == 8  # the scanned block is traced once
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(model.apply(params, tokens)[0]), rtol=1e-5,
                               atol=1e-5)


def test_dims_that_do_not_divide_stay_whole():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    assert logical.activation_spec(heads, (4, 16, 8, 64), mesh) == P(("data", "fsdp"), None, "tensor", None)
    assert logical.activation_spec(heads, (3, 16, 9, 64), mesh) == P(None, None, None, None)


def test_optimizer_state_follows_the_trainable_shardings():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    import importlib.util
    import pathlib

    from remix_jax.training import loop
    from remix_jax.training import optimizer as opt_lib

    spec = importlib.util.spec_from_file_location(
        "smoke_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("remix")
    bundle = loop.build_model_bundle(config)
    tx, _ = opt_lib.make_optimizer(loop.optimizer_config(config))
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    _, sh = loop.shard_state(bundle, tx, mesh)
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(sh.trainable)[0]}
    moments = 0
    for path, s in jax.tree_util.tree_flatten_with_path(sh.opt_state)[0]:
        key = jax.tree_util.keystr(path)
        match = [p for p in by_path if key.endswith(p)]
        if match:
            moments += 1
            assert s == by_path[match[0]], key
        else:
            assert s.spec == P(), key
    assert moments == 2 * len(by_path)  # Adam's mu and nu of every adapter and router array
    assert any(s.spec != P() for s in jax.tree.leaves(sh.opt_state))
