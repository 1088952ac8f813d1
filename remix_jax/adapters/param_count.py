"""How many parameters a run trains, and how many of them one token uses (``param_counts``).

Read from the trainable tree {"adapter": ..., "router": ...} as ``init_adapter_variables`` builds it (arrays or
``jax.ShapeDtypeStruct`` leaves of ``jax.eval_shape``: only shapes are read), laid out as modules.py says:

    lora/rslora       lora_a [..., d_in, r], lora_b [..., r, d_out]
    dora              + magnitude_delta [..., d_out]
    routed methods    lora_a [..., n, d_in, r], lora_b [..., n, r, d_out]; router weight [..., d_in, n]
    hydralora         lora_a [..., d_in, r] (shared), lora_b [..., n, r, d_out]

("..." is the layer axis L of the scanned decoder). Active parameters are those one token's forward pass uses:
every parameter for a single LoRA and for the dense mixtures (HydraLoRA, softmax_dense weigh all n experts); for
the top-k mixtures (ReMix, MixLoRA, uniform_random) the router (its logits are computed for every token) and k
of the n experts of every expert array, counted along its expert axis (axis -3, checked to have n entries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from remix_jax.adapters.adapter_config import AdapterConfigError

# Every method and how one token uses its experts; a method missing here cannot be counted (a new adapter kind
# must say which it is: tests/adapters/test_param_count.py checks this table covers adapter_config.METHODS).
DENSE = ("lora", "rslora", "dora", "hydralora", "softmax_dense")  # every parameter, every token
TOP_K = ("remix", "mixlora", "uniform_random")  # the router and k of n experts per token
ADAPTER_LEAVES = {"lora_a", "lora_b", "magnitude_delta"}
EXPERT_AXIS = -3  # of lora_a [n, d_in, r] and lora_b [n, r, d_out]


def leaf_shapes(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{prefix + "layers/mlp/gate_proj/lora_a": shape} of every leaf of ``tree`` (the safetensors naming of
    ``training.checkpointing.flatten_tree``); boxed (logically partitioned) leaves are read through their value."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))[0]:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[prefix + name] = tuple(int(s) for s in leaf.shape)
    return out


def param_counts(trainable: Mapping[str, Any], adapter_cfg) -> dict[str, int]:
    """{"trainable": every adapter and router parameter, "active": those used for one token} (module docstring).

    trainable: {"adapter": tree, "router": tree} (router {} for methods without router weights).
    adapter_cfg: an AdapterConfig (method, num_experts n, top_k k are read).
    Raises AdapterConfigError for a method without a counting rule and ValueError for a tree that does not hold
    what the method stores (an unknown variable, an expert axis of the wrong size, router weights where the
    method has none), naming the leaf.
    """
    method, n, k = adapter_cfg.method, int(adapter_cfg.num_experts), int(adapter_cfg.top_k)
    if method not in DENSE + TOP_K:
        raise AdapterConfigError(f"adapter config key 'method': no parameter-count rule for {method!r}; "
                                 f"known: {', '.join(DENSE + TOP_K)}")
    unknown = sorted(set(trainable) - {"adapter", "router"})
    if unknown:
        raise ValueError(f"trainable tree: unknown collection(s) {unknown}; expected 'adapter' and 'router'")
    trainable_count = active = 0
    for name, shape in leaf_shapes(trainable.get("adapter", {}), "adapter/").items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf not in ADAPTER_LEAVES or (leaf == "magnitude_delta" and method != "dora"):
            raise ValueError(f"{name}: not a variable that method {method!r} stores (adapters/modules.py)")
        size = math.prod(shape)
        trainable_count += size
        if method in TOP_K:  # lora_a and lora_b both have the expert axis here
            if len(shape) < 3 or shape[EXPERT_AXIS] != n:
                raise ValueError(f"{name}: shape {shape} has no expert axis of n={n} at axis {EXPERT_AXIS}")
            active += size // n * k
        else:
            active += size
    for name, shape in leaf_shapes(trainable.get("router", {}), "router/").items():
        if not name.endswith("/weight") or not adapter_cfg.has_router_weights:
            raise ValueError(f"{name}: method {method!r} has no such router variable (adapters/modules.py)")
        if shape[-1] != n:
            raise ValueError(f"{name}: shape {shape} does not end in n={n} experts")
        size = math.prod(shape)
        trainable_count += size
        active += size
    return {"trainable": trainable_count, "active": active}
