"""ReMix's deterministic top-k FFN at inference, with as few kernels as the routing allows.

At inference ReMix selects the top-k experts of the router logits z = x W_r and gives each the constant weight
omega (docs/method.md §2.4), so a block's routed SwiGLU FFN is

    gate = x W_gate + (x A_all * pi) B_all    (A_all [d, n r]: the experts' A side by side; pi repeated r times)
    up   = x W_up   + (x A_all * pi) B_all    (each projection with its own factors; the same pi)
    FFN  = h W_down + (h A_all * pi) B_all,   h = silu(gate) * up

Three forms compute it, each giving the same products as the per-step reference path of
``adapters.modules.AdaptedMLP.routed_ffn`` (float32 accumulation, the same roundings, so the same tokens):

- ``remix_inference_front``: the router logits and every x A_all in ONE matmul (any call, no precomputation);
- ``remix_ffn_fused``: four matrices built once per generate call (``remix_block_matrices``, stored by
  ``inference.variables.fuse_remix_inference``), two wide matmuls plus one per routed B product;
- the decode kernels (``inference.remix_kernels``): ``remix_ffn_fused``'s routed halves as two Pallas kernels for
  calls of at most ``remix_kernels.MAX_TOKENS`` tokens.

``precomputed_ffn`` is the hook ``AdaptedMLP`` calls: it picks the kernels or ``remix_ffn_fused`` when the
precomputed matrices are in the module's collections. This package imports nothing from ``remix_jax.adapters``
(which calls it): the adapter config is read through its fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from remix_jax.inference import remix_kernels
from remix_jax.models.fused import FUSED, STACKED, inference_product
from remix_jax.models.llama import add_residual
from remix_jax.routing.routers import remix_inference_weights

if TYPE_CHECKING:  # for annotations only: adapters import this module
    from remix_jax.adapters.adapter_config import AdapterConfig

Array = jax.Array

FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # models.llama.MLP's projections, the matrices' order
REMIX_BLOCK_MATRICES = ("remix_gate_up", "remix_b_gate_up", "remix_down", "remix_b_down")


def a_all(a: Array) -> Array:
    """A_all: the experts' A factors side by side, a [n, d_in, r] -> [d_in, n*r] (expert-major columns, the layout
    of ``adapters.moe.stacked_a``, whose B_all is b.reshape(n*r, d_out))."""
    n, d_in, r = a.shape
    return jnp.transpose(a, (1, 0, 2)).reshape(d_in, n * r)


def remix_inference_front(x: Array, w: Array, a_factors: list[Array], cfg: AdapterConfig,
                          dtype) -> tuple[Array, list[Array]]:
    """Router logits and every x A_all of one input in ONE matmul, then ReMix's top-k weights.

    x [..., d]; w [d, n] (router); a_factors: [n, d, r] each. The router weight and the stacked A factors are
    concatenated along the output axis and multiplied in router_dtype (the router's own precision). The A
    factors are first rounded to ``dtype`` as in the reference path (x @ A.astype(dtype)), so the A columns
    are the same products accumulated at least as precisely, then cast to ``dtype``. Top-k by pairwise
    comparison (no sort). Returns pi [..., n] float32 (omega on the selected experts, else 0) and
    h = x A_all [..., n*r] per factor, in ``dtype``.
    """
    n, rdt = cfg.num_experts, jnp.dtype(cfg.router_dtype)
    mats = [w.astype(rdt)] + [a_all(a).astype(dtype).astype(rdt) for a in a_factors]
    z = jnp.einsum("...d,dm->...m", x.astype(rdt), jnp.concatenate(mats, axis=1))
    pi = remix_inference_weights(z[..., :n].astype(jnp.float32), cfg.top_k, cfg.omega_value())
    hs, start = [], n
    for a in a_factors:
        width = a.shape[0] * a.shape[2]
        hs.append(z[..., start:start + width].astype(dtype))
        start += width
    return pi, hs


def router_parts(w: Array, dtype) -> list[Array]:
    """The router weight [d, n] as matrices of ``dtype`` whose sum is w: w itself when ``dtype`` holds it,
    else w rounded to ``dtype`` and the rounding error (bf16 hi + lo: about 16 significant bits, more than
    the TF32 a GPU uses for a float32 matmul by default)."""
    dtype = jnp.dtype(dtype)
    hi = w.astype(dtype)
    if jnp.finfo(dtype).bits >= jnp.finfo(w.dtype).bits:
        return [hi]
    return [hi, (w - hi.astype(w.dtype)).astype(dtype)]


def remix_block_matrices(kernels: Mapping[str, Array], factors: Mapping[str, tuple[Array, Array]], w: Array,
                         cfg: AdapterConfig, dtype) -> dict[str, Array]:
    """The matrices of ReMix's fused inference FFN (``remix_ffn_fused``) for one block, in ``dtype``.

    kernels: the frozen gate/up/down kernels; factors: (lora_a [n, d_in, r], lora_b [n, r, d_out]) of each
    adapted FFN projection; w: the block router [d, n]. With s of gate/up adapted (front = in that order):
        remix_gate_up    [d, 2F + s*n*r + P*n]  W_gate | W_up | A_all of the front | router parts (P of them)
        remix_b_gate_up  [2, n*r, F]            gate's and up's B_all stacked, when both are adapted (s = 2);
                         [n*r, 2F]              when one is: its B_all under its own F columns, zeros elsewhere
        remix_down       [F, d (+ n*r)]         W_down (| A_all of down_proj when adapted)
        remix_b_down     [n*r, d]               B_all of down_proj (when adapted)
    """
    dtype = jnp.dtype(dtype)
    f = kernels["gate_proj"].shape[1]
    front = [name for name in ("gate_proj", "up_proj") if name in factors]
    first = [kernels["gate_proj"], kernels["up_proj"]] + [a_all(factors[n][0]) for n in front]
    out = {"remix_gate_up": jnp.concatenate([m.astype(dtype) for m in first] + router_parts(w, dtype), axis=1)}
    b_alls = {name: factors[name][1].reshape(-1, f).astype(dtype) for name in front}
    if len(front) == 2:  # one batched product for both (half the bytes of a block matrix with zeros)
        out["remix_b_gate_up"] = jnp.stack([b_alls["gate_proj"], b_alls["up_proj"]])
    elif front:
        b_all = b_alls[front[0]]
        zero = jnp.zeros_like(b_all)
        out["remix_b_gate_up"] = jnp.concatenate([b_all, zero] if front[0] == "gate_proj" else [zero, b_all], axis=1)
    if "down_proj" in factors:
        a, b = factors["down_proj"]
        out["remix_down"] = jnp.concatenate([kernels["down_proj"].astype(dtype), a_all(a).astype(dtype)], 1)
        out["remix_b_down"] = b.reshape(a.shape[0] * a.shape[2], -1).astype(dtype)
    else:
        out["remix_down"] = kernels["down_proj"].astype(dtype)
    return out


def remix_ffn_fused(x: Array, mats: Mapping[str, Array], cfg: AdapterConfig, dtype,
                    row_scale: Array | None = None) -> Array:
    """ReMix's deterministic top-k SwiGLU FFN from ``remix_block_matrices`` (each in ``inference_layout``,
    [out, in], as ``fuse_remix_inference`` stores them): x [..., d] -> [..., d].

    Two wide matmuls carry everything that reads the same input: x [W_gate | W_up | A_all | router] gives the
    frozen gate/up products, the experts' hidden states and the router logits at once, and
    h [W_down | A_all of down] the frozen down product and down's expert hidden state; the routed terms are
    then one matmul each, (x A_all * pi) B_all. The same products as the per-step path (float32 accumulation,
    frozen products rounded to ``dtype``), so the same tokens. row_scale [..., 1]: x is the un-normalised input
    and the norm's scale is folded into remix_gate_up (``fuse_remix_inference(fold_norms=True)``); the rows of
    the first product's parts are multiplied by it (the top-k is unchanged by a positive row factor, so the
    router logits are used unscaled).

    Written so that XLA launches as few kernels as it can for the routing: each part of the first product is
    scaled where it is read (no scaled copy of the whole product), and the top-k weights are derived twice by
    two formulas of the same rank (``sampler.ascending_rank``), so that each can fuse into the kernel that
    weights the hidden states it scales (what XLA does on an H200 at batch 16; at batch 1 it computes both in one
    small kernel of their own, docs/notes/benchmarks-log.md generation run J).
    """
    dtype = jnp.dtype(dtype)
    n, r = cfg.num_experts, cfg.rank
    w1 = mats["remix_gate_up"]
    f = mats["remix_down"].shape[1]
    y = inference_product(x, w1, dtype, jnp.float32)
    scaled = (lambda part: part) if row_scale is None else (lambda part: part * row_scale)
    b_gu = mats.get("remix_b_gate_up")  # [2, F, n*r] (gate and up adapted) or [2F, n*r] (one of them)
    width_a = 0 if b_gu is None else b_gu.shape[-1] * (b_gu.shape[0] if b_gu.ndim == 3 else 1)
    start = 2 * f + width_a
    z = sum(y[..., i:i + n] for i in range(start, w1.shape[0], n))

    def pi_cols(from_below: bool) -> Array:  # [..., n*r]: each expert's weight over its r columns
        pi = remix_inference_weights(z, cfg.top_k, cfg.omega_value(), from_below)
        return jnp.repeat(pi.astype(dtype), r, axis=-1)

    gu = scaled(y[..., :2 * f]).astype(dtype)
    if width_a:
        h = scaled(y[..., 2 * f:start]).astype(dtype)
        h = h * jnp.tile(pi_cols(False), (1,) * (h.ndim - 1) + (width_a // (n * r),))
        if b_gu.ndim == 3:  # gate's and up's routed terms in one batched product
            hs = h.reshape(*h.shape[:-1], 2, width_a // 2)
            delta = jnp.einsum("...sm,sfm->...sf", hs, b_gu.astype(dtype)).reshape(*h.shape[:-1], 2 * f)
        else:
            delta = inference_product(h, b_gu, dtype)
        gu = gu + delta
    hidden = nn.silu(gu[..., :f]) * gu[..., f:]
    y2 = inference_product(hidden, mats["remix_down"], dtype)
    if "remix_b_down" not in mats:
        return y2
    d = mats["remix_b_down"].shape[0]
    return y2[..., :d] + inference_product(y2[..., d:] * pi_cols(True), mats["remix_b_down"], dtype)


def routed_layout(cfg: AdapterConfig, width: int, d: int, f: int, eps: float = 0.0) -> remix_kernels.RoutedLayout:
    """The ``remix_kernels`` layout of a block whose remix_gate_up has ``width`` output columns."""
    n, r = cfg.num_experts, cfg.rank
    return remix_kernels.RoutedLayout(d=d, f=f, n=n, r=r, k=cfg.top_k, omega=cfg.omega_value(),
                                      parts=(width - 2 * f - 2 * n * r) // n, eps=eps)


def remix_ffn_kernels(mlp: nn.Module, x: Array, cfg: AdapterConfig, dtype, residual: Array,
                      layer: Array) -> Array:
    """residual + ReMix's FFN(x) [..., d] by the decode kernels (``remix_kernels``): x [..., d] is the
    un-normalised block input (folded norms), the module holds remix_gate_up / remix_down in its "fused"
    collection and every layer's B matrices in the "stacked" one (``fuse_remix_inference(kernels=True)``), read
    at ``layer``. Pallas's interpreter off GPUs (tests)."""
    lead, d = x.shape[:-1], x.shape[-1]
    m = math.prod(lead)
    w1, w2 = mlp.get_variable(FUSED, "remix_gate_up"), mlp.get_variable(FUSED, "remix_down")
    lay = routed_layout(cfg, w1.shape[0], d, w2.shape[1], mlp.config.rms_norm_eps)
    interpret = jax.default_backend() != "gpu"
    x2 = x.reshape(m, d)
    y = inference_product(x2, w1, dtype, jnp.float32)
    hidden = remix_kernels.routed_front(y, x2, mlp.get_variable(STACKED, "b_gate_up"), layer, lay, dtype,
                                        interpret=interpret)
    y2 = remix_kernels.down_product(hidden, w2, dtype)
    out = remix_kernels.routed_back(y, y2, residual.reshape(m, d), mlp.get_variable(STACKED, "b_down"), layer,
                                    lay, dtype, interpret=interpret)
    return out.reshape(*lead, d)


