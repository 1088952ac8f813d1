"""How adapters attach to the frozen decoder: replacement projection and FFN modules.

``build_model(model_cfg, adapter_cfg)`` returns a ``Decoder`` whose ``proj_cls``/``mlp_cls`` are the classes
below. Base parameter names are unchanged ("params"); adapters add three collections:
    adapter        LoRA factors lora_a / lora_b (+ DoRA magnitude_delta), stacked [L, ...] by the scan
    router         router weight [L, d_in, n] (float32), only for learned routers
    routing_stats  diagnostics and log Q, written when the collection is mutable (see routing/diagnostics.py)

Per adapted projection (n experts, rank r):
    lora/rslora      lora_a [d_in, r], lora_b [r, d_out]
    dora             + magnitude_delta [d_out]
    remix/mixlora/softmax_dense/uniform_random   lora_a [n, d_in, r], lora_b [n, r, d_out]
    hydralora        lora_a [d_in, r] (shared), lora_b [n, r, d_out]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from remix_jax.adapters import lora as lora_math
from remix_jax.adapters import moe, remix_kernels
from remix_jax.adapters.config import FFN_PROJECTIONS, AdapterConfig, validate_adapter_config
from remix_jax.models.llama import (
    FUSED,
    MLP,
    PROJ_OUT,
    STACKED,
    Decoder,
    Projection,
    add_residual,
    fused_products,
    inference_layout,
    inference_product,
)
from remix_jax.routing.diagnostics import routing_diagnostics
from remix_jax.routing.routers import RouterOutput, load_balancing_loss, remix_inference_weights, route

Array = jax.Array
ADAPTER_DTYPE = jnp.float32  # trainable factors are kept in float32 whatever the base dtype


def _adapter_var(module: nn.Module, name: str, init, shape: tuple, axes: tuple) -> Array:
    boxed = nn.with_logical_partitioning(init, axes)
    make = lambda: boxed(module.make_rng("params"), shape, ADAPTER_DTYPE)
    return module.variable("adapter", name, make).value


def router_weight(module: nn.Module, cfg: AdapterConfig, d: int, in_axis: str) -> Array:
    """The site's router weight [d, n] in the "router" collection (created at init, dtype router_dtype)."""
    std = cfg.router_init_std if cfg.router_init_std is not None else 0.1 / d ** 0.5
    rdt = jnp.dtype(cfg.router_dtype)
    init = nn.with_logical_partitioning(nn.initializers.normal(std), (in_axis, "expert"))
    return module.variable("router", "weight",
                           lambda: init(module.make_rng("params"), (d, cfg.num_experts), rdt)).value


def remix_fast_inference(module: nn.Module, cfg: AdapterConfig, deterministic: bool) -> bool:
    """Whether a remix site may take the fused inference path (``remix_inference_front``, ``remix_ffn_fused``).

    That is ReMix's deterministic top-k with dense expert compute, outside init, with "routing_stats" not
    mutable (no diagnostics or log Q are written, as in generation): nothing but the mixture is needed.
    """
    return (cfg.method == "remix" and deterministic and not cfg.sample_at_inference
            and moe.resolve_compute(cfg.expert_compute) == "dense"
            and not module.is_initializing() and not module.is_mutable_collection("routing_stats"))


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
    mats = [w.astype(rdt)] + [moe.stacked_a(a).astype(dtype).astype(rdt) for a in a_factors]
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
    first = [kernels["gate_proj"], kernels["up_proj"]] + [moe.stacked_a(factors[n][0]) for n in front]
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
        out["remix_down"] = jnp.concatenate([kernels["down_proj"].astype(dtype), moe.stacked_a(a).astype(dtype)], 1)
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
    small kernel of their own, docs/benchmarks.md run J).
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


