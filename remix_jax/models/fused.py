"""The decoder's inference layout: the "fused" collection of kernel copies that its projections read when present.

Generation builds the collection once per call (``inference.variables.fuse_projections``: q/k/v concatenated, gate/up
concatenated, o and down, every matrix [out, in]; ``fuse_remix_inference``: ReMix's precomputed FFN). The decoder
(``models.llama``) and the adapters read it here, so that without the collection (training, scoring) every
projection runs as itself:

- ``fused_products``: several projections of one input from one matmul with their concatenated kernel, each plus
  its own adapter delta; ``fused_product``: one projection from its stored copy;
- ``inference_layout`` / ``inference_product``: the [out, in] layout of those matrices and the product with one;
- ``STACKED``: the inference-only collection every layer sees whole (ReMix's decode kernels).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

FUSED = "fused"  # collection of inference-only concatenated kernels (``inference.variables.fuse_projections``)
# Inference-only collection seen whole by every layer (not sliced by the layer loop): arrays stacked over layers
# that a kernel indexes by the layer's number itself (``Decoder.broadcast_stacked``).
STACKED = "stacked"


def inference_layout(kernel: Array) -> Array:
    """A kernel [..., in, out] in the layout of the "fused" collection, [..., out, in] (each output's weights
    contiguous): a product with a single token (batch-1 decoding) is then a row reduction, which XLA fuses with
    the multiply into one kernel, where the [in, out] layout gives a column reduction that it splits in two (the
    full elementwise product written out, then summed). Larger products run as GEMMs in either layout."""
    return jnp.swapaxes(kernel, -1, -2)


def inference_product(x: Array, w: Array, dtype, preferred_element_type=None) -> Array:
    """x [..., d] times a "fused"-collection matrix w [f, d] (``inference_layout``) -> [..., f], in ``dtype``
    (accumulated and returned in ``preferred_element_type`` when given)."""
    return jnp.einsum("...d,fd->...f", x.astype(dtype), w.astype(dtype), preferred_element_type=preferred_element_type)


def fused_products(module: nn.Module, x: Array, kernel_name: str, bias_name: str | None, projections, sizes,
                   kw: dict, with_delta: bool = True, row_scale: Array | None = None) -> list[Array] | None:
    """The outputs of ``projections`` (all reading x [..., d]) from one matmul with the concatenated kernel
    of the "fused" collection ([f, d], ``inference_layout``), each plus its own ``delta`` (only the base
    products when ``with_delta`` is False); None when the collection does not hold ``kernel_name`` or a
    projection is not ``fusable`` (then the caller applies them one by one). bias_name: the fused bias, when
    the projections can have one (else None). sizes: output width of each projection, in the concatenation's
    order. row_scale [..., 1]: the input's RMSNorm factor when the norm's scale is folded into the kernel (x is
    then the un-normalised input): the product rows are multiplied by it; the fused kernel must then be there
    and no projection may add a delta (there is no normalised input to give it)."""
    if not module.has_variable(FUSED, kernel_name) or not all(p.fusable() for p in projections):
        if row_scale is not None:
            raise ValueError(f"fold_norms: {module.name} needs the fused {kernel_name} "
                             "(fuse_projections(fold_norms=True))")
        return None
    dt = projections[0].dtype
    w = module.get_variable(FUSED, kernel_name)
    if row_scale is None:
        y = inference_product(x, w, dt)
    else:
        y = (inference_product(x, w, dt, jnp.float32) * row_scale).astype(dt)
    if bias_name is not None and module.has_variable(FUSED, bias_name):
        y = y + module.get_variable(FUSED, bias_name).astype(dt)
    outs, start = [], 0
    for p, size in zip(projections, sizes, strict=True):
        out = y[..., start:start + size]
        d = p.delta(x, **kw) if with_delta else None
        if d is not None and row_scale is not None:
            raise ValueError(f"{p.name}: an adapter delta cannot read a folded norm's input (fold_norms)")
        outs.append(out if d is None else out + d.astype(out.dtype))
        start += size
    return outs


def fused_product(module: nn.Module, x: Array, kernel_name: str, proj, kw: dict) -> Array:
    """proj(x) with the "fused" collection's copy of its kernel (``kernel_name``, ``inference_layout``) when
    present and the projection is ``fusable`` (inference), else the projection itself."""
    fused = fused_products(module, x, kernel_name, None, (proj,), (proj.features,), kw)
    return fused[0] if fused is not None else proj(x, **kw)
