"""Causal self-attention of the decoder (``models.llama``): rotary embeddings, grouped-query heads, the KV cache, and
the choice of kernel (XLA's, cuDNN flash attention on GPUs, the Pallas splash kernel on TPUs: ``tpu_attention``).

The KV cache (``init_cache``) holds the keys and values of every layer side by side, [L, 2, B, KV, S, hd], plus the
positions and segment ids of the cached tokens, so left padding, right padding and packing all mask correctly during
incremental decoding; each layer updates its own slice in place (``Attention``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from remix_jax.models.fused import fused_product, fused_products
from remix_jax.models.model_config import ModelConfig, rope_inv_freq
from remix_jax.parallel.logical import constrain, target_platform

Array = jax.Array

# Logical axis names of the attention activations (parallel/logical.py maps them to the mesh).
BTHD = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BTKD = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")

# The primitive of cuDNN flash attention's forward pass. Its backward needs the forward's output and softmax
# statistics; under a remat policy that saves neither, the backward pass runs the attention forward again to get
# them. The policies of remat.REMAT_POLICIES named here also save this primitive's two outputs, so the forward runs
# once; the output then carries no "attn_out" name (saved under both, a scanned layer stack would store it twice).
# The statistics are float32 [B, heads, T] (1 MiB a layer at 8 x 1024 tokens and 32 heads); the output is what
# "attn_out" names, which the other policies save only when the output projection is adapted.
CUDNN_ATTENTION_FWD = "dot_product_attention_fwd_wrapper"
REMAT_SAVING_CUDNN_FORWARD = frozenset({"save_proj_out_attention"})


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


def attention_mask(q_pos, q_seg, k_pos, k_seg, branch=None) -> Array:
    """Boolean [B, 1, T, S]: same non-padding segment and key position <= query position.

    branch [B, T] (queries and keys are the same tokens, no cache): a segment is a tree, a shared prefix (branch
    0) followed by branches 1, 2, ... whose positions each continue from the prefix; a token also needs its key
    in the prefix or in its own branch (the options of a question scored in one row: ``evaluation.scoring``)."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    causal = k_pos[:, None, :] <= q_pos[:, :, None]
    if branch is not None:
        same &= (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    return (same & causal)[:, None]


def cudnn_seq_lengths(segment_ids: Array) -> Array:
    """The per-row lengths [B] int32 that cuDNN flash attention reads: each row's non-padding tokens, at least 1.
    A row of padding only (the filler rows of a last, partial evaluation batch) has length 0, for which cuDNN
    before 9.25 returns NaN (cudnn-frontend issue 943); NaN there reached the held-out loss through
    ``NaN * 0``. With length 1 such a row attends to its first (padding) token: finite values nothing reads."""
    return jnp.maximum(jnp.sum(segment_ids != 0, axis=-1), 1).astype(jnp.int32)


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
    proj_cls: Any  # the decoder's projection class (``llama.Projection`` or an adapted one)

    @nn.compact
    def __call__(self, x, segment_ids, cache, layer, mask, cache_index, rope,
                 deterministic: bool = True, token_mask=None, row_scale=None):
        """cache: None (training, prefill-free scoring) or the whole KV cache {"kv": [L, 2, B, KV, S, hd]};
        this layer writes its new keys/values at [layer, :, cache_index] in place and attends over its slice.
        mask: [B, 1, T, S] for XLA attention, None for the flash kernels (cuDNN, splash: ``resolve_attention_impl``).
        row_scale: x is the un-normalised block input and row_scale its RMSNorm factor (fold_norms).
        Returns (output [B, T, d], the updated cache or None)."""
        cfg = self.config
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
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

        # A mask means XLA attention: the decoder makes one exactly when that is the kernel (or for branches).
        impl = "xla" if mask is not None else resolve_attention_impl(cfg, cached=cache is not None, seq_len=t)
        if impl == "splash":  # TPU flash attention: causal within each packed segment, no [B, H, T, T] scores
            from remix_jax.models.tpu_attention import splash_attention

            out = splash_attention(q, k, v, segment_ids)
        elif impl == "cudnn":
            # Flash attention: causal, keys restricted to each row's non-padding prefix. Valid for
            # right-padded single-segment rows (training batches without packing).
            lengths = cudnn_seq_lengths(segment_ids)
            out = jax.nn.dot_product_attention(
                q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                implementation="cudnn")
        else:
            out = xla_attention(q, k, v, mask, heads_first=cache is not None)
        out = constrain(out, BTHD)
        if impl != "cudnn" or cfg.remat not in REMAT_SAVING_CUDNN_FORWARD:
            out = checkpoint_name(out, "attn_out")
        out = out.reshape(b, t, h * hd)
        o = fused_product(self, out, "o_kernel", mk(cfg.hidden_size, ("heads", "embed"), name="o_proj"), kw)
        return o, new_cache


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache for ``batch`` rows of up to ``max_len`` tokens (prompt + generation): "kv"
    [L, 2, B, KV, max_len, hd] (keys, values), and the position, segment id and count of the filled slots."""
    dtype = dtype or jnp.dtype(cfg.dtype)
    shape = (cfg.num_layers, 2, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return {"kv": jnp.zeros(shape, dtype),
            "pos": jnp.zeros((batch, max_len), jnp.int32), "seg": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}
