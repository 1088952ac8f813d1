"""How adapters attach to the frozen decoder: replacement projection and FFN modules.

``build_model(model_cfg, adapter_cfg)`` returns a ``Decoder`` whose ``proj_cls``/``mlp_cls`` are the classes
below. Base parameter names are unchanged ("params"); adapters add three collections (and one opt-in record):
    adapter        LoRA factors lora_a / lora_b (+ DoRA magnitude_delta), stacked [L, ...] by the scan
    router         router weight [L, d_in, n] (float32), only for learned routers
    routing_stats  diagnostics and log Q, written when the collection is mutable (see routing/diagnostics.py)
    routing_trace  per-token router input, logits and chosen experts [L, B, T, ...], written only when the
                   caller makes it mutable (analysis: scripts/known_routing.py)

Per adapted projection (n experts, rank r):
    lora/rslora      lora_a [d_in, r], lora_b [r, d_out]
    dora             + magnitude_delta [d_out]
    remix/mixlora/softmax_dense/uniform_random   lora_a [n, d_in, r], lora_b [n, r, d_out]
    hydralora        lora_a [d_in, r] (shared), lora_b [n, r, d_out]

Each method of the modules returns one kind of thing (``AdaptedProjection``: ``__call__`` the output, ``base``
the frozen product, ``delta`` the adapter's term, ``slot_delta`` one expert per slot, ``factors`` the factors).
The shapes of the variables depend on the input, so every method that reads one declares it (``@nn.compact``;
flax linen allows several compact methods per module since 0.9); a variable is declared where the method that
first reads it runs, so the variables and their initial values are those of a single forward pass.

Inference-only speed paths (ReMix's fused FFN, the decode kernels) live in ``remix_jax.inference``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from remix_jax.adapters import lora as lora_math
from remix_jax.adapters import moe
from remix_jax.adapters.adapter_config import FFN_PROJECTIONS, AdapterConfig, validate_adapter_config
from remix_jax.inference.remix_ffn import precomputed_ffn, remix_inference_front
from remix_jax.models.fused import fused_products
from remix_jax.models.llama import MLP, Decoder, Projection, add_residual
from remix_jax.models.remat import PROJ_OUT
from remix_jax.routing.diagnostics import routing_diagnostics
from remix_jax.routing.routers import RouterOutput, load_balancing_loss, route

Array = jax.Array
TRACE = "routing_trace"  # opt-in collection: apply(..., mutable=[TRACE]) records each site's per-token routing
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
    """Whether a remix site may take the inference path (``inference.remix_ffn``): ReMix's deterministic top-k
    with dense expert compute, outside init, with "routing_stats" not mutable (no diagnostics or log Q are
    written, as in generation and scoring without statistics): nothing but the mixture is needed.
    """
    return (cfg.method == "remix" and deterministic and not cfg.sample_at_inference and cfg.dense_experts
            and not module.is_initializing() and not module.is_mutable_collection("routing_stats")
            and not module.is_mutable_collection(TRACE))


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
        # ReMix's router learns only through the estimator, never through the LoRA path (docs/method.md §2.1).
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
        diag = routing_diagnostics(out.experts, out.weights, out.probs, mask, dense=not cfg.selects_top_k,
                                   logits=logits)
        stats = {"log_prob": log_prob.astype(jnp.float32), "aux_loss": aux.astype(jnp.float32), **diag}
        for name, value in stats.items():
            module.put_variable("routing_stats", name, value)
    if module.is_mutable_collection(TRACE) and not module.is_initializing():
        # Opt-in per-token record for analysis (never written in training, evaluation or init, where every
        # collection is mutable): the router's input, its logits (learned routers) and the experts that got
        # weight, each [B, T, ...].
        module.put_variable(TRACE, "input", x)
        module.put_variable(TRACE, "experts", out.experts)
        if logits is not None:
            module.put_variable(TRACE, "logits", logits)
    return out


class AdaptedProjection(Projection):
    """A frozen projection plus the configured adapter when its name is among the targets.

    ``routing`` (a RouterOutput from the block's router) is used when given; a targeted projection of a
    routed method without one routes its own input (``route_site``; ReMix at inference: router logits and
    x A_all in one matmul, ``inference.remix_ffn.remix_inference_front``).
    """

    adapter: Any = None

    def targeted(self) -> bool:
        """Whether this projection carries an adapter (its name is among the config's targets)."""
        return self.adapter is not None and self.name in self.adapter.targets

    def fusable(self) -> bool:
        """DoRA rescales the whole product, so it is not base + delta; every other adapter is."""
        return not (self.targeted() and self.adapter.method == "dora")

    def _config(self) -> AdapterConfig:
        if not self.targeted():
            raise ValueError(f"{self.name} has no adapter (targets: "
                             f"{None if self.adapter is None else self.adapter.targets})")
        return self.adapter

    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
                 routing: RouterOutput | None = None) -> Array:
        """The projection's output [..., d_out]: base(x) + delta(x) (DoRA: its rescaled product; a projection
        without adapter: base(x)), named PROJ_OUT for the remat policies."""
        if not self.targeted():
            return checkpoint_name(self.base(x), PROJ_OUT)
        if self.adapter.method == "dora":
            return checkpoint_name(self._dora(x), PROJ_OUT)
        delta = self.delta(x, deterministic, token_mask, routing)
        return checkpoint_name(self.base(x) + delta, PROJ_OUT)

    @nn.compact
    def base(self, x: Array) -> Array:
        """The frozen product x W (+ b): x [..., d_in] -> [..., d_out] in the compute dtype."""
        return self.base_forward(x)

    @nn.compact
    def factors(self, d_in: int) -> tuple[Array, Array]:
        """The adapter's factors (lora_a, lora_b), float32: [d_in, r] and [r, d_out] (lora, rslora, dora);
        [n, d_in, r] and [n, r, d_out] (routed methods); hydralora: a shared [d_in, r] and [n, r, d_out]."""
        cfg = self._config()
        d_out, r, n = self.features, cfg.rank, cfg.num_experts
        ax_in, ax_out = self.kernel_axes
        lecun, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
        if not cfg.routed:
            a = _adapter_var(self, "lora_a", lecun, (d_in, r), (ax_in, None))
            return a, _adapter_var(self, "lora_b", zeros, (r, d_out), (None, ax_out))
        if cfg.method == "hydralora":
            a = _adapter_var(self, "lora_a", lecun, (d_in, r), (ax_in, None))
        else:
            # lecun_normal of a [n, d_in, r] array uses fan_in = d_in, the projection's own init.
            a = _adapter_var(self, "lora_a", lecun, (n, d_in, r), ("expert", ax_in, None))
        return a, _adapter_var(self, "lora_b", zeros, (n, r, d_out), ("expert", None, ax_out))

    @nn.compact
    def delta(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
              routing: RouterOutput | None = None) -> Array | None:
        """The adapter's own term [..., d_out] in the compute dtype (None without adapter): scale x A B, or the
        mixture sum_j pi_j x A_{e_j} B_{e_j} of the given ``routing`` (routing its own input when None)."""
        if not self.targeted():
            return None
        cfg = self.adapter
        if cfg.method == "dora":
            raise ValueError(f"{self.name}: DoRA rescales the whole product and has no additive delta")
        d_in = x.shape[-1]
        a, b = self.factors(d_in)
        xs = x.astype(self.dtype)
        if not cfg.routed:
            return lora_math.lora_delta(xs, a, b, cfg.lora_scale())
        if routing is None and remix_fast_inference(self, cfg, deterministic):
            w = router_weight(self, cfg, d_in, self.kernel_axes[0])
            pi, (h,) = remix_inference_front(x, w, [a], cfg, self.dtype)
            return moe.mix_hidden(h, b, pi)
        if routing is None:
            routing = route_site(self, x, token_mask, deterministic, cfg, self.kernel_axes[0])
        weights = routing.weights * cfg.lora_scale()
        if cfg.method == "hydralora":
            return moe.shared_a_mixture(xs, a, b, weights)
        if cfg.method == "softmax_dense":
            return moe.dense_mixture(xs, a, b, weights)
        return moe.mixture_delta(xs, a, b, routing.experts, weights, cfg.expert_compute)

    @nn.compact
    def slot_delta(self, x: Array, routing: RouterOutput) -> Array:
        """Each slot through its own expert: x [..., k, d_in] -> [..., k, d_out], slot j through expert
        routing.experts[..., j] alone, weighted by routing.weights[..., j] (MixLoRA's expert_ffn form)."""
        cfg = self._config()
        if not cfg.routed:
            raise ValueError(f"{self.name}: slot_delta needs a routed method, not {cfg.method!r}")
        a, b = self.factors(x.shape[-1])
        weights = routing.weights * cfg.lora_scale()
        return moe.slot_delta(x.astype(self.dtype), a, b, routing.experts, weights, cfg.expert_compute)

    @nn.compact
    def _dora(self, x: Array) -> Array:
        """DoRA's output x [m * (W + s A B) / ||W + s A B||_c] (+ b) (``lora.dora_forward``)."""
        cfg = self.adapter
        d_in = x.shape[-1]
        a, b = self.factors(d_in)
        mag = _adapter_var(self, "magnitude_delta", nn.initializers.zeros, (self.features,), (self.kernel_axes[1],))
        kernel = self.base_kernel(d_in)
        y = lora_math.dora_forward(x.astype(self.dtype), kernel, a, b, cfg.lora_scale(), mag)
        bias = self.base_bias()
        return y if bias is None else y + bias.astype(self.dtype)


FOLD_NEEDS_PRECOMPUTED = "fold_norms: a routed FFN needs ReMix's precomputed matrices (fuse_remix_inference)"


class AdaptedMLP(MLP):
    """SwiGLU FFN whose block router (router_scope="block") reads the FFN input and routes gate/up/down.

    ``__call__`` picks one of four forms: ``projection_ffn`` (no block router: each projection adapts or routes
    itself), ``routed_ffn`` (the block's routing handed to gate/up/down: training and scoring), ``expert_ffn``
    (MixLoRA's original form) and ``remix_inference_ffn`` (ReMix at inference, through ``inference.remix_ffn``).
    """

    adapter: Any = None

    def block_routed(self) -> bool:
        cfg = self.adapter
        return (cfg is not None and cfg.routed and cfg.router_scope == "block"
                and any(t in FFN_PROJECTIONS for t in cfg.targets))

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
                 row_scale: Array | None = None, residual: Array | None = None, layer: Array | None = None) -> Array:
        """x [..., d] -> [..., d] (residual + FFN(x) when ``residual`` is given).

        row_scale: x is the un-normalised block input and row_scale its RMSNorm factor (fold_norms; only
        with the fused kernels of an FFN whose gate/up have no adapter delta, or ReMix's precomputed FFN).
        layer: the block's index (ReMix's decode kernels read the stacked B matrices at it)."""
        cfg: AdapterConfig = self.adapter
        if (cfg is None or not cfg.routed) and self.chunks(row_scale):
            return add_residual(residual, self.chunked(x, deterministic, token_mask))  # model.mlp_chunks
        gate, up, down = self.projections()
        kw = dict(deterministic=deterministic, token_mask=token_mask)
        if not self.block_routed():
            return add_residual(residual, self.projection_ffn(x, gate, up, down, kw, row_scale))
        if remix_fast_inference(self, cfg, deterministic):
            return self.remix_inference_ffn(x, gate, up, down, kw, row_scale, residual, layer)
        if row_scale is not None:
            raise ValueError(FOLD_NEEDS_PRECOMPUTED)
        routing = route_site(self, x, token_mask, deterministic, cfg, "embed")
        if cfg.method == "mixlora" and cfg.mixlora_form == "expert_ffn":
            return add_residual(residual, self.expert_ffn(x, routing, gate, up, down, kw))
        return add_residual(residual, self.routed_ffn(x, routing, gate, up, down, kw))

    def projection_ffn(self, x: Array, gate, up, down, kw: dict, row_scale: Array | None = None) -> Array:
        """down(silu(gate(x)) * up(x)), each projection with its own adapter (or router); the fused kernels of
        ``inference.variables.fuse_projections`` when present (inference)."""
        g, u = self.gate_up(x, gate, up, kw, row_scale)
        return self.down_product(nn.silu(g) * u, down, kw)

    @staticmethod
    def routed_ffn(x: Array, routing: RouterOutput, gate, up, down, kw: dict) -> Array:
        """down(silu(gate(x)) * up(x)) with the block's routing handed to every adapted projection."""
        return down(nn.silu(gate(x, routing=routing, **kw)) * up(x, routing=routing, **kw), routing=routing, **kw)

    @staticmethod
    def expert_ffn(x: Array, routing: RouterOutput, gate, up, down, kw: dict) -> Array:
        """MixLoRA's original form: sum_j pi_j FFN_{e_j}(x), FFN_i = the FFN with expert i's LoRAs.

        The frozen gate/up products are shared by all experts and down is linear, so the base matmuls run
        once: sum_j pi_j h_j W_down = (sum_j pi_j h_j) W_down.
        """
        del kw  # the routing is given: nothing routes here
        k = routing.experts.shape[-1]
        ones = RouterOutput(routing.experts, jnp.ones_like(routing.weights), routing.probs, routing.log_prob)
        xk = jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], k, x.shape[-1]))
        g = gate.base(x)[..., None, :] + gate.slot_delta(xk, ones)
        u = up.base(x)[..., None, :] + up.slot_delta(xk, ones)
        h = nn.silu(g) * u  # [..., k, f]: expert j's FFN hidden state
        pi = routing.weights.astype(h.dtype)[..., None]
        base = down.base(jnp.sum(pi * h, axis=-2))
        return base + jnp.sum(down.slot_delta(h, routing), axis=-2)

    def remix_inference_ffn(self, x: Array, gate, up, down, kw: dict, row_scale: Array | None = None,
                            residual: Array | None = None, layer: Array | None = None) -> Array:
        """residual + ReMix's deterministic top-k FFN(x) with fewer kernels, x [..., d] -> [..., d].

        From the matrices precomputed for generation when the module holds them (``inference.remix_ffn.
        precomputed_ffn``: the decode kernels or ``remix_ffn_fused``). Otherwise one matmul gives the block
        router's logits and x A_all of the adapted gate/up projections (``remix_inference_front``), top-k by
        comparison, and the same dense mixture after."""
        cfg: AdapterConfig = self.adapter
        out = precomputed_ffn(self, x, cfg, gate.dtype, row_scale, residual, layer)
        if out is not None:
            return out
        if row_scale is not None:
            raise ValueError(FOLD_NEEDS_PRECOMPUTED)
        front = [p for p in (gate, up) if p.name in cfg.targets]
        factors = {p.name: p.factors(x.shape[-1]) for p in front}
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
                a, b = p.factors(inp.shape[-1])
                delta = moe.dense_mixture(inp.astype(p.dtype), a, b, pi)
            base = bases[p.name] if p.name in bases else p.base(inp)
            return checkpoint_name(base + delta, PROJ_OUT)

        return add_residual(residual, project(down, nn.silu(project(gate, x)) * project(up, x)))


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
