"""The variable tree of every method: each variable's path, shape, dtype and logical axes, enumerated here from
the documented layout (adapters/modules.py), so that checkpoints, exports and shardings keep their names."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from remix_jax.adapters import AdapterConfig, build_model
from remix_jax.adapters.adapter_config import LEARNED_ROUTER_METHODS, METHODS
from remix_jax.models.model_config import named_config

TINY = named_config("tiny")  # d 64, F 128, 4 heads (q 64), 2 kv heads (k/v 32), 2 layers, vocab 256
L, D, F, V = TINY.num_layers, TINY.hidden_size, TINY.intermediate_size, TINY.vocab_size
Q, KV = TINY.num_heads * TINY.head_dim, TINY.num_kv_heads * TINY.head_dim
N, R = 4, 3
# name: (block, d_in, d_out, input axis, output axis), as models.llama builds the projections
PROJ = {"q_proj": ("attn", D, Q, "embed", "heads"), "k_proj": ("attn", D, KV, "embed", "kv"),
        "v_proj": ("attn", D, KV, "embed", "kv"), "o_proj": ("attn", Q, D, "heads", "embed"),
        "gate_proj": ("mlp", D, F, "embed", "mlp"), "up_proj": ("mlp", D, F, "embed", "mlp"),
        "down_proj": ("mlp", F, D, "mlp", "embed")}
F32 = "float32"
# routing_stats of one site for the init batch [1, 8] (routing/diagnostics.py)
STATS = {"log_prob": (1, 8), "aux_loss": (), "ess_applied": (), "ess_softmax": (), "entropy": (), "load": (N,),
         "distinct_subsets": (), "logit_std": ()}


def base_tree() -> dict:
    """The frozen decoder's parameters (models/llama.py's docstring)."""
    tree = {("embed", "embedding"): ((V, D), ("vocab", "embed")),
            ("layers", "input_norm", "scale"): ((L, D), ("layers", "norm")),
            ("layers", "post_attn_norm", "scale"): ((L, D), ("layers", "norm")),
            ("final_norm", "scale"): ((D,), ("norm",)),
            ("lm_head",): ((D, V), ("embed", "vocab"))}
    for name, (block, d_in, d_out, ax_in, ax_out) in PROJ.items():
        tree[("layers", block, name, "kernel")] = ((L, d_in, d_out), ("layers", ax_in, ax_out))
    return {("params", *path): (shape, axes, F32) for path, (shape, axes) in tree.items()}


def expected_tree(method: str, targets: tuple[str, ...], scope: str) -> dict:
    tree = base_tree()
    for name in targets:
        block, d_in, d_out, ax_in, ax_out = PROJ[name]
        at = ("adapter", "layers", block, name)
        if method in ("lora", "rslora", "dora"):
            tree[(*at, "lora_a")] = ((L, d_in, R), ("layers", ax_in, None), F32)
            tree[(*at, "lora_b")] = ((L, R, d_out), ("layers", None, ax_out), F32)
            if method == "dora":
                tree[(*at, "magnitude_delta")] = ((L, d_out), ("layers", ax_out), F32)
            continue
        if method == "hydralora":
            tree[(*at, "lora_a")] = ((L, d_in, R), ("layers", ax_in, None), F32)
        else:
            tree[(*at, "lora_a")] = ((L, N, d_in, R), ("layers", "expert", ax_in, None), F32)
        tree[(*at, "lora_b")] = ((L, N, R, d_out), ("layers", "expert", None, ax_out), F32)
        if block == "mlp" and scope == "block":  # one routing site on the FFN input for the whole block
            site, site_in, site_axis = ("layers", "mlp"), D, "embed"
        else:  # a site of its own, reading the projection's input
            site, site_in, site_axis = ("layers", block, name), d_in, ax_in
        if method in LEARNED_ROUTER_METHODS:
            tree[("router", *site, "weight")] = ((L, site_in, N), ("layers", site_axis, "expert"), F32)
        for stat, shape in STATS.items():  # written at init, where every collection is mutable
            tree[("routing_stats", *site, stat)] = ((L, *shape), (), F32)
    return tree


def actual_tree(cfg: AdapterConfig) -> dict:
    model = build_model(TINY, cfg)
    tokens = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "routing": jax.random.key(1)}, tokens))
    specs = nn.get_partition_spec(boxed)
    leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed))[0]
    spec_of = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, tuple))[0])
    out = {}
    for path, leaf in leaves:
        key = tuple(p.key for p in path)
        out[key] = (leaf.shape, tuple(spec_of[path]), str(leaf.dtype))
    return out


CASES = [(m, t, "block") for m, t in itertools.product(METHODS, ("ffn", "all"))]
CASES += [(m, "all", "projection") for m in LEARNED_ROUTER_METHODS]
CASES += [("remix", ("q_proj", "up_proj"), "block"), ("mixlora", ("gate_proj", "down_proj"), "block")]


@pytest.mark.parametrize("method,targets,scope", CASES, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_variable_tree_of_every_method(method, targets, scope):
    cfg = AdapterConfig(method=method, targets=targets, router_scope=scope, num_experts=N, top_k=2, rank=R)
    assert actual_tree(cfg) == expected_tree(method, cfg.targets, scope)


def test_mixlora_expert_ffn_has_the_additive_forms_tree():
    """MixLoRA's expert_ffn form calls gate/up/down through base and slot_delta: the same variables."""
    cfg = AdapterConfig(method="mixlora", mixlora_form="expert_ffn", num_experts=N, top_k=2, rank=R)
    assert actual_tree(cfg) == expected_tree("mixlora", cfg.targets, "block")
