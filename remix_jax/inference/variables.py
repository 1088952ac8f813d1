"""The inference copies of an adapted model's variables, built once per generate call (never at each step).

- ``fuse_projections``: the frozen q/k/v, gate/up, o and down kernels in the "fused" collection (``models.fused``).
- ``cast_factors_for_inference``: the LoRA factors in the compute dtype.
- ``fuse_remix_inference``: ReMix's precomputed FFN matrices (``remix_ffn.remix_block_matrices``) of every layer,
  and the stacked B matrices of the decode kernels.
- ``adapter_config_of``, ``remix_precomputed_ffn``, ``foldable_norms``, ``remix_kernels_apply``: a decoder's adapter
  config and which of these apply to it (generation reads them to set up the decoder: ``Decoder.fold_norms``,
  ``Decoder.broadcast_stacked``).

The variable names read here are the adapters' checkpoint format ("adapter"/.../lora_a, lora_b, magnitude_delta;
"router"/.../weight, see ``adapters.modules``), and a decoder's adapter config is the ``adapter`` field of its FFN
class (``adapters.build_model``); nothing is imported from ``remix_jax.adapters``.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from remix_jax.inference import remix_kernels
from remix_jax.inference.remix_ffn import FFN_PROJECTIONS, remix_block_matrices, routed_layout
from remix_jax.models.fused import FUSED, STACKED, inference_layout

if TYPE_CHECKING:  # for annotations only: adapters import this package
    from remix_jax.adapters.adapter_config import AdapterConfig
    from remix_jax.models.llama import Decoder


def adapter_config_of(model: Decoder) -> AdapterConfig | None:
    """The AdapterConfig a model was built with (``adapters.build_model``: the ``adapter`` field of its FFN class),
    or None for the plain decoder."""
    cls = model.mlp_cls
    return cls.keywords.get("adapter") if isinstance(cls, functools.partial) else None


def remix_precomputed_ffn(cfg: AdapterConfig | None) -> bool:
    """Whether ``fuse_remix_inference`` builds ReMix's precomputed FFN matrices for this adapter config: ReMix
    with a block router, deterministic top-k at inference, dense expert compute and an adapted FFN projection."""
    return (cfg is not None and cfg.method == "remix" and cfg.router_scope == "block" and not cfg.sample_at_inference
            and cfg.dense_experts and any(t in FFN_PROJECTIONS for t in cfg.targets))


def foldable_norms(cfg: AdapterConfig | None) -> bool:
    """Whether the blocks' RMSNorm scales can be folded into the inference kernels (``Decoder.fold_norms``): no
    adapter reads a norm's output except through those kernels, i.e. none on q/k/v, and none on gate/up unless
    ReMix's precomputed FFN holds them."""
    if cfg is None:
        return True
    if any(t in ("q_proj", "k_proj", "v_proj") for t in cfg.targets):
        return False
    return not any(t in ("gate_proj", "up_proj") for t in cfg.targets) or remix_precomputed_ffn(cfg)


def remix_kernels_apply(cfg: AdapterConfig | None, width: int, d: int, f: int) -> bool:
    """Whether ReMix's decode kernels can run this adapter: the precomputed FFN (remix_gate_up with ``width``
    output columns) with gate, up and down all adapted, in a layout ``remix_kernels.supported`` takes."""
    return (remix_precomputed_ffn(cfg) and set(FFN_PROJECTIONS) <= set(cfg.targets)
            and remix_kernels.supported(routed_layout(cfg, width, d, f)))


def fuse_remix_inference(variables: dict, adapter_cfg: AdapterConfig | None, dtype, fold_norms: bool = False,
                         kernels: bool = False) -> dict:
    """``variables`` plus, for ReMix's block-routed FFN, every layer's ``remix_block_matrices`` [L, ...] built
    once (per generate call) in the "fused" collection under layers/mlp, in ``inference_layout`` [L, out, in]
    (with ``fold_norms`` the post-attention norm's scale folded into the rows of everything reading the FFN
    input), so that each decode step runs ``remix_ffn_fused``: the frozen FFN kernels, the experts' A and B and
    the router joined into four matrices. The fused gate_up_kernel and down_kernel of ``fuse_projections`` are
    dropped (remix_gate_up and remix_down hold them). Costs memory for a copy of the FFN kernels while the
    result is alive (one generate call). Other methods: ``variables`` as is.

    kernels: also every layer's gate/up B [L, 2, F, n r] and down B [L, d, n r] whole in the STACKED collection
    (layers/mlp/b_gate_up, b_down) for ReMix's decode kernels (``remix_ffn.remix_ffn_kernels``; the model needs
    ``Decoder.broadcast_stacked``), when ``remix_kernels_apply``.
    """
    cfg = adapter_cfg
    if not remix_precomputed_ffn(cfg):
        return variables
    params = variables["params"]["layers"]["mlp"]  # the SwiGLU projections have no biases
    ffn_kernels = {name: params[name]["kernel"] for name in FFN_PROJECTIONS}
    adapters = variables["adapter"]["layers"]["mlp"]
    factors = {name: (adapters[name]["lora_a"], adapters[name]["lora_b"])
               for name in FFN_PROJECTIONS if name in cfg.targets}
    w = variables["router"]["layers"]["mlp"]["weight"]  # [L, d, n]
    if fold_norms:  # everything that reads the FFN input gets the post-attention norm's scale on its rows
        scale = variables["params"]["layers"]["post_attn_norm"]["scale"].astype(jnp.float32)  # [L, d]
        for name in ("gate_proj", "up_proj"):
            ffn_kernels[name] = scale[:, :, None] * ffn_kernels[name].astype(jnp.float32)
            if name in factors:
                a, b = factors[name]
                factors[name] = (scale[:, None, :, None] * a.astype(jnp.float32), b)
        w = scale[:, :, None] * w.astype(jnp.float32)
    fused = jax.vmap(lambda k, f, w_l: remix_block_matrices(k, f, w_l, cfg, dtype))(ffn_kernels, factors, w)
    fused = {name: inference_layout(m) for name, m in fused.items()}
    old = variables.get(FUSED, {})
    layers = dict(old.get("layers", {}))
    mlp = {k: v for k, v in layers.get("mlp", {}).items() if k not in ("gate_up_kernel", "down_kernel")}
    layers["mlp"] = {**mlp, **fused}
    out = {**variables, FUSED: {**old, "layers": layers}}
    d, f = ffn_kernels["gate_proj"].shape[1:]
    if kernels and remix_kernels_apply(cfg, fused["remix_gate_up"].shape[1], d, f):
        out[STACKED] = {"layers": {"mlp": {"b_gate_up": fused["remix_b_gate_up"], "b_down": fused["remix_b_down"]}}}
    return out


