"""ReMix's routed FFN halves while decoding, as two Pallas (Triton) kernels for GPUs.

``remix_ffn.remix_ffn_fused`` runs a block's FFN as y = x [W_gate | W_up | A_all | router parts] (one matmul),
the top-k weighting of the experts' hidden states, their B products, the SwiGLU, the down matmul
y2 = hidden [W_down | A_all of down], the weighting of down's hidden state and its B product; the block then
adds the residual. With XLA each elementwise step between two matmuls is a kernel of its own and each B slice is
copied out of the layers' stack before its matmul (docs/notes/benchmarks-log.md, generation runs
H-K). Here the two routed
halves are one kernel each, as many kernels per layer as the frozen FFN's (its SwiGLU and its residual add):

    routed_front: hidden = silu(g) * u,  g = round(s y_gate) + round((round(s y_A_gate) * pi) B_gate),  u alike
    routed_back:  out = round(x + round(y2_down + round((y2_A * pi) B_down)))

where s = rsqrt(sum(x^2) / d + eps) is the RMSNorm's row factor (the norm's scale is folded into the matrices;
``routed_front`` takes the sum of squares of x itself, so no kernel computes it), pi the top-k weights of the router
logits z (omega on the k experts lax.top_k selects, ties to the lower index, else 0), each round() a rounding to the
compute dtype as XLA's bf16 ops do. Both kernels take the B matrices of all layers [L * rows, n, r] and the layer
as index * stride + offset (the layer loop's counter, so that no kernel computes it and no B slice is copied).

How a call is tiled depends on its tokens (``tiling``): up to 8, one token per program and the B products as
multiply-and-sum over [n, r] blocks (a ``tl.dot`` would be mostly padding and its layout conversions cost more
than the product); 9 to 16, all tokens in each program and the B products by ``tl.dot``, and the down product
handed to ``routed_back`` as partial sums over its inner dimension (``down_partials``), which it adds itself: at
16 tokens XLA splits that product and would add the parts in a kernel of its own. Generation uses the kernels for
calls of at most ``MAX_TOKENS`` tokens (decode steps of batches up to 16); prefill and larger batches keep XLA's
form (``GenerationConfig.remix_kernels``; measurements in docs/notes/benchmarks-log.md generation runs L and M).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.models.fused import inference_product
from remix_jax.routing.sampler import total_order_key

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RoutedLayout:
    """Shapes of a block's routed FFN. y [m, width]: gate/up products in [0, 2f), gate's and up's experts' hidden
    states in [2f, 2f + 2nr), then ``parts`` router matrices of n columns each (their sum is z)."""

    d: int
    f: int
    n: int
    r: int
    k: int
    omega: float
    parts: int
    eps: float

    @property
    def nr(self) -> int:
        return self.n * self.r

    @property
    def z_start(self) -> int:
        return 2 * self.f + 2 * self.nr

    @property
    def width(self) -> int:
        return self.z_start + self.parts * self.n


MAX_TOKENS = 16  # calls of more tokens (prefill, decode steps of batches > 16) keep XLA's form, faster there
MODES = ("auto", "xla", "pallas")


def available() -> bool:
    """Whether the default device compiles the kernels: a CUDA GPU of compute capability 8.0 or newer (Pallas's
    Triton backend)."""
    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    try:
        return dev.platform == "gpu" and cc is not None and float(cc) >= 8.0
    except (TypeError, ValueError):
        return False


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"remix_kernels={mode!r}: expected one of {MODES}")
    return mode


def use_kernels(mode: str) -> bool:
    """``GenerationConfig.remix_kernels``: "auto" (the kernels where ``available``), "xla" (never) or "pallas"
    (always; in Pallas's interpreter off GPUs, slow: for tests)."""
    check_mode(mode)
    return mode == "pallas" or (mode == "auto" and available())


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _ds(pl, start, size):
    """pl.ds with a traced start (a block may run past the array's end; masked loads read nothing there)."""
    return pl.ds(jnp.asarray(start, jnp.int32), size)


def _rounded(v, dtype):
    return v.astype(dtype).astype(jnp.float32)


def _top_k_weights(z, lay: RoutedLayout, dtype):
    """z [bm, n] float32 router logits -> [bm, n] float32: omega (as ``dtype`` holds it) on the k experts
    lax.top_k selects (ties to the lower index), else 0. rank_e = #{i : key_i > key_e, or equal and i < e}, by
    pairwise comparison of [bm, n, n] (``sampler.descending_rank``'s rule; a Triton kernel cannot slice its
    columns)."""
    key = total_order_key(z)
    k_e, k_i = key[:, :, None], key[:, None, :]
    e = jnp.arange(lay.n)[None, :, None]
    i = jnp.arange(lay.n)[None, None, :]
    beats = (k_i > k_e) | ((k_i == k_e) & (i < e))
    rank = jnp.sum(beats.astype(jnp.int32), axis=2)
    return jnp.where(rank < lay.k, float(np.asarray(lay.omega, dtype)), 0.0)


def _mix(hw, b):
    """hw [bm, n, r] times b [bc, n, r] summed over (n, r) -> [bm, bc] float32 (no tl.dot: at up to 8 tokens the
    blocks are far below a tensor-core tile, and a dot's layout conversions cost more than this; ``_dot`` serves
    9-16 tokens)."""
    prod = hw.astype(jnp.float32)[:, None, :, :] * b.astype(jnp.float32)[None, :, :, :]
    return jnp.sum(jnp.sum(prod, axis=3), axis=2)


def _program(pl, plgpu, layer_ref, y_ref, *, m, bm, bc, cols, stride, offset, lay: RoutedLayout):
    """This program's rows and columns (ds and masks), its layer and its rows' router logits z [bm, n]."""
    i, j = pl.program_id(0), pl.program_id(1)
    rows = _ds(pl, i * bm, bm)
    row_ok = i * bm + jnp.arange(bm) < m
    col_ok = j * bc + jnp.arange(bc) < cols
    z = sum(plgpu.load(y_ref.at[rows, _ds(pl, lay.z_start + p * lay.n, lay.n)], mask=row_ok[:, None], other=0.0)
            for p in range(lay.parts))
    return rows, j * bc, row_ok, col_ok, row_ok[:, None] & col_ok[None, :], layer_ref[0] * stride + offset, z


def _dot(pl, hw, b):
    """The same product as ``_mix`` by ``tl.dot``: hw [bm, n, r] (values of ``b``'s dtype) and b [bc, nr]."""
    hw2 = jnp.reshape(hw, (hw.shape[0], -1)).astype(b.dtype)
    return jax.lax.dot_general(hw2, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _front_kernel(layer_ref, y_ref, y3_ref, x_ref, b_ref, o_ref, *, m, lay: RoutedLayout, bm, bf, stride, offset,
                  dtype, dot):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    n, r, f = lay.n, lay.r, lay.f
    # Every load first: a program is bound by load latency, the arithmetic after is small.
    rows, c0, row_ok, col_ok, cmask, layer, z = _program(pl, plgpu, layer_ref, y_ref, m=m, bm=bm, bc=bf, cols=f,
                                                         stride=stride, offset=offset, lay=lay)
    d_ok = jnp.arange(_pow2(lay.d)) < lay.d
    xr = plgpu.load(x_ref.at[rows, _ds(pl, 0, _pow2(lay.d))], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0).astype(jnp.float32)
    h = [plgpu.load(y3_ref.at[rows, _ds(pl, (2 * f + s * lay.nr) // r, n), _ds(pl, 0, r)],
                    mask=row_ok[:, None, None], other=0.0) for s in range(2)]
    if dot:
        b = [plgpu.load(b_ref.at[_ds(pl, (layer * 2 + s) * f + c0, bf), _ds(pl, 0, lay.nr)],
                        mask=col_ok[:, None], other=0.0) for s in range(2)]
    else:
        b = [plgpu.load(b_ref.at[_ds(pl, (layer * 2 + s) * f + c0, bf), _ds(pl, 0, n), _ds(pl, 0, r)],
                        mask=col_ok[:, None, None], other=0.0) for s in range(2)]
    base = [plgpu.load(y_ref.at[rows, _ds(pl, s * f + c0, bf)], mask=cmask, other=0.0) for s in range(2)]
    pi = _top_k_weights(z, lay, dtype)[:, :, None]
    scale = jax.lax.rsqrt(jnp.sum(xr * xr, axis=1) / lay.d + lay.eps)[:, None]
    out = []
    for s in range(2):  # gate, up
        hw = _rounded(_rounded(h[s] * scale[:, :, None], dtype) * pi, dtype)
        mix = _dot(pl, hw, b[s]) if dot else _mix(hw, b[s])
        out.append(_rounded(_rounded(base[s] * scale, dtype) + _rounded(mix, dtype), dtype))
    g, u = out
    hidden = _rounded(_rounded(g * _rounded(jax.nn.sigmoid(g), dtype), dtype) * u, dtype)
    plgpu.store(o_ref.at[rows, _ds(pl, c0, bf)], hidden.astype(o_ref.dtype), mask=cmask)


def _back_kernel(layer_ref, y_ref, y2_ref, y23_ref, x_ref, b_ref, o_ref, *, m, lay: RoutedLayout, bm, bd, stride,
                 offset, dtype, dot, splits):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    f32, n, r, d = jnp.float32, lay.n, lay.r, lay.d
    rows, c0, row_ok, col_ok, cmask, layer, z = _program(pl, plgpu, layer_ref, y_ref, m=m, bm=bm, bc=bd, cols=d,
                                                         stride=stride, offset=offset, lay=lay)
    if splits:  # y2 as float32 partial sums [splits, m, d + nr] (``down_partials``): summed and rounded here
        parts = _ds(pl, 0, splits)
        u = _rounded(jnp.sum(plgpu.load(y23_ref.at[parts, rows, _ds(pl, d // r, n), _ds(pl, 0, r)],
                                        mask=row_ok[None, :, None, None], other=0.0), axis=0), dtype)
        base = _rounded(jnp.sum(plgpu.load(y2_ref.at[parts, rows, _ds(pl, c0, bd)], mask=cmask[None], other=0.0),
                                axis=0), dtype)
    else:
        u = plgpu.load(y23_ref.at[rows, _ds(pl, d // r, n), _ds(pl, 0, r)], mask=row_ok[:, None, None], other=0.0)
        base = plgpu.load(y2_ref.at[rows, _ds(pl, c0, bd)], mask=cmask, other=0.0).astype(f32)
    if dot:
        b = plgpu.load(b_ref.at[_ds(pl, layer * d + c0, bd), _ds(pl, 0, lay.nr)], mask=col_ok[:, None], other=0.0)
    else:
        b = plgpu.load(b_ref.at[_ds(pl, layer * d + c0, bd), _ds(pl, 0, n), _ds(pl, 0, r)],
                       mask=col_ok[:, None, None], other=0.0)
    xr = plgpu.load(x_ref.at[rows, _ds(pl, c0, bd)], mask=cmask, other=0.0).astype(f32)
    pi = _top_k_weights(z, lay, dtype)[:, :, None]
    hw = _rounded(u.astype(f32) * pi, dtype)
    mix = _dot(pl, hw, b) if dot else _mix(hw, b)
    out = _rounded(_rounded(base + _rounded(mix, dtype), dtype) + xr, dtype)
    plgpu.store(o_ref.at[rows, _ds(pl, c0, bd)], out.astype(o_ref.dtype), mask=cmask)


def _call(kernel, out_shape, grid, args, interpret: bool, warps: int):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    kw = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=warps, num_stages=1)}
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, interpret=interpret, **kw)(*args)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a call is split into programs: ``rows`` tokens and ``front_cols`` / ``back_cols`` output columns per
    program, ``warps`` per program, and the B products by ``tl.dot`` (``dot``; rows and columns >= 16) or
    multiplied and summed."""

    rows: int
    front_cols: int
    back_cols: int
    warps: int
    dot: bool
    splits: int = 0  # the down product as this many partial sums (``down_partials``); 0: whole


def down_partials(hidden: Array, w: Array, splits: int, dtype) -> Array:
    """The down product hidden [m, K] times w [N, K] ([out, in]) as ``splits`` float32 partial sums over K
    [splits, m, N], for ``routed_back`` to add. At 16 tokens XLA splits this product over K itself and adds the
    parts in a kernel of its own, which the frozen FFN folds into its residual add (docs/notes/benchmarks-log.md
    generation run M)."""
    m, k = hidden.shape
    if splits < 1 or k % splits or w.shape[1] != k:
        raise ValueError(f"down_partials: {splits} partial sums of hidden {hidden.shape} times w {w.shape}")
    h = hidden.astype(dtype).reshape(m, splits, k // splits)
    return jnp.einsum("msk,nsk->smn", h, w.astype(dtype).reshape(w.shape[0], splits, k // splits),
                      preferred_element_type=jnp.float32)


def down_product(hidden: Array, w: Array, dtype, splits: int | None = None) -> Array:
    """What ``routed_back`` takes as y2 for hidden [m, K] and w [N, K]: ``down_partials`` when the call's tiling (or
    ``splits``) asks for partial sums and they divide K, else the product [m, N] in ``dtype``."""
    splits = tiling(hidden.shape[0]).splits if splits is None else splits
    if splits and hidden.shape[-1] % splits == 0:
        return down_partials(hidden, w, splits, dtype)
    return inference_product(hidden, w, dtype)


def tiling(m: int) -> Tiling:
    """The tiling for a call of m tokens, measured on an H200 (docs/notes/benchmarks-log.md generation run M): up to 8
    tokens one token per program and the B products multiplied and summed (a tensor-core tile would be mostly
    padding); 9 to 16 tokens all of them in each program, B by ``tl.dot`` over 64 (front) or 32 (back) columns,
    8 warps."""
    return Tiling(1, 16, 16, 4, False) if m <= 8 else Tiling(16, 64, 32, 8, True, splits=8)


def _tiles(name: str, m: int, lay: RoutedLayout, cols: int | None, rows: int | None, warps: int | None,
           dot: bool | None, front: bool):
    """(rows, columns, warps, dot) of a call: ``tiling(m)``'s where not given; no ``tl.dot`` for n r < 16."""
    t = tiling(m)
    cols = cols or (t.front_cols if front else t.back_cols)
    rows, warps = rows or t.rows, warps or t.warps
    dot = (t.dot and lay.nr >= 16) if dot is None else dot
    if dot and min(rows, cols, lay.nr) < 16:
        raise ValueError(f"{name}: dot=True needs at least 16 rows, columns and n r per program (rows {rows}, "
                         f"columns {cols}, n r {lay.nr})")
    return rows, cols, warps, dot


def supported(lay: RoutedLayout) -> bool:
    """Whether the kernels take this layout: n and r powers of two, y's and y2's widths multiples of r (the
    kernels read the experts' hidden states as [n, r] blocks)."""
    return (lay.n == _pow2(lay.n) and lay.r == _pow2(lay.r) and lay.width % lay.r == 0
            and (2 * lay.f) % lay.r == 0 and lay.d % lay.r == 0)


def _check_layout(lay: RoutedLayout):
    if not supported(lay):
        raise ValueError(f"remix kernels: n and r must be powers of two and the widths of y ({lay.width}), 2f and "
                         f"d multiples of r ({lay})")


def routed_front(y: Array, x: Array, b_gate_up: Array, index: Array, lay: RoutedLayout, dtype, *,
                 stride: int = 1, offset: int = 0, block: int | None = None, rows: int | None = None,
                 warps: int | None = None, dot: bool | None = None, interpret: bool = False) -> Array:
    """hidden [m, f] (``dtype``) from y [m, width] float32, the block input x [m, d] (its RMSNorm factor is taken
    in the kernel) and every layer's gate/up B b_gate_up [L, 2, f, nr] ([out, in]); the layer is
    index[0] * stride + offset."""
    m = y.shape[0]
    if y.shape != (m, lay.width) or b_gate_up.shape[1:] != (2, lay.f, lay.nr) or x.shape != (m, lay.d):
        raise ValueError(f"routed_front: y {y.shape}, x {x.shape}, B {b_gate_up.shape} do not match {lay}")
    _check_layout(lay)
    bm, block, warps, dot = _tiles("routed_front", m, lay, block, rows, warps, dot, front=True)
    dtype = jnp.dtype(dtype)
    kernel = functools.partial(_front_kernel, m=m, lay=lay, bm=bm, bf=block, stride=stride, offset=offset,
                               dtype=dtype, dot=dot)
    b = b_gate_up.reshape(-1, lay.nr) if dot else b_gate_up.reshape(-1, lay.n, lay.r)
    args = (index.reshape(1).astype(jnp.int32), y, y.reshape(m, -1, lay.r), x, b)
    return _call(kernel, jax.ShapeDtypeStruct((m, lay.f), dtype), (-(-m // bm), -(-lay.f // block)), args,
                 interpret, warps)


def routed_back(y: Array, y2: Array, x: Array, b_down: Array, index: Array, lay: RoutedLayout, dtype, *,
                stride: int = 1, offset: int = 0, block: int | None = None, rows: int | None = None,
                warps: int | None = None, dot: bool | None = None, interpret: bool = False) -> Array:
    """x + FFN(x) [m, d] (``dtype``) from y [m, width] float32 (for the router logits), y2 [m, d + nr] (the down
    product and down's experts' hidden states, in ``dtype``) or its float32 partial sums [splits, m, d + nr]
    (``down_partials``), the block input x [m, d] and every layer's down B b_down [L, d, nr] ([out, in]); the layer
    is index[0] * stride + offset."""
    m = y.shape[0]
    splits = y2.shape[0] if y2.ndim == 3 else 0
    if y.shape != (m, lay.width) or y2.shape[-2:] != (m, lay.d + lay.nr) or x.shape != (m, lay.d) \
            or b_down.shape[1:] != (lay.d, lay.nr) or y2.ndim not in (2, 3) or splits not in (0, _pow2(splits)):
        raise ValueError(f"routed_back: y {y.shape}, y2 {y2.shape}, x {x.shape}, B {b_down.shape} do not "
                         f"match {lay}")
    _check_layout(lay)
    bm, block, warps, dot = _tiles("routed_back", m, lay, block, rows, warps, dot, front=False)
    dtype = jnp.dtype(dtype)
    kernel = functools.partial(_back_kernel, m=m, lay=lay, bm=bm, bd=block, stride=stride, offset=offset,
                               dtype=dtype, dot=dot, splits=splits)
    b = b_down.reshape(-1, lay.nr) if dot else b_down.reshape(-1, lay.n, lay.r)
    args = (index.reshape(1).astype(jnp.int32), y, y2, y2.reshape(*y2.shape[:-1], -1, lay.r), x, b)
    return _call(kernel, jax.ShapeDtypeStruct((m, lay.d), dtype), (-(-m // bm), -(-lay.d // block)), args,
                 interpret, warps)