def route_site(module: nn.Module, x: Array, token_mask: Array | None, deterministic: bool,
               cfg: AdapterConfig, in_axis: str) -> RouterOutput:
    """Route the tokens x [B, T, d] at one site (a block or a projection) and write its routing_stats.

    Creates the site's router weight [d, n] in the "router" collection (learned routers only) and draws
    from the "routing" rng stream when the rule samples.
    """
    n, k = cfg.num_experts, cfg.top_k
    batch_shape = x.shape[:-1]
    mask = jnp.ones(batch_shape, bool) if token_mask is None else token_mask.astype(bool)
    logits = None
    if cfg.has_router_weights:
        rdt = jnp.dtype(cfg.router_dtype)
        w = router_weight(module, cfg, x.shape[-1], in_axis)
        # ReMix's router learns only through the estimator, never through the LoRA path (method.md §2).
        xr = jax.lax.stop_gradient(x) if cfg.method == "remix" else x
        logits = jnp.einsum("...d,dn->...n", xr.astype(rdt), w.astype(rdt)).astype(jnp.float32)
    samples = cfg.method == "uniform_random" or (
        cfg.method == "remix" and (not deterministic or cfg.sample_at_inference))
    key = module.make_rng("routing") if samples else None
    out = route(cfg.method, logits, n=n, k=k, omega=cfg.omega_value(), key=key, batch_shape=batch_shape)
    if module.is_mutable_collection("routing_stats"):
        log_prob = jnp.where(mask, out.log_prob, 0.0) if cfg.method == "remix" else jnp.zeros(batch_shape)
        aux = (cfg.load_balance_coef * load_balancing_loss(out.probs, out.experts, mask)
               if cfg.method == "mixlora" else jnp.zeros((), jnp.float32))
        diag = routing_diagnostics(out.experts, out.weights, out.probs, mask, dense=not cfg.selects_top_k)
        stats = {"log_prob": log_prob.astype(jnp.float32), "aux_loss": aux.astype(jnp.float32), **diag}
        for name, value in stats.items():
            module.put_variable("routing_stats", name, value)
    return out


class AdaptedProjection(Projection):
    """A frozen projection plus the configured adapter when its name is among the targets.

    ``routing`` (a RouterOutput from the block's router) is used when given; a targeted projection of a
    routed method without one routes its own input. ``part``: "full" (base + adapter), "base", "delta"
    (adapter only) or "slot_delta" (x [..., k, d_in]: slot j through expert routing.experts[..., j] alone,
    weighted by routing.weights[..., j]; used by MixLoRA's expert_ffn form) or "factors" (the routed
    factors (lora_a, lora_b), nothing computed; used by AdaptedMLP's fused ReMix inference path).

    ReMix at inference (``remix_fast_inference``) without a given routing computes its router logits and
    x A_all in one matmul and the top-k without a sort (``remix_inference_front``).
    """

    adapter: Any = None

    def _targeted(self) -> bool:
        return self.adapter is not None and self.name in self.adapter.targets

    def fusable(self) -> bool:
        """DoRA rescales the whole product, so it is not base + delta; every other adapter is."""
        return not (self._targeted() and self.adapter.method == "dora")

    def delta(self, x: Array, deterministic: bool = True, token_mask: Array | None = None) -> Array | None:
        """The adapter's own term (routing its own input when the method routes); None when not adapted."""
        if not self._targeted():
            return None
        return self(x, deterministic=deterministic, token_mask=token_mask, part="delta")

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
                 routing: RouterOutput | None = None, part: str = "full") -> Array:
        cfg: AdapterConfig = self.adapter
        if cfg is None or self.name not in cfg.targets:
            if part not in ("full", "base"):
                raise ValueError(f"{self.name} is not adapted; part={part!r} needs an adapter")
            return checkpoint_name(self.base_forward(x), PROJ_OUT) if part == "full" else self.base_forward(x)
        if part == "base":
            return self.base_forward(x)
        d_in, d_out, r, n = x.shape[-1], self.features, cfg.rank, cfg.num_experts
        ax_in, ax_out = self.kernel_axes
        lecun, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
        if cfg.method == "dora":
            a = _adapter_var(self, "lora_a", lecun, (d_in, r), (ax_in, None))
            b = _adapter_var(self, "lora_b", zeros, (r, d_out), (None, ax_out))
            mag = _adapter_var(self, "magnitude_delta", zeros, (d_out,), (ax_out,))
            kernel = self.base_kernel(d_in)
            y = lora_math.dora_forward(x.astype(self.dtype), kernel, a, b, cfg.lora_scale(), mag)
            bias = self.base_bias()
            return checkpoint_name(y if bias is None else y + bias.astype(self.dtype), PROJ_OUT)
        if not cfg.routed:
            a = _adapter_var(self, "lora_a", lecun, (d_in, r), (ax_in, None))
            b = _adapter_var(self, "lora_b", zeros, (r, d_out), (None, ax_out))
            delta = lora_math.lora_delta(x.astype(self.dtype), a, b, cfg.lora_scale())
            if part == "delta":
                return delta
            return checkpoint_name(self.base_forward(x) + delta, PROJ_OUT)

        if cfg.method == "hydralora":
            a = _adapter_var(self, "lora_a", lecun, (d_in, r), (ax_in, None))
        else:
            # lecun_normal of a [n, d_in, r] array uses fan_in = d_in, the projection's own init.
            a = _adapter_var(self, "lora_a", lecun, (n, d_in, r), ("expert", ax_in, None))
        b = _adapter_var(self, "lora_b", zeros, (n, r, d_out), ("expert", None, ax_out))
        if part == "factors":
            return a, b
        if routing is None and part in ("full", "delta") and remix_fast_inference(self, cfg, deterministic):
            w = router_weight(self, cfg, d_in, ax_in)
            pi, (h,) = remix_inference_front(x, w, [a], cfg, self.dtype)
            delta = moe.mix_hidden(h, b, pi)
            return delta if part == "delta" else checkpoint_name(self.base_forward(x) + delta, PROJ_OUT)
        if routing is None:
            routing = route_site(self, x, token_mask, deterministic, cfg, ax_in)
        xs = x.astype(self.dtype)
        weights = routing.weights * cfg.lora_scale()
        if part == "slot_delta":
            return moe.slot_delta(xs, a, b, routing.experts, weights, cfg.expert_compute)
        if cfg.method == "hydralora":
            delta = moe.shared_a_mixture(xs, a, b, weights)
        elif cfg.method == "softmax_dense":
            delta = moe.dense_mixture(xs, a, b, weights)
        else:
            delta = moe.mixture_delta(xs, a, b, routing.experts, weights, cfg.expert_compute)
        if part == "delta":
            return delta
        return checkpoint_name(self.base_forward(x) + delta, PROJ_OUT)


