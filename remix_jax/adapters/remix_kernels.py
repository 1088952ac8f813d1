"""The routed halves of ReMix's fused inference FFN (``modules.remix_ffn_fused``), as XLA ops and as Pallas
(Triton) kernels for GPUs.

``remix_ffn_fused`` computes y = x [W_gate | W_up | A_all of gate/up | router] and y2 = h [W_down | A_all of
down] with two wide matmuls. What is left is the routing:

  front:  hidden = silu(g) * u,  g = y_gate + (y_A_gate * pi) B_gate,  u = y_up + (y_A_up * pi) B_up
  down:   out    = y2_down + (y2_A_down * pi) B_down

with pi the top-k of the router logits (omega on the k selected experts, 0 elsewhere), each term present only
for the adapted projections. XLA runs each half as several kernels (the top-k, the scaling by pi, the B product,
the SwiGLU); at decoding's batch sizes every kernel costs a few microseconds whatever it computes, so on GPUs
each half is one Pallas kernel here, which also recomputes pi from the router logits instead of reading it.

Both forms read the B matrices stacked over layers ([L, ...]) at the layer index, so a layer loop hands the
kernel the whole stack and copies no slice out. ``front_mixture`` / ``down_mixture`` pick the form; the XLA
form is the reference the kernels are tested against (tests/adapters/test_remix_kernels.py, in Pallas's
interpreter on CPUs).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from remix_jax.routing.routers import remix_inference_weights

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MixtureLayout:
    """Where the routed FFN's pieces sit in y = x [W_gate | W_up | A_all of the front | router parts].

    f: FFN width; n experts, rank r, top-k k, weight omega; front: which of gate/up are adapted (their A_all
    and B in this order); parts: how many [d, n] matrices sum to the router (bf16 hi + lo: 2)."""

    f: int
    n: int
    r: int
    k: int
    omega: float
    gate: bool
    up: bool
    parts: int

    @property
    def nr(self) -> int:
        return self.n * self.r

    @property
    def num_front(self) -> int:
        return int(self.gate) + int(self.up)

    @property
    def h_col(self) -> int:
        return 2 * self.f

    @property
    def z_cols(self) -> tuple[int, ...]:
        start = 2 * self.f + self.num_front * self.nr
        return tuple(start + p * self.n for p in range(self.parts))


def router_logits(y: Array, layout: MixtureLayout) -> Array:
    """The router logits [..., n] float32: the sum of the router parts' columns of y."""
    return sum(y[..., c:c + layout.n].astype(jnp.float32) for c in layout.z_cols)


def _weighted(h: Array, pi: Array, r: int, dtype) -> Array:
    """h [..., n*r] * pi repeated r times, rounded to ``dtype`` (the B product's input)."""
    return (h * jnp.repeat(pi, r, axis=-1)).astype(dtype)


def front_mixture_xla(y: Array, b_front: Array | None, layer: Array, layout: MixtureLayout, dtype) -> Array:
    """hidden [..., f] (``dtype``) from y [..., W] float32 and b_front [L, S, n*r, f] (S adapted of gate/up)."""
    f, nr = layout.f, layout.nr
    g, u = y[..., :f], y[..., f:2 * f]
    if layout.num_front:
        pi = remix_inference_weights(router_logits(y, layout), layout.k, layout.omega)
        b = jax.lax.dynamic_index_in_dim(b_front, layer, 0, keepdims=False)  # [S, nr, f]
        h = jnp.stack([_weighted(y[..., layout.h_col + s * nr:layout.h_col + (s + 1) * nr], pi, layout.r, dtype)
                       for s in range(layout.num_front)])
        mix = jnp.einsum("s...m,smf->s...f", h, b.astype(dtype), preferred_element_type=jnp.float32)
        if layout.gate:
            g = g + mix[0]
        if layout.up:
            u = u + mix[layout.num_front - 1]
    return (jax.nn.silu(g) * u).astype(dtype)


def down_mixture_xla(y: Array, y2: Array, b_down: Array, layer: Array, layout: MixtureLayout, dtype) -> Array:
    """out [..., d] (``dtype``) from y2 = hidden [W_down | A_all of down] [..., d + n*r] float32, b_down
    [L, n*r, d] and the router logits in y."""
    d = b_down.shape[-1]
    pi = remix_inference_weights(router_logits(y, layout), layout.k, layout.omega)
    b = jax.lax.dynamic_index_in_dim(b_down, layer, 0, keepdims=False)
    mix = jnp.einsum("...m,md->...d", _weighted(y2[..., d:], pi, layout.r, dtype), b.astype(dtype),
                     preferred_element_type=jnp.float32)
    return (y2[..., :d] + mix).astype(dtype)


