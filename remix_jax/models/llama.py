"""LLaMA-family decoder in Flax linen: RMSNorm, RoPE (default/linear/llama3), GQA, SwiGLU.

Covers Llama 2/3/3.1/3.2, Mistral-style, SmolLM2 and Qwen2/2.5 (q/k/v biases). Layers are scanned
(parameters stacked on a leading "layers" axis) so XLA compiles one block; every parameter carries
logical axis names for sharding (see remix_jax/parallel).

Parameter tree (kernels are [in, out]; L = num_layers):
    embed/embedding                     [vocab, d]
    layers/input_norm/scale             [L, d]
    layers/attn/{q,k,v,o}_proj/kernel   [L, d, H*hd] ... ; q/k/v bias [L, *] when attention_bias
    layers/post_attn_norm/scale         [L, d]
    layers/mlp/{gate,up,down}_proj/kernel
    final_norm/scale                    [d]
    lm_head                             [d, vocab]   (absent when embeddings are tied)

Adapters attach without editing this file: ``Decoder(config, proj_cls=..., mlp_cls=...)`` takes the
module classes used for every linear projection and for the FFN. Replacements must keep the base
parameter names (``kernel``/``bias``; ``gate_proj``/``up_proj``/``down_proj``) and may add variables in
other collections. Both are called as ``module(x, deterministic=..., token_mask=...)``.

Inputs: tokens [B, T] int32; segment_ids [B, T] (0 = padding, 1.. = packed sequences); positions
[B, T] (default: position within each segment). The KV cache (``init_cache``) holds keys/values of
every layer plus the positions and segment ids of the cached tokens, so left padding, right padding
and packing all mask correctly during incremental decoding.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from remix_jax.models.fused import STACKED, fused_product, fused_products
from remix_jax.models.model_config import ModelConfig, rope_inv_freq
from remix_jax.parallel.logical import constrain, target_platform

Array = jax.Array

PROJ_OUT = "proj_out"  # checkpoint name of every projection's output (see REMAT_POLICIES)

# Logical axis names of the activations (parallel/logical.py maps them to the mesh; no-ops without a mesh).
BTD = ("activation_batch", "activation_length", "activation_embed")
BTHD = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BTKD = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")
BTF = ("activation_batch", "activation_length", "activation_mlp")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_ffn": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out", "ffn_hidden"),
    # Every projection's output (base + adapter delta as one tensor) and the attention output; everything else
    # (norms, rope, activations, the LoRA x @ A products) is recomputed. dots_no_batch instead saves the base
    # product and the adapter delta separately, doubling the adapted projections' activations.
    "save_proj_out": jax.checkpoint_policies.save_only_these_names(PROJ_OUT, "attn_out"),
}


def _dt(name: str):
    return jnp.dtype(name)


def positions_from_segments(segment_ids: Array) -> Array:
    """Position of each token within its segment [B, T]; padding (segment 0) gets position 0."""
    seg = segment_ids
    idx = jnp.arange(seg.shape[-1], dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=-1)
    start_idx = jax.lax.cummax(jnp.where(start, idx[None, :], 0), axis=1)
    return jnp.where(seg != 0, idx[None, :] - start_idx, 0).astype(jnp.int32)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        y = x.astype(jnp.float32) * rms_inverse(x, self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rms_inverse(x: Array, eps: float) -> Array:
    """1 / RMS(x) over the last axis, [..., 1] float32: RMSNorm(x) = x * rms_inverse(x) * scale. With the scale
    folded into the following kernels (``fuse_projections(fold_norms=True)``) only this factor is left, and it
    multiplies the products' rows: (x W') * rms_inverse(x), W' = diag(scale) W."""
    x32 = x.astype(jnp.float32)
    return jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


def projection_class_fuses(proj_cls) -> bool:
    """Whether a projection class (or a functools.partial of one) computes its base product plus ``delta``, so
    that the fused inference kernels may stand in for its own: ``Projection`` itself, or a subclass that
    overrides ``fusable`` and ``delta`` along with ``__call__``. A subclass overriding only ``__call__`` is
    always called as itself."""
    cls = proj_cls.func if isinstance(proj_cls, functools.partial) else proj_cls
    return cls.__call__ is Projection.__call__ or cls.fusable is not Projection.fusable


