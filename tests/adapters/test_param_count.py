"""adapters.param_count: trainable and per-token active parameters of every method on the tiny model, against
counts written out by hand from the projections' shapes; the expert axis it counts along is the one the variables
declare "expert"; trees that do not hold what the method stores are refused."""

import types

import flax.linen as nn
import jax
import pytest

from remix_jax.adapters import AdapterConfig, AdapterConfigError, build_model, init_adapter_variables
from remix_jax.adapters.adapter_config import METHODS, TOP_K_METHODS
from remix_jax.adapters.param_count import DENSE, EXPERT_AXIS, TOP_K, param_counts
from remix_jax.models import llama
from remix_jax.models.model_config import named_config

TINY = named_config("tiny")
L = 2  # the tiny model: hidden 64, FFN 128, 4 heads of 16 (q 64), 2 kv heads (k/v 32), 2 layers
DIMS = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
        "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}
FFN = ("gate_proj", "up_proj", "down_proj")
N, K, R = 4, 2, 3


def by_hand(method: str, targets: tuple[str, ...], scope: str = "block") -> tuple[int, int]:
    """(trainable, active) from the layouts of adapters/modules.py, projection by projection."""
    lora = sum(R * (i + o) for i, o in (DIMS[t] for t in targets))  # A [in, r] + B [r, out]
    if method in ("lora", "rslora"):
        return L * lora, L * lora
    if method == "dora":  # + the magnitude vector [out]
        total = L * (lora + sum(DIMS[t][1] for t in targets))
        return total, total
    if method == "hydralora":  # one A [in, r], n heads B [r, out]
        experts = L * sum(R * i + N * R * o for i, o in (DIMS[t] for t in targets))
    else:  # n experts A [in, r] and B [r, out]
        experts = L * N * lora
    router = 0
    if method != "uniform_random":  # learned routers: [d_in, n] per routing site and layer
        ffn_targets = [t for t in targets if t in FFN]
        own = [t for t in targets if scope == "projection" or t not in FFN]
        router = L * N * (64 * (scope == "block" and bool(ffn_targets)) + sum(DIMS[t][0] for t in own))
    if method in ("remix", "mixlora", "uniform_random"):
        return experts + router, router + experts * K // N
    return experts + router, experts + router


def _trainable(cfg: AdapterConfig, abstract: bool = False):
    model = build_model(TINY, cfg)
    init = lambda key: init_adapter_variables(model, key)  # noqa: E731
    return jax.eval_shape(init, jax.random.key(0)) if abstract else init(jax.random.key(0))


CASES = [(m, ("all",), "block") for m in METHODS] + [
    (m, FFN, "block") for m in ("remix", "mixlora", "hydralora")] + [
    (m, ("q_proj", "down_proj"), "projection") for m in ("remix", "mixlora", "softmax_dense")]


@pytest.mark.parametrize("method,targets,scope", CASES)
def test_counts_match_the_hand_count(method, targets, scope):
    cfg = AdapterConfig(method=method, targets=targets, num_experts=N, top_k=K, rank=R, router_scope=scope)
    trainable, active = by_hand(method, cfg.targets, scope)
    got = param_counts(_trainable(cfg, abstract=True), cfg)
    assert got == {"trainable": trainable, "active": active}
    # the arrays themselves count the same as their shapes, and every leaf is counted once
    tree = _trainable(cfg)
    assert param_counts(tree, cfg) == got
    assert got["trainable"] == sum(x.size for x in jax.tree.leaves(tree))


def test_top_k_active_is_router_plus_k_of_n_experts():
    """ReMix on the FFN, n=4, k=2, r=3: experts 2 layers x 4 x 3 x (192 + 192 + 192), router 2 x 64 x 4."""
    experts, router = 2 * 4 * 3 * (192 + 192 + 192), 2 * 64 * 4
    for method in ("remix", "mixlora"):
        cfg = AdapterConfig(method=method, targets=FFN, num_experts=4, top_k=2, rank=3)
        assert param_counts(_trainable(cfg, abstract=True), cfg) == {
            "trainable": experts + router, "active": router + experts // 2}
    cfg = AdapterConfig(method="mixlora", targets=FFN, num_experts=4, top_k=2, rank=3, mixlora_form="expert_ffn")
    assert param_counts(_trainable(cfg, abstract=True), cfg)["active"] == router + experts // 2


@pytest.mark.parametrize("method", TOP_K)
def test_the_counted_axis_is_the_declared_expert_axis(method):
    cfg = AdapterConfig(method=method, targets="all", num_experts=N, top_k=K, rank=R)
    specs = llama.logical_axes(build_model(TINY, cfg))["adapter"]
    names = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert names and all(tuple(s)[EXPERT_AXIS] == "expert" for s in names)


def test_every_method_has_a_rule():
    assert sorted(DENSE + TOP_K) == sorted(METHODS) and set(TOP_K) == set(TOP_K_METHODS)
    with pytest.raises(AdapterConfigError, match="no parameter-count rule for 'moe_new'"):
        param_counts({"adapter": {}, "router": {}}, types.SimpleNamespace(method="moe_new", num_experts=4, top_k=2))


def test_trees_the_method_does_not_store_are_refused():
    cfg = AdapterConfig(method="remix", targets=FFN, num_experts=N, top_k=K, rank=R)
    tree = _trainable(cfg, abstract=True)
    with pytest.raises(ValueError, match=r"adapter/layers/mlp/down_proj/lora_a: shape \(2, 4, 128, 3\) has no expert "
                                         r"axis of n=8"):
        param_counts(tree, cfg.replace(num_experts=8))
    bad = jax.tree.map(lambda x: x, tree)
    bad["adapter"]["layers"]["mlp"]["gate_proj"]["magnitude_delta"] = jax.ShapeDtypeStruct((2, 128), "float32")
    with pytest.raises(ValueError, match="gate_proj/magnitude_delta: not a variable that method 'remix' stores"):
        param_counts(bad, cfg)
    uniform = AdapterConfig(method="uniform_random", targets=FFN, num_experts=N, top_k=K, rank=R)
    with pytest.raises(ValueError, match="router/layers/mlp/weight: method 'uniform_random' has no such router"):
        param_counts(tree, uniform)
    with pytest.raises(ValueError, match=r"unknown collection\(s\) \['params'\]"):
        param_counts({**tree, "params": {}}, cfg)


def test_boxed_leaves_count_as_their_values():
    cfg = AdapterConfig(method="dora", targets=FFN, rank=R)
    model = build_model(TINY, cfg)
    boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jax.numpy.zeros((1, 8), "int32")))
    assert any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(
        boxed["adapter"], is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    assert param_counts({"adapter": boxed["adapter"], "router": {}}, cfg) == dict(
        zip(("trainable", "active"), by_hand("dora", FFN), strict=True))