# ----------------------------------------------------------------------------------------------- Pallas (GPU)

def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _blocks(m: int, width: int, nr: int) -> tuple[int, int, int]:
    """Row block, column block and contraction chunk (powers of two; a Triton dot wants each >= 16)."""
    return min(64, max(16, _pow2(m))), min(128, max(16, _pow2(width))), min(64, max(16, _pow2(nr)))


def _ds(pl, start, size):
    """pl.ds with a traced start: a block may run past the array's end (masked loads read nothing there),
    which a static start would refuse at trace time."""
    return pl.ds(jnp.asarray(start, jnp.int32), size)


def _selected_weights(pl, plgpu, y_ref, rows, rmask, layout: MixtureLayout, bm: int):
    """Per expert e: omega where e is among the row's top k, else 0, as [bm, 1] float32 (n of them).

    rank_e = #{j : z_j > z_e or (z_j == z_e and j < e)}, the order of lax.top_k (ties to the lower index)."""
    n, n2 = layout.n, _pow2(layout.n)
    ecol = jnp.arange(n2)[None, :]
    z = sum(plgpu.load(y_ref.at[rows, _ds(pl, c, n2)], mask=rmask & (ecol < n), other=-jnp.inf)
            for c in layout.z_cols)  # [bm, n2]; padding columns -inf never rank before a real expert
    weights = []
    for e in range(n):
        ze = sum(plgpu.load(y_ref.at[rows, _ds(pl, c + e, 1)], mask=rmask, other=0.0) for c in layout.z_cols)
        before = (z > ze) | ((z == ze) & (ecol < e))
        rank = jnp.sum(before.astype(jnp.int32), axis=1)
        weights.append(jnp.where(rank < layout.k, jnp.float32(layout.omega), jnp.float32(0.0))[:, None])
    return weights


def _mix_block(pl, plgpu, h_ref, h_col, b_ref, b_index, weights, rows, rmask, cols, cmask, layout, bk, dtype):
    """(h[:, h_col:h_col+nr] * pi repeated r times) @ B[b_index][:, cols] for one [bm, bf] block, float32."""
    nr, r = layout.nr, layout.r
    acc = None
    for c0 in range(0, nr, bk):
        kidx = c0 + jnp.arange(bk)
        h = plgpu.load(h_ref.at[rows, _ds(pl, h_col + c0, bk)], mask=rmask & (kidx < nr)[None, :], other=0.0)
        expert = kidx[None, :] // r
        pi = sum(jnp.where(expert == e, w, 0.0) for e, w in enumerate(weights) if c0 <= e * r + r - 1
                 and e * r < c0 + bk)
        hw = (h * pi).astype(dtype)
        b = plgpu.load(b_ref.at[(*b_index, _ds(pl, c0, bk), cols)], mask=(kidx < nr)[:, None] & cmask, other=0.0)
        part = jax.lax.dot(hw, b.astype(dtype), preferred_element_type=jnp.float32)
        acc = part if acc is None else acc + part
    return acc


def _front_kernel(layer_ref, y_ref, b_ref, o_ref, *, m, layout: MixtureLayout, bm, bf, bk, dtype):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    i, j = pl.program_id(0), pl.program_id(1)
    rows, cols = pl.ds(i * bm, bm), pl.ds(j * bf, bf)
    rmask = (i * bm + jnp.arange(bm) < m)[:, None]
    cmask = (j * bf + jnp.arange(bf) < layout.f)[None, :]
    mask = rmask & cmask
    g = plgpu.load(y_ref.at[rows, cols], mask=mask, other=0.0)
    u = plgpu.load(y_ref.at[rows, pl.ds(layout.f + j * bf, bf)], mask=mask, other=0.0)
    if layout.num_front:
        layer = layer_ref[0]
        weights = _selected_weights(pl, plgpu, y_ref, rows, rmask, layout, bm)
        for s, name in enumerate([nm for nm, on in (("gate", layout.gate), ("up", layout.up)) if on]):
            mix = _mix_block(pl, plgpu, y_ref, layout.h_col + s * layout.nr, b_ref, (layer, jnp.int32(s)),
                             weights, rows, rmask, cols, cmask, layout, bk, dtype)
            if name == "gate":
                g = g + mix
            else:
                u = u + mix
    hidden = g / (1.0 + jnp.exp(-g)) * u
    plgpu.store(o_ref.at[rows, cols], hidden.astype(o_ref.dtype), mask=mask)