def cast_factors_for_inference(variables: dict, dtype) -> dict:
    """``variables`` with the LoRA factors (lora_a / lora_b of the "adapter" collection) stored in the compute
    dtype, for decoding: each use casts them to the compute dtype anyway, so casting once per call instead of
    once per step changes no result. DoRA sites (holding magnitude_delta) combine their factors in float32
    and are left as they are; routers and the base are untouched."""
    dtype = jnp.dtype(dtype)
    if "adapter" not in variables or dtype == jnp.float32:
        return variables

    def walk(node):
        if not isinstance(node, Mapping) or "magnitude_delta" in node:
            return node
        return {k: v.astype(dtype) if k in ("lora_a", "lora_b") and hasattr(v, "astype") else walk(v)
                for k, v in node.items()}

    return {**variables, "adapter": walk(dict(variables["adapter"]))}


def fuse_projections(variables: dict, dtype=None, fold_norms: bool = False) -> dict:
    """``variables`` plus a "fused" collection for inference, every matrix in ``inference_layout`` ([L, out, in])
    and cast to ``dtype`` when given: per layer, the q/k/v kernels concatenated along the output axis
    (layers/attn/qkv_kernel [L, (H + 2 KV) hd, d], and qkv_bias with attention biases), the gate/up kernels
    (layers/mlp/gate_up_kernel [L, 2 F, d]), and the o and down kernels (o_kernel [L, d, H hd], down_kernel
    [L, d, F]).

    The decoder then computes q, k, v (and gate, up) with one matmul each instead of three (two), the
    same products (each output column is the same dot product), plus each projection's own adapter delta, and
    reads every kernel in the layout that suits single-token decoding. Projections whose output is not base +
    delta (DoRA) fall back to their own kernels. Costs memory for a copy of the layer weights while it is alive
    (one generate call).

    fold_norms: the rows of each fused kernel multiplied by the scale of the RMSNorm before it (input_norm
    for q/k/v, post_attn_norm for gate/up), for a ``Decoder(fold_norms=True)``; valid only when no adapter
    adds a delta to q/k/v or gate/up (``foldable_norms``).
    """
    layers = variables["params"]["layers"]
    attn, mlp = layers["attn"], layers["mlp"]
    cast = (lambda a: a.astype(dtype)) if dtype is not None else (lambda a: a)

    def folded(kernel, norm):  # [L, d, f] * scale [L, d] along d, in float32
        if not fold_norms:
            return kernel
        return layers[norm]["scale"].astype(jnp.float32)[:, :, None] * kernel.astype(jnp.float32)

    def layout(kernel):
        return inference_layout(cast(kernel))

    names = ("q_proj", "k_proj", "v_proj")
    qkv = jnp.concatenate([attn[n]["kernel"] for n in names], axis=-1)
    fused_attn = {"qkv_kernel": layout(folded(qkv, "input_norm")), "o_kernel": layout(attn["o_proj"]["kernel"])}
    if all("bias" in attn[n] for n in names):
        fused_attn["qkv_bias"] = cast(jnp.concatenate([attn[n]["bias"] for n in names], axis=-1))
    gate_up = jnp.concatenate([mlp["gate_proj"]["kernel"], mlp["up_proj"]["kernel"]], axis=-1)
    fused_mlp = {"gate_up_kernel": layout(folded(gate_up, "post_attn_norm")),
                 "down_kernel": layout(mlp["down_proj"]["kernel"])}
    return {**variables, FUSED: {"layers": {"attn": fused_attn, "mlp": fused_mlp}}}