def precomputed_ffn(mlp: nn.Module, x: Array, cfg: AdapterConfig, dtype, row_scale: Array | None = None,
                    residual: Array | None = None, layer: Array | None = None) -> Array | None:
    """residual + ReMix's FFN(x) [..., d] from the matrices ``fuse_remix_inference`` put in the FFN module's
    collections, or None when it holds none (the caller's unfused path applies).

    The decode kernels (``remix_ffn_kernels``) when the module also holds the stacked B matrices, x is the
    un-normalised input (row_scale given), the residual and the layer are given and the call has at most
    ``remix_kernels.MAX_TOKENS`` tokens (a decode step of a small batch); else ``remix_ffn_fused`` (XLA).
    """
    if not mlp.has_variable(FUSED, "remix_gate_up"):
        return None
    m = math.prod(x.shape[:-1])
    if (row_scale is not None and residual is not None and layer is not None and m <= remix_kernels.MAX_TOKENS
            and mlp.has_variable(STACKED, "b_gate_up")):
        return remix_ffn_kernels(mlp, x, cfg, dtype, residual, layer)
    mats = {name: mlp.get_variable(FUSED, name) for name in REMIX_BLOCK_MATRICES if mlp.has_variable(FUSED, name)}
    return add_residual(residual, remix_ffn_fused(x, mats, cfg, dtype, row_scale))
