"""Mesh construction, logical-axis rules and distributed start-up."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from remix_jax.models import llama
from remix_jax.models.config import named_config
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
