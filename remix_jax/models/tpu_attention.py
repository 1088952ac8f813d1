"""Causal self-attention on TPUs without the [B, H, T, T] score matrix: jax's Pallas splash-attention kernel.

``splash_attention(q, k, v, segment_ids)`` computes softmax(q k^T / sqrt(hd)) v with a causal mask and packed
sequences kept apart (segment ids, as the XLA path's ``attention_mask``), with grouped-query attention (q heads
a multiple of the kv heads) handled by the kernel itself. The kernel works on one example's [heads, T, hd];
it is vmapped over the batch and, when the step is traced inside ``parallel.logical.activation_sharding`` on a
mesh of several devices, wrapped in ``shard_map`` over that mesh (rows over data x fsdp, heads over tensor;
MaxText's layout), since XLA cannot partition a Pallas kernel itself.

Causality is by index within the row. It equals the XLA path's (key position <= query position within a
segment) whenever positions increase along each segment, as they do for packed and padded training rows.
Padding (segment 0) attends to padding only; its outputs are never read by the loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from remix_jax.parallel import logical

Array = jax.Array

MIN_BLOCK = 128  # the kernel's key blocks are multiples of the TPU's 128 lanes
Q_AXES = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
KV_AXES = ("activation_batch", "activation_kv_heads", "activation_length", "activation_kv")


def supports(seq_len: int) -> bool:
    """Whether the kernel takes rows of ``seq_len`` tokens (a multiple of 128)."""
    return seq_len % MIN_BLOCK == 0


def block_sizes(seq_len: int) -> splash.BlockSizes:
    """Tiles of 512 tokens where they divide T (MaxText's default), else 256 or 128; forward and backward."""
    b = next(s for s in (512, 256, MIN_BLOCK) if seq_len % s == 0)
    return splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                             block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)


def _kernel(q: Array, k: Array, v: Array, seg: Array, interpret: bool = False) -> Array:
    """q [B, H, T, hd], k/v [B, KV, T, hd], seg [B, T] (one device's shard) -> [B, H, T, hd]."""
    h, t = q.shape[1], q.shape[2]
    mask = splash.MultiHeadMask([splash.CausalMask((t, t)) for _ in range(h)])
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=block_sizes(t),
                                    interpret=interpret)
    return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(seg, seg))


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, interpret: bool = False) -> Array:
    """q [B, T, H, hd], k/v [B, T, KV, hd], segment_ids [B, T] (0 = padding) -> [B, T, H, hd] in q's dtype.
    interpret: run the kernel in Pallas' interpreter (any backend; tests)."""
    b, t, h, hd = q.shape
    if not supports(t):
        raise ValueError(f"splash attention needs a sequence length that is a multiple of {MIN_BLOCK}, got {t} "
                         "(set data.max_length accordingly, or model.attention_impl='xla')")
    qt = (q * jnp.asarray(hd ** -0.5, q.dtype)).transpose(0, 2, 1, 3)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    seg = segment_ids.astype(jnp.int32)
    mesh = logical.active_mesh()
    if mesh is None or mesh.size == 1:
        out = _kernel(qt, kt, vt, seg, interpret)
    else:
        q_spec = logical.activation_spec(Q_AXES, qt.shape, mesh)
        kv_spec = logical.activation_spec(KV_AXES, kt.shape, mesh)
        if kv_spec[1] != q_spec[1]:  # kv heads that the tensor axis does not divide: keep every head local
            q_spec = PartitionSpec(q_spec[0], None, *q_spec[2:])
            kv_spec = PartitionSpec(kv_spec[0], None, *kv_spec[2:])
        specs = (q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0], None))
        out = jax.shard_map(functools.partial(_kernel, interpret=interpret), mesh=mesh, in_specs=specs,
                            out_specs=q_spec, check_vma=False)(qt, kt, vt, seg)
    return out.transpose(0, 2, 1, 3)