FOLD_NEEDS_PRECOMPUTED = "fold_norms: a routed FFN needs ReMix's precomputed matrices (fuse_remix_inference)"


class AdaptedMLP(MLP):
    """SwiGLU FFN whose block router (router_scope="block") reads the FFN input and routes gate/up/down."""

    adapter: Any = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
                 row_scale: Array | None = None, residual: Array | None = None, layer: Array | None = None) -> Array:
        """row_scale: x is the un-normalised block input and row_scale its RMSNorm factor (fold_norms; only
        with the fused kernels of an FFN whose gate/up have no adapter delta, or ReMix's precomputed FFN).
        residual: returns residual + FFN(x). layer: the block's index (ReMix's decode kernels, ``_remix_kernels``)."""
        cfg: AdapterConfig = self.adapter
        gate, up, down = self.projections()
        kw = dict(deterministic=deterministic, token_mask=token_mask)
        block_routed = (cfg is not None and cfg.routed and cfg.router_scope == "block"
                        and any(t in FFN_PROJECTIONS for t in cfg.targets))
        if not block_routed:
            g, u = self.gate_up(x, gate, up, kw, row_scale)
            return add_residual(residual, self.down_product(nn.silu(g) * u, down, kw))
        if remix_fast_inference(self, cfg, deterministic):
            out = self._remix_kernels(x, cfg, gate.dtype, row_scale, residual, layer)
            if out is not None:
                return out
            return add_residual(residual, self._remix_inference(x, gate, up, down, cfg, kw, row_scale))
        if row_scale is not None:
            raise ValueError(FOLD_NEEDS_PRECOMPUTED)
        routing = route_site(self, x, token_mask, deterministic, cfg, "embed")
        if cfg.method == "mixlora" and cfg.mixlora_form == "expert_ffn":
            return add_residual(residual, self._expert_ffn(x, routing, gate, up, down, kw))
        kw["routing"] = routing
        return add_residual(residual, down(nn.silu(gate(x, **kw)) * up(x, **kw), **kw))

    def _remix_kernels(self, x: Array, cfg: AdapterConfig, dtype, row_scale: Array | None,
                       residual: Array | None, layer: Array | None) -> Array | None:
        """residual + ReMix's FFN(x) [..., d] by the decode kernels (``adapters.remix_kernels``): x [..., d] is the
        un-normalised block input (folded norms), the B matrices of every layer are in the STACKED collection
        (``fuse_remix_inference(kernels=True)``) and read at ``layer``. None (the XLA form applies) unless all of
        that holds and the call has at most ``remix_kernels.MAX_TOKENS`` tokens (a decode step of a small batch)."""
        lead, d = x.shape[:-1], x.shape[-1]
        m = math.prod(lead)
        if (row_scale is None or residual is None or layer is None or m > remix_kernels.MAX_TOKENS
                or not self.has_variable(STACKED, "b_gate_up") or not self.has_variable(FUSED, "remix_gate_up")):
            return None
        w1, w2 = self.get_variable(FUSED, "remix_gate_up"), self.get_variable(FUSED, "remix_down")
        lay = routed_layout(cfg, w1.shape[0], d, w2.shape[1], self.config.rms_norm_eps)
        interpret = jax.default_backend() != "gpu"  # Pallas's interpreter elsewhere (tests)
        x2 = x.reshape(m, d)
        y = inference_product(x2, w1, dtype, jnp.float32)
        hidden = remix_kernels.routed_front(y, x2, self.get_variable(STACKED, "b_gate_up"), layer, lay, dtype,
                                            interpret=interpret)
        y2 = remix_kernels.down_product(hidden, w2, dtype)
        out = remix_kernels.routed_back(y, y2, residual.reshape(m, d), self.get_variable(STACKED, "b_down"), layer,
                                        lay, dtype, interpret=interpret)
        return out.reshape(*lead, d)

    def _remix_inference(self, x: Array, gate, up, down, cfg: AdapterConfig, kw,
                         row_scale: Array | None = None) -> Array:
        """ReMix's deterministic top-k FFN with fewer kernels. x [..., d] -> [..., d].

        With the block's matrices precomputed (``fuse_remix_inference``, once per generate call):
        ``remix_ffn_fused``. Otherwise one matmul gives the block router's logits and x A_all of the adapted
        gate/up projections, top-k by comparison, the same dense mixture after."""
        if self.has_variable(FUSED, "remix_gate_up"):
            mats = {name: self.get_variable(FUSED, name) for name in REMIX_BLOCK_MATRICES
                    if self.has_variable(FUSED, name)}
            return remix_ffn_fused(x, mats, cfg, gate.dtype, row_scale)
        if row_scale is not None:
            raise ValueError(FOLD_NEEDS_PRECOMPUTED)
        front = [p for p in (gate, up) if p.name in cfg.targets]
        factors = {p.name: p(x, part="factors", **kw) for p in front}
        w = router_weight(self, cfg, x.shape[-1], "embed")
        dtype = front[0].dtype if front else x.dtype
        pi, hs = remix_inference_front(x, w, [factors[p.name][0] for p in front], cfg, dtype)
        if len(front) == 2:  # gate and up: both B products in one batched matmul
            stacked = moe.mix_hidden_stacked(jnp.stack(hs), jnp.stack([factors[p.name][1] for p in front]), pi)
            deltas = {p.name: stacked[i] for i, p in enumerate(front)}
        else:
            deltas = {p.name: moe.mix_hidden(h, factors[p.name][1], pi) for p, h in zip(front, hs, strict=True)}

        # The frozen gate/up products: one matmul with the "fused" kernel when present (fuse_projections).
        base_gu = fused_products(self, x, "gate_up_kernel", "gate_up_bias", (gate, up),
                                 (gate.features, up.features), {}, with_delta=False)
        bases = {} if base_gu is None else {"gate_proj": base_gu[0], "up_proj": base_gu[1]}

        def project(p, inp):
            if p.name not in cfg.targets:
                return bases[p.name] if p.name in bases else p(inp, **kw)
            if p.name in deltas:
                delta = deltas[p.name]
            else:
                a, b = p(inp, part="factors", **kw)
                delta = moe.dense_mixture(inp.astype(p.dtype), a, b, pi)
            base = bases[p.name] if p.name in bases else p(inp, part="base", **kw)
            return checkpoint_name(base + delta, PROJ_OUT)

        return project(down, nn.silu(project(gate, x)) * project(up, x))

    @staticmethod
    def _expert_ffn(x, routing: RouterOutput, gate, up, down, kw) -> Array:
        """MixLoRA's original form: sum_j pi_j FFN_{e_j}(x), FFN_i = the FFN with expert i's LoRAs.

        The frozen gate/up products are shared by all experts and down is linear, so the base matmuls run
        once: sum_j pi_j h_j W_down = (sum_j pi_j h_j) W_down.
        """
        k = routing.experts.shape[-1]
        ones = RouterOutput(routing.experts, jnp.ones_like(routing.weights), routing.probs, routing.log_prob)
        xk = jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], k, x.shape[-1]))
        g = gate(x, part="base", **kw)[..., None, :] + gate(xk, routing=ones, part="slot_delta", **kw)
        u = up(x, part="base", **kw)[..., None, :] + up(xk, routing=ones, part="slot_delta", **kw)
        h = nn.silu(g) * u  # [..., k, f]: expert j's FFN hidden state
        pi = routing.weights.astype(h.dtype)[..., None]
        base = down(jnp.sum(pi * h, axis=-2), part="base", **kw)
        return base + jnp.sum(down(h, routing=routing, part="slot_delta", **kw), axis=-2)


