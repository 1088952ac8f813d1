"""Where each adapted projection lives: in our trees and under the module names transformers uses.

Ours (L = num_layers, stacked by the layer scan; kernels [in, out]):
    params/layers/{attn,mlp}/NAME/kernel      [L, d_in, d_out]
    adapter/layers/{attn,mlp}/NAME/...        lora_a, lora_b (+ magnitude_delta), see adapters/modules.py
    router/layers/mlp/weight                  [L, d, n]     block router (router_scope="block", FFN targets)
    router/layers/{attn,mlp}/NAME/weight      [L, d_in, n]  a projection's own router
transformers (LlamaForCausalLM / Qwen2ForCausalLM; weights [out, in]):
    model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.mlp.{gate,up,down}_proj
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from remix_jax.adapters.adapter_config import ATTN_PROJECTIONS, FFN_PROJECTIONS

GROUP = {**{name: "attn" for name in ATTN_PROJECTIONS}, **{name: "mlp" for name in FFN_PROJECTIONS}}
HF_PARENT = {"attn": "self_attn", "mlp": "mlp"}


def hf_module(layer: int, name: str) -> str:
    """transformers' module name of projection ``name`` in block ``layer``: model.layers.3.mlp.gate_proj."""
    return f"model.layers.{layer}.{HF_PARENT[GROUP[name]]}.{name}"


def site(tree: Mapping[str, Any], name: str) -> Any:
    """The node of projection ``name`` under layers/{attn,mlp}/ of a params, adapter or router tree."""
    return tree["layers"][GROUP[name]][name]


def set_site(tree: dict, name: str, value: Any) -> None:
    tree.setdefault("layers", {}).setdefault(GROUP[name], {})[name] = value


def base_kernel(params: Mapping[str, Any], name: str) -> Any:
    """The frozen kernel [L, d_in, d_out] of projection ``name``."""
    return site(params, name)["kernel"]


def block_router(cfg) -> bool:
    """Whether the FFN projections share one router per block reading the FFN input (AdaptedMLP)."""
    return cfg.routed and cfg.router_scope == "block" and any(t in FFN_PROJECTIONS for t in cfg.targets)


def has_own_router(cfg, name: str) -> bool:
    """Whether projection ``name`` routes its own input with its own router weight (AdaptedProjection)."""
    return cfg.has_router_weights and name in cfg.targets and not (name in FFN_PROJECTIONS and block_router(cfg))