class Projection(nn.Module):
    """A linear map x [..., d_in] -> [..., features] with logically named kernel axes."""

    features: int
    kernel_axes: tuple[str, str]
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def base_kernel(self, d_in: int) -> Array:
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes)
        return self.param("kernel", init, (d_in, self.features), self.param_dtype)

    def base_bias(self) -> Array | None:
        if not self.use_bias:
            return None
        init = nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[1:])
        return self.param("bias", init, (self.features,), self.param_dtype)

    def base_forward(self, x: Array) -> Array:
        kernel = self.base_kernel(x.shape[-1])
        y = jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))
        b = self.base_bias()
        if b is not None:
            y = y + b.astype(self.dtype)
        return y

    def fusable(self) -> bool:
        """Whether the output is the base product plus ``delta(x)``, so that the base products of several
        projections of one input may come from one concatenated kernel (``fuse_projections``). A subclass that
        overrides ``__call__`` is applied as itself unless it also overrides this (and ``delta``)."""
        return projection_class_fuses(type(self))

    def delta(self, x: Array, deterministic: bool = True, token_mask: Array | None = None) -> Array | None:
        """What this projection adds to its base product x W (+ b); None when nothing (the plain projection)."""
        del x, deterministic, token_mask
        return None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None) -> Array:
        del deterministic, token_mask
        return checkpoint_name(self.base_forward(x), PROJ_OUT)


def add_residual(residual: Array | None, out: Array) -> Array:
    """residual + out (the block's residual add inside its FFN), or out when there is no residual."""
    return out if residual is None else residual + out


class MLP(nn.Module):
    """SwiGLU FFN: down(silu(gate(x)) * up(x))."""

    config: ModelConfig
    proj_cls: Any = Projection

    def projections(self):
        cfg, dt, pdt = self.config, _dt(self.config.dtype), _dt(self.config.param_dtype)
        mk = functools.partial(self.proj_cls, dtype=dt, param_dtype=pdt)
        return (mk(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj"),
                mk(cfg.intermediate_size, ("embed", "mlp"), name="up_proj"),
                mk(cfg.hidden_size, ("mlp", "embed"), name="down_proj"))

    def gate_up(self, x: Array, gate, up, kw: dict, row_scale: Array | None = None) -> tuple[Array, Array]:
        """gate(x), up(x): from one matmul with the "fused" gate_up_kernel when present (inference).
        row_scale: see ``fused_products`` (the fused kernel must then be present)."""
        fused = fused_products(self, x, "gate_up_kernel", "gate_up_bias", (gate, up),
                               (gate.features, up.features), kw, row_scale=row_scale)
        return tuple(fused) if fused is not None else (gate(x, **kw), up(x, **kw))

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, token_mask: Array | None = None,
                 row_scale: Array | None = None, residual: Array | None = None, layer: Array | None = None) -> Array:
        """row_scale: x is the un-normalised block input and row_scale its RMSNorm factor (fold_norms).
        residual: returns residual + FFN(x) (the block's residual add) instead of FFN(x). layer: the block's index
        (for kernels that read stacked weights, see ``adapters.modules.AdaptedMLP``)."""
        gate, up, down = self.projections()
        kw = dict(deterministic=deterministic, token_mask=token_mask)
        g, u = self.gate_up(x, gate, up, kw, row_scale)
        h = checkpoint_name(constrain(nn.silu(g) * u, BTF), "ffn_hidden")
        return add_residual(residual, self.down_product(h, down, kw))

    def down_product(self, h: Array, down, kw: dict) -> Array:
        """down(h): with the "fused" down_kernel when present (inference), else the projection itself."""
        return fused_product(self, h, "down_kernel", down, kw)