def build_model(model_cfg, adapter_cfg: AdapterConfig) -> Decoder:
    """The decoder with adapters attached (validates adapter_cfg against model_cfg first)."""
    adapter_cfg = validate_adapter_config(adapter_cfg, model_cfg)
    return Decoder(model_cfg, proj_cls=functools.partial(AdaptedProjection, adapter=adapter_cfg),
                   mlp_cls=functools.partial(AdaptedMLP, adapter=adapter_cfg))


def init_adapter_variables(model: Decoder, rng: Array, tokens_shape: tuple[int, int] = (1, 8)) -> dict:
    """Fresh {"adapter": ..., "router": ...} variables (router {} when the method has none), unboxed.

    Jitted so that the (discarded) random base parameters are never materialised.
    """
    tokens = jnp.zeros(tokens_shape, jnp.int32)
    k_params, k_routing = jax.random.split(rng)

    def init(kp, kr):
        variables = model.init({"params": kp, "routing": kr}, tokens)
        return {c: variables.get(c, {}) for c in ("adapter", "router")}

    return nn.meta.unbox(jax.jit(init)(k_params, k_routing))


REMIX_BLOCK_MATRICES = ("remix_gate_up", "remix_b_gate_up", "remix_down", "remix_b_down")


def remix_precomputed_ffn(cfg: AdapterConfig | None) -> bool:
    """Whether ``fuse_remix_inference`` builds ReMix's precomputed FFN matrices for this adapter config."""
    return (cfg is not None and cfg.method == "remix" and cfg.router_scope == "block" and not cfg.sample_at_inference
            and moe.resolve_compute(cfg.expert_compute) == "dense"
            and any(t in FFN_PROJECTIONS for t in cfg.targets))


