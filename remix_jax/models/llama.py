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
    lm_head                             [d, vocab]   (absent when embeddings are tied: the embedding is the head)

Adapters attach without editing this file: ``Decoder(config, proj_cls=..., mlp_cls=...)`` takes the
module classes used for every linear projection and for the FFN. Replacements must keep the base
parameter names (``kernel``/``bias``; ``gate_proj``/``up_proj``/``down_proj``) and may add variables in
other collections. Both are called as ``module(x, deterministic=..., token_mask=...)``.

Inputs: tokens [B, T] int32; segment_ids [B, T] (0 = padding, 1.. = packed sequences); positions
[B, T] (default: position within each segment). Attention and its KV cache are in ``models.attention``
(``init_cache``); at inference the projections read the "fused" collection when present (``models.fused``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from remix_jax.models.attention import Attention, attention_mask, resolve_attention_impl, rope_tables
from remix_jax.models.fused import FUSED, STACKED, fused_product, fused_products
from remix_jax.models.model_config import ModelConfig
from remix_jax.models.remat import LAYER_INPUT, LAYER_INPUT_KEPT, PROJ_OUT, REMAT_POLICIES
from remix_jax.models.unrolled import unrolled_remat_scan
from remix_jax.parallel.logical import constrain

Array = jax.Array

# Logical axis names of the activations (parallel/logical.py maps them to the mesh; no-ops without a mesh).
BTD = ("activation_batch", "activation_length", "activation_embed")
BTF = ("activation_batch", "activation_length", "activation_mlp")

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
        if self.chunks(row_scale):
            return add_residual(residual, self.chunked(x, deterministic, token_mask))
        gate, up, down = self.projections()
        kw = dict(deterministic=deterministic, token_mask=token_mask)
        g, u = self.gate_up(x, gate, up, kw, row_scale)
        h = checkpoint_name(constrain(nn.silu(g) * u, BTF), "ffn_hidden")
        return add_residual(residual, self.down_product(h, down, kw))

    def chunks(self, row_scale: Array | None) -> bool:
        """Whether this FFN runs in ``config.mlp_chunks`` chunks: set above 1, and not with inference's fused
        kernels or folded norms."""
        return self.config.mlp_chunks > 1 and row_scale is None and not self.has_variable(FUSED, "gate_up_kernel")

    def chunked(self, x: Array, deterministic: bool, token_mask: Array | None) -> Array:
        """down(silu(gate(x)) * up(x)) over ``config.mlp_chunks`` chunks of positions, each under its own remat
        (nothing saved, CSE prevented): the backward pass recomputes and differentiates one chunk at a time. The
        projections are made inside each lifted call (the same names, so the same parameters)."""
        def piece(module, xc, mc):
            gate, up, down = module.projections()
            kw = dict(deterministic=deterministic, token_mask=mc)
            return down(constrain(nn.silu(gate(xc, **kw)) * up(xc, **kw), BTF), **kw)

        piece = nn.remat(piece, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=True)
        t = x.shape[1]
        size = -(-t // self.config.mlp_chunks)
        outs = [piece(self, x[:, s:s + size], None if token_mask is None else token_mask[:, s:s + size])
                for s in range(0, t, size)]
        return constrain(jnp.concatenate(outs, axis=1), BTD)

    def down_product(self, h: Array, down, kw: dict) -> Array:
        """down(h): with the "fused" down_kernel when present (inference), else the projection itself."""
        return fused_product(self, h, "down_kernel", down, kw)


def kept_positions(cfg: ModelConfig, seq_len: int) -> int:
    """How many leading positions of a block's input stay on device under remat "offload_layer_input":
    ``cfg.offload_keep_fraction`` of ``seq_len``, rounded (ModelConfig allows the fraction with that policy only)."""
    return min(int(round(seq_len * cfg.offload_keep_fraction)), seq_len)


def _name_layer_input(x: Array, cfg: ModelConfig) -> Array:
    """The block's input under its checkpoint name(s): LAYER_INPUT, or, when part of it stays on device, its first
    ``kept_positions`` positions as LAYER_INPUT_KEPT and the rest as LAYER_INPUT (joined again: one copy)."""
    keep = kept_positions(cfg, x.shape[1])
    if keep == 0:
        return checkpoint_name(x, LAYER_INPUT)
    if keep == x.shape[1]:
        return checkpoint_name(x, LAYER_INPUT_KEPT)
    kept, moved = checkpoint_name(x[:, :keep], LAYER_INPUT_KEPT), checkpoint_name(x[:, keep:], LAYER_INPUT)
    return constrain(jnp.concatenate([kept, moved], axis=1), BTD)


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
        cfg = self.config
        x = _name_layer_input(constrain(x, BTD), cfg)
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
        # Initialisation runs a rolled loop: the same variables (the random streams are split per layer before
        # the loop, whatever its unroll), in a program that compiles in a fraction of the time.
        unroll = 1 if self.is_initializing() else min(cfg.scan_unroll, cfg.num_layers)
        if cfg.remat != "none":
            # In a rolled (or partly unrolled) loop the forward and the backward pass are two loops, and XLA
            # cannot merge a block's recompute with its forward: prevent_cse=False, as JAX advises under scan. A
            # fully unrolled loop is straight-line code, where XLA's CSE merges them and silently undoes the
            # policy (1B LoRA, save_proj_out, one H100: 14.1 GiB against 10.8 with the recompute protected), so
            # there the recompute is kept apart. There, too, each checkpoint takes the stacked variables whole and
            # slices its layer inside (models.unrolled; under nn.scan every layer's slices would be kept from the
            # forward to the backward pass), except while initialising (nn.scan creates the variables) and with
            # the STACKED collection broadcast (inference).
            if unroll == cfg.num_layers and not self.broadcast_stacked and not self.is_initializing():
                return unrolled_remat_scan(Block, cfg.num_layers, policy, {nn.PARTITION_NAME: "layers"})(
                    cfg, self.proj_cls, self.mlp_cls, deterministic, self.fold_norms, name="layers")
            block = nn.remat(Block, policy=policy, prevent_cse=unroll == cfg.num_layers)
        return nn.scan(
            block,
            variable_axes={True: 0},
            split_rngs={True: True},
            in_axes=(nn.broadcast,) * 4,
            length=cfg.num_layers,
            unroll=unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
            **(dict(variable_broadcast=STACKED, check_constancy_invariants=False) if self.broadcast_stacked else {}),
        )(cfg, self.proj_cls, self.mlp_cls, deterministic, self.fold_norms, name="layers")

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None, positions: Array | None = None,
                 cache: dict | None = None, deterministic: bool = True, return_hidden: bool = False,
                 branch_ids: Array | None = None):
        """branch_ids [B, T] (no cache): each segment is a shared prefix (branch 0) and branches that attend to it
        and to themselves only (``attention.attention_mask``); XLA attention."""
        if branch_ids is not None and cache is not None:
            raise ValueError("branch_ids apply to a forward pass without a KV cache")
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
        impl = "xla" if branch_ids is not None else resolve_attention_impl(cfg, cached=cache is not None,
                                                                            seq_len=tokens.shape[1])
        mask = None if impl in ("cudnn", "splash") else attention_mask(positions, segment_ids, key_pos, key_seg,
                                                                        branch_ids)
        (x, new_kv, _), _ = self._layers(deterministic)(
            (x, kv, jnp.zeros((), jnp.int32)), segment_ids, mask, idx, rope)
        h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")(constrain(x, BTD))
        new_cache = None
        if cache is not None:
            new_cache = {**new_kv, "pos": key_pos, "seg": key_seg,
                         "index": idx + tokens.shape[1]}
        if cfg.tie_embeddings:
            # The embedding as stored, [vocab, d] (lm_logits reads either orientation): its transpose would be a
            # materialised [d, vocab] copy wherever the head enters a loop (the chunked loss: 0.5 GiB at 1B).
            # A square one is transposed, since [d, d] reads as [d, vocab].
            head = embed.embedding if cfg.vocab_size != cfg.hidden_size else embed.embedding.T
        else:
            head = self.param("lm_head", nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "vocab")), (cfg.hidden_size, cfg.vocab_size), pdt)
        if return_hidden:
            return (h, head), new_cache
        return lm_logits(h, head), new_cache