def _down_kernel(layer_ref, y_ref, y2_ref, b_ref, o_ref, *, m, d, layout: MixtureLayout, bm, bf, bk, dtype):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    i, j = pl.program_id(0), pl.program_id(1)
    rows, cols = pl.ds(i * bm, bm), pl.ds(j * bf, bf)
    rmask = (i * bm + jnp.arange(bm) < m)[:, None]
    cmask = (j * bf + jnp.arange(bf) < d)[None, :]
    weights = _selected_weights(pl, plgpu, y_ref, rows, rmask, layout, bm)
    mix = _mix_block(pl, plgpu, y2_ref, d, b_ref, (layer_ref[0],), weights, rows, rmask, cols, cmask, layout,
                     bk, dtype)
    base = plgpu.load(y2_ref.at[rows, cols], mask=rmask & cmask, other=0.0)
    plgpu.store(o_ref.at[rows, cols], (base + mix).astype(o_ref.dtype), mask=rmask & cmask)


def _call(kernel, out_shape, grid, args, interpret):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    kw = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=4, num_stages=1)}
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, interpret=interpret, **kw)(*args)


def _rows(y: Array) -> tuple[Array, tuple[int, ...]]:
    return y.reshape(-1, y.shape[-1]), y.shape[:-1]


def front_mixture_pallas(y: Array, b_front: Array | None, layer: Array, layout: MixtureLayout, dtype,
                         interpret: bool = False) -> Array:
    """``front_mixture_xla`` as one Triton kernel (at least one of gate/up adapted)."""
    y2d, lead = _rows(y)
    m = y2d.shape[0]
    bm, bf, bk = _blocks(m, layout.f, layout.nr)
    kernel = functools.partial(_front_kernel, m=m, layout=layout, bm=bm, bf=bf, bk=bk, dtype=jnp.dtype(dtype))
    out = _call(kernel, jax.ShapeDtypeStruct((m, layout.f), dtype), (pl_cdiv(m, bm), pl_cdiv(layout.f, bf)),
                (jnp.reshape(layer, (1,)).astype(jnp.int32), y2d, b_front), interpret)
    return out.reshape(*lead, layout.f)


def down_mixture_pallas(y: Array, y2: Array, b_down: Array, layer: Array, layout: MixtureLayout, dtype,
                        interpret: bool = False) -> Array:
    """``down_mixture_xla`` as one Triton kernel."""
    y2d, lead = _rows(y)
    h2d, _ = _rows(y2)
    m, d = y2d.shape[0], b_down.shape[-1]
    bm, bf, bk = _blocks(m, d, layout.nr)
    kernel = functools.partial(_down_kernel, m=m, d=d, layout=layout, bm=bm, bf=bf, bk=bk, dtype=jnp.dtype(dtype))
    out = _call(kernel, jax.ShapeDtypeStruct((m, d), dtype), (pl_cdiv(m, bm), pl_cdiv(d, bf)),
                (jnp.reshape(layer, (1,)).astype(jnp.int32), y2d, h2d, b_down), interpret)
    return out.reshape(*lead, d)


def pl_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# "auto": Pallas on GPUs, XLA elsewhere; "pallas_interpret": the Pallas kernels in Pallas's interpreter (any
# backend, slow: for tests).
KERNELS = ("auto", "xla", "pallas", "pallas_interpret")


def resolve_kernels(kernels: str) -> str:
    """The form "auto" stands for here ("pallas" on GPUs, else "xla"); other names as they are."""
    if kernels not in KERNELS:
        raise ValueError(f"ReMix inference kernels {kernels!r}: expected one of {KERNELS}")
    if kernels == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return kernels


def front_mixture(y, b_front, layer, layout: MixtureLayout, dtype, kernels: str = "auto") -> Array:
    form = resolve_kernels(kernels)
    if form == "xla" or not layout.num_front:
        return front_mixture_xla(y, b_front, layer, layout, dtype)
    return front_mixture_pallas(y, b_front, layer, layout, dtype, interpret=form == "pallas_interpret")


def down_mixture(y, y2, b_down, layer, layout: MixtureLayout, dtype, kernels: str = "auto") -> Array:
    form = resolve_kernels(kernels)
    if form == "xla":
        return down_mixture_xla(y, y2, b_down, layer, layout, dtype)
    return down_mixture_pallas(y, y2, b_down, layer, layout, dtype, interpret=form == "pallas_interpret")
