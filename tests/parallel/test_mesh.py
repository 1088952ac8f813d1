"""Mesh construction, logical-axis rules and distributed start-up."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from remix_jax.models import llama
from remix_jax.models.model_config import named_config
from remix_jax.parallel import logical
from remix_jax.parallel import mesh as mesh_lib


def test_axis_sizes():
    assert mesh_lib.resolve_axis_sizes({"data": -1}, 8) == (8, 1, 1)
    assert mesh_lib.resolve_axis_sizes({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one axis"):
        mesh_lib.resolve_axis_sizes({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="devices are available"):
        mesh_lib.resolve_axis_sizes({"data": 3}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_lib.resolve_axis_sizes({"pipeline": 2}, 8)


def test_mesh_is_auto_and_rules_place_base_params():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    model = llama.Decoder(named_config("tiny"))
    specs = llama.logical_axes(model)["params"]
    abstract = jax.eval_shape(lambda: llama.init_params(model, jax.random.key(0)))["params"]
    sh = logical.tree_shardings(abstract, specs, mesh)
    assert sh["embed"]["embedding"].spec == P("tensor", "fsdp")
    assert sh["layers"]["mlp"]["gate_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert sh["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert sh["layers"]["input_norm"]["scale"].spec == P(None, None)
    assert mesh_lib.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_fit_sharding_replicates_dims_that_do_not_divide():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    s = jax.sharding.NamedSharding(mesh, P("tensor", None))
    assert logical.fit_sharding(s, (9, 4)).spec == P(None, None)
    assert logical.fit_sharding(s, (16, 4)).spec == P("tensor", None)


def test_distributed_only_when_asked():
    assert mesh_lib.maybe_initialize_distributed({}) is False


def test_distributed_initialises_once(monkeypatch):
    calls = []
    monkeypatch.setattr(mesh_lib, "_DISTRIBUTED_STARTED", False)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    fake = lambda **kw: calls.append(kw)  # noqa: E731
    assert mesh_lib.maybe_initialize_distributed(env, initialize=fake) is True
    assert mesh_lib.maybe_initialize_distributed(env, initialize=fake) is True  # main, then the loop
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]


def test_optimizer_moments_are_sharded_like_their_parameters():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.training import loop
    from remix_jax.training import optimizer as opt_lib

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = build_model(named_config("tiny"), AdapterConfig(method="remix", num_experts=4, top_k=2, rank=4))
    variables = jax.eval_shape(lambda: init_adapter_variables(model, jax.random.key(0)))
    trainable = {k: variables[k] for k in loop.TRAINABLE}
    specs = llama.logical_axes(model)
    param_sh = {k: logical.tree_shardings(v, specs[k], mesh) for k, v in trainable.items()}
    tx, _ = opt_lib.make_optimizer(opt_lib.OptimizerConfig())
    rep = mesh_lib.replicated(mesh)
    opt_sh = logical.shardings_like_params(jax.eval_shape(tx.init, trainable), param_sh, rep)
    params = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_sh)[0]}
    moments, others = {}, []
    for path, s in jax.tree_util.tree_flatten_with_path(opt_sh)[0]:
        key = jax.tree_util.keystr(path)
        for moment in (".mu", ".nu"):
            if moment in key:
                moments[key] = (key[key.index(moment) + 3:], s)
        if ".mu" not in key and ".nu" not in key:
            others.append(s)
    assert len(moments) == 2 * len(params) == 14  # mu and nu of 6 LoRA factors and 1 router, 2 blocks stacked
    for key, (owner, s) in moments.items():
        assert s == params[owner], key
    assert any(s.spec != P() for _, s in moments.values())
    assert others and all(s == rep for s in others)  # step counts