def rope_tables(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos, sin [B, T, 1, hd/2] float32 of the rotary angles positions x inv_freq: computed once per forward
    pass and shared by every layer."""
    inv_freq = jnp.asarray(rope_inv_freq(cfg), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]  # [B, T, hd/2]
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rope(x: Array, rope: tuple[Array, Array]) -> Array:
    """Rotate-half RoPE of x [B, T, heads, hd] with the tables of ``rope_tables``; computed in float32."""
    cos, sin = rope
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(q_pos, q_seg, k_pos, k_seg) -> Array:
    """Boolean [B, 1, T, S]: same non-padding segment and key position <= query position."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    causal = k_pos[:, None, :] <= q_pos[:, :, None]
    return (same & causal)[:, None]


def resolve_attention_impl(cfg: ModelConfig, cached: bool, seq_len: int | None = None) -> str:
    """The attention kernel of a forward pass of ``seq_len`` tokens: XLA's ("xla": always with a KV cache),
    cuDNN flash attention ("cudnn", chosen by "auto" on GPUs) or the Pallas splash kernel ("splash", chosen by
    "auto" on TPUs when ``seq_len`` is a multiple of 128). The platform is that of the mesh the step is compiled
    for (``parallel.logical.target_platform``), so a TPU step compiled on a CPU host gets the TPU kernel."""
    if cached:
        return "xla"
    impl = cfg.attention_impl
    if impl == "auto":
        platform = target_platform()
        if platform == "gpu":
            impl = "cudnn"
        elif platform == "tpu" and seq_len is not None and seq_len % 128 == 0:
            impl = "splash"
        else:
            impl = "xla"
    return impl


def xla_attention(q, k, v, mask, heads_first: bool = False) -> Array:
    """q [B,T,H,hd], k/v [B,S,KV,hd] (or [B,KV,S,hd] with ``heads_first``: the KV cache's layout, already
    the batched-matmul layout of both products), mask [B,1,T,S] -> [B,T,H,hd]; softmax in float32.

    One new token against the cache (``heads_first``, T = 1) takes both products as multiply-and-sum in
    float32 rather than batched matmuls: reductions that read the layer's slice of the cache where it lies
    (a matmul fusion takes its operand as a copy), the same products in the same precision."""
    b, t, h, hd = q.shape
    kvh = k.shape[1] if heads_first else k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, hd)
    decode = heads_first and t == 1
    kv = "bksd" if heads_first else "bskd"
    if decode:
        q32 = qg[:, 0].astype(jnp.float32)[:, :, :, None, :]  # [B, KV, G, 1, hd]
        scores = jnp.sum(q32 * k.astype(jnp.float32)[:, :, None], axis=-1)[:, :, :, None]  # [B, KV, G, 1, S]
    else:
        scores = jnp.einsum(f"btkgd,{kv}->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (hd ** -0.5)
    big_neg = jnp.finfo(jnp.float32).min
    scores = jnp.where(mask[:, :, None], scores, big_neg)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if decode:
        p32 = probs[:, :, :, 0, :, None].astype(jnp.float32)  # [B, KV, G, S, 1]
        out = jnp.sum(p32 * v.astype(jnp.float32)[:, :, None], axis=-2).astype(v.dtype)[:, None]  # [B,1,KV,G,hd]
    else:
        out = jnp.einsum(f"bkgts,{kv}->btkgd", probs, v)
    return out.reshape(b, t, h, hd)


class Attention(nn.Module):
    config: ModelConfig
    proj_cls: Any = Projection

    @nn.compact
    def __call__(self, x, segment_ids, cache, layer, mask, cache_index, rope,
                 deterministic: bool = True, token_mask=None, row_scale=None):
        """cache: None (training, prefill-free scoring) or the whole KV cache {"kv": [L, 2, B, KV, S, hd]};
        this layer writes its new keys/values at [layer, :, cache_index] in place and attends over its slice.
        mask: [B, 1, T, S] for XLA attention, None for the flash kernels (cuDNN, splash: ``resolve_attention_impl``).
        row_scale: x is the un-normalised block input and row_scale its RMSNorm factor (fold_norms).
        Returns (output [B, T, d], the updated cache or None)."""
        cfg = self.config
        dt, pdt = _dt(cfg.dtype), _dt(cfg.param_dtype)
        b, t, _ = x.shape
        h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        mk = functools.partial(self.proj_cls, dtype=dt, param_dtype=pdt)
        kw = dict(deterministic=deterministic, token_mask=token_mask)
        qkv_mods = (mk(h * hd, ("embed", "heads"), use_bias=cfg.attention_bias, name="q_proj"),
                    mk(kvh * hd, ("embed", "kv"), use_bias=cfg.attention_bias, name="k_proj"),
                    mk(kvh * hd, ("embed", "kv"), use_bias=cfg.attention_bias, name="v_proj"))
        fused = fused_products(self, x, "qkv_kernel", "qkv_bias", qkv_mods, (h * hd, kvh * hd, kvh * hd), kw,
                               row_scale=row_scale)
        if fused is None:
            q, k, v = (checkpoint_name(m(x, **kw), "qkv") for m in qkv_mods)
            q = apply_rope(constrain(q.reshape(b, t, h, hd), BTHD), rope)
            k = apply_rope(constrain(k.reshape(b, t, kvh, hd), BTKD), rope)
        else:  # inference: one matmul for q, k, v and one rotation for q and k together
            q, k, v = fused
            qk = apply_rope(jnp.concatenate([q, k], axis=-1).reshape(b, t, h + kvh, hd), rope)
            q, k = qk[:, :, :h], qk[:, :, h:]
        v = constrain(v.reshape(b, t, kvh, hd), BTKD)

        new_cache = None
        if cache is not None:
            # Keys and values side by side [L, 2, B, KV, S, hd]: one in-place update writes both, and each
            # layer's keys and values are contiguous [B, KV, S, hd] blocks in the layout of the attention
            # products (no transposed copy of the cache per step).
            kv = cache["kv"]
            new = jnp.stack([k, v]).transpose(0, 1, 3, 2, 4)[None].astype(kv.dtype)  # [1, 2, B, KV, T, hd]
            kv = jax.lax.dynamic_update_slice(kv, new, (layer, 0, 0, 0, cache_index, 0))
            new_cache = {"kv": kv}
            size = (1, 1) + kv.shape[2:]
            k, v = (jax.lax.dynamic_slice(kv, (layer, i, 0, 0, 0, 0), size)[0, 0].astype(dt) for i in (0, 1))

        impl = resolve_attention_impl(cfg, cached=cache is not None, seq_len=t)
        if impl == "splash":  # TPU flash attention: causal within each packed segment, no [B, H, T, T] scores
            from remix_jax.models.tpu_attention import splash_attention

            out = splash_attention(q, k, v, segment_ids)
        elif impl == "cudnn":
            # Flash attention: causal, keys restricted to each row's non-padding prefix. Valid for
            # right-padded single-segment rows (training batches without packing).
            lengths = jnp.sum(segment_ids != 0, axis=-1).astype(jnp.int32)
            out = jax.nn.dot_product_attention(
                q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                implementation="cudnn")
        else:
            out = xla_attention(q, k, v, mask, heads_first=cache is not None)
        out = checkpoint_name(constrain(out, BTHD), "attn_out").reshape(b, t, h * hd)
        o = fused_product(self, out, "o_kernel", mk(cfg.hidden_size, ("heads", "embed"), name="o_proj"), kw)
        return o, new_cache


class Block(nn.Module):
    config: ModelConfig
    proj_cls: Any = Projection
    mlp_cls: Any = MLP
    deterministic: bool = True
    fold_norms: bool = False  # see Decoder.fold_norms

    @nn.compact
    def __call__(self, carry, segment_ids, mask, cache_index, rope):
        """carry = (x [B, T, d], the whole KV cache or None, this layer's index) -> (next carry, None);
        mask (or None) and rope: the attention mask and rotary tables, computed once and shared by all layers.

        The cache travels through the layer loop as part of the carry, so each layer updates the new
        positions of its own slice in place instead of the loop slicing out and restacking every layer's
        cache at each step."""
        x, cache, layer = carry
        x = constrain(x, BTD)
        cfg = self.config
        dt, pdt = _dt(cfg.dtype), _dt(cfg.param_dtype)
        token_mask = segment_ids != 0
        kw = dict(deterministic=self.deterministic, token_mask=token_mask)

        def norm(h, name):  # (input of the projections, its row scale when the norm's scale is folded)
            if self.fold_norms:
                return h, rms_inverse(h, cfg.rms_norm_eps)
            return RMSNorm(cfg.rms_norm_eps, dt, pdt, name=name)(h), None

        hn, rs = norm(x, "input_norm")
        a, new_cache = Attention(cfg, self.proj_cls, name="attn")(
            hn, segment_ids, cache, layer, mask, cache_index, rope, row_scale=rs, **kw)
        x = x + a
        hn, rs = norm(x, "post_attn_norm")
        x = self.mlp_cls(cfg, self.proj_cls, name="mlp")(hn, row_scale=rs, residual=x, layer=layer, **kw)
        return (x.astype(dt), new_cache, layer + 1), None


class Decoder(nn.Module):
    """The causal LM. ``__call__`` returns (logits [B, T, vocab] float32, new_cache or None)."""

    config: ModelConfig
    proj_cls: Any = Projection
    mlp_cls: Any = MLP
    # Inference only: the blocks' RMSNorm scales are folded into the "fused" kernels (``fuse_projections(
    # fold_norms=True)``), so each block hands its un-normalised input to the fused matmuls and multiplies their
    # rows by 1 / RMS (one elementwise kernel less per norm while decoding). Set by generation.
    fold_norms: bool = False
    # Inference only: the STACKED collection is handed whole to every layer (nn.scan's variable_broadcast, without
    # its constancy check, which a pallas_call fails on jax 0.11). Set by generation with ReMix's decode kernels.
    broadcast_stacked: bool = False

    def _layers(self, deterministic: bool):
        cfg = self.config
        block = Block
        policy = REMAT_POLICIES[cfg.remat] if cfg.remat != "none" else None
        if cfg.remat != "none":
            block = nn.remat(Block, policy=policy, prevent_cse=False)
        return nn.scan(
            block,
            variable_axes={True: 0},
            split_rngs={True: True},
            in_axes=(nn.broadcast,) * 4,
            length=cfg.num_layers,
            unroll=min(cfg.scan_unroll, cfg.num_layers),
            metadata_params={nn.PARTITION_NAME: "layers"},
            **(dict(variable_broadcast=STACKED, check_constancy_invariants=False) if self.broadcast_stacked else {}),
        )(cfg, self.proj_cls, self.mlp_cls, deterministic, self.fold_norms, name="layers")

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None, positions: Array | None = None,
                 cache: dict | None = None, deterministic: bool = True, return_hidden: bool = False):
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        if positions is None:
            positions = positions_from_segments(segment_ids)
        cfg = self.config
        dt, pdt = _dt(cfg.dtype), _dt(cfg.param_dtype)
        embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt, name="embed",
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        x = constrain(embed(tokens), BTD)
        if cache is not None:
            idx = cache["index"]
            key_pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, idx))
            key_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(jnp.int32), (0, idx))
            kv = {"kv": cache["kv"]}
        else:
            idx, key_pos, key_seg, kv = 0, positions, segment_ids, None
        rope = rope_tables(cfg, positions)
        impl = resolve_attention_impl(cfg, cached=cache is not None, seq_len=tokens.shape[1])
        mask = None if impl in ("cudnn", "splash") else attention_mask(positions, segment_ids, key_pos, key_seg)
        (x, new_kv, _), _ = self._layers(deterministic)(
            (x, kv, jnp.zeros((), jnp.int32)), segment_ids, mask, idx, rope)
        h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")(constrain(x, BTD))
        new_cache = None
        if cache is not None:
            new_cache = {**new_kv, "pos": key_pos, "seg": key_seg,
                         "index": idx + tokens.shape[1]}
        if cfg.tie_embeddings:
            head = embed.embedding.T
        else:
            head = self.param("lm_head", nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "vocab")), (cfg.hidden_size, cfg.vocab_size), pdt)
        if return_hidden:
            return (h, head), new_cache
        return lm_logits(h, head), new_cache


def lm_logits(h: Array, head: Array) -> Array:
    """Logits [..., vocab] in float32 from final hidden states and the [d, vocab] output matrix."""
    return jnp.einsum("...d,dv->...v", h, head.astype(h.dtype), preferred_element_type=jnp.float32)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache for ``batch`` rows of up to ``max_len`` tokens (prompt + generation): "kv"
    [L, 2, B, KV, max_len, hd] (keys, values), and the position, segment id and count of the filled slots."""
    dtype = dtype or _dt(cfg.dtype)
    shape = (cfg.num_layers, 2, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return {"kv": jnp.zeros(shape, dtype),
            "pos": jnp.zeros((batch, max_len), jnp.int32), "seg": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}


def init_params(model: Decoder, rng: Array, seq_len: int = 8) -> dict:
    """Randomly initialised, unboxed variables of ``model`` ({"params": ...}; adapters add collections)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    variables = model.init({"params": rng, "routing": rng}, tokens)
    return nn.meta.unbox(variables)


def logical_axes(model: Decoder, seq_len: int = 8) -> dict:
    """Pytree of logical axis-name tuples (PartitionSpec of logical names) matching the variables."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                                  "routing": jax.random.key(0)}, tokens))
    return nn.get_partition_spec(abstract)