def vocab_major(head: Array, d: int) -> bool:
    """Whether the output matrix ``head`` is [vocab, d] (a tied embedding as stored) rather than [d, vocab]: its
    first axis is not the hidden size d (a [d, d] matrix reads as [d, vocab])."""
    if head.ndim != 2 or d not in head.shape:
        raise ValueError(f"output matrix {head.shape} has no axis of the hidden size {d}")
    return head.shape[0] != d


def lm_logits(h: Array, head: Array) -> Array:
    """Logits [..., vocab] in float32 from final hidden states [..., d] and the output matrix, [d, vocab] or
    [vocab, d] (``vocab_major``): the product reads either layout without a transposed copy."""
    spec = "...d,vd->...v" if vocab_major(head, h.shape[-1]) else "...d,dv->...v"
    return jnp.einsum(spec, h, head.astype(h.dtype), preferred_element_type=jnp.float32)


def init_params(model: Decoder, rng: Array, seq_len: int = 8) -> dict:
    """Randomly initialised, unboxed variables of ``model`` ({"params": ...}; adapters add collections)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    # One compiled program instead of one dispatch per initialiser: a few times faster for small models (a tiny
    # model's 4.3 s -> 1.4 s on a CPU), and no op-by-op intermediates for large ones.
    variables = jax.jit(lambda r: model.init({"params": r, "routing": r}, tokens))(rng)
    return nn.meta.unbox(variables)


def logical_axes(model: Decoder, seq_len: int = 8) -> dict:
    """Pytree of logical axis-name tuples (PartitionSpec of logical names) matching the variables."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                                  "routing": jax.random.key(0)}, tokens))
    return nn.get_partition_spec(abstract)