def foldable_norms(cfg: AdapterConfig | None) -> bool:
    """Whether the blocks' RMSNorm scales can be folded into the inference kernels (``Decoder.fold_norms``): no
    adapter reads a norm's output except through those kernels, i.e. none on q/k/v, and none on gate/up unless
    ReMix's precomputed FFN holds them."""
    if cfg is None:
        return True
    if any(t in ("q_proj", "k_proj", "v_proj") for t in cfg.targets):
        return False
    return not any(t in ("gate_proj", "up_proj") for t in cfg.targets) or remix_precomputed_ffn(cfg)


def routed_layout(cfg: AdapterConfig, width: int, d: int, f: int, eps: float = 0.0) -> remix_kernels.RoutedLayout:
    """The ``remix_kernels`` layout of a block whose remix_gate_up has ``width`` output columns."""
    n, r = cfg.num_experts, cfg.rank
    return remix_kernels.RoutedLayout(d=d, f=f, n=n, r=r, k=cfg.top_k, omega=cfg.omega_value(),
                                      parts=(width - 2 * f - 2 * n * r) // n, eps=eps)


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
    (layers/mlp/b_gate_up, b_down) for ReMix's decode kernels (``AdaptedMLP._remix_kernels``; the model needs
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


def adapter_config_of(model: Decoder) -> AdapterConfig | None:
    """The AdapterConfig a model was built with (``build_model``), or None for the plain decoder."""
    cls = model.mlp_cls
    return cls.keywords.get("adapter") if isinstance(cls, functools.partial) else None


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
