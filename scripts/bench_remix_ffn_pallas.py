"""ReMix's FFN while decoding with its routed halves as Pallas kernels (``inference.remix_kernels``) against
XLA's form (``remix_ffn.remix_ffn_fused``) and the frozen FFN, microseconds per layer.

As ``scripts/bench_remix_ffn.py`` (30 layers of the SmolLM2-135M FFN, stacked, bf16, norms folded, ReMix n 8,
k 2, r 8 on gate/up/down), but every form runs in the same ``lax.fori_loop`` of two layers per iteration and
returns x + FFN(x) per layer, so that the kernels can read each layer's B from the stack at the loop's counter.
Forms: "base" (the frozen FFN), "remix" (XLA's form), "pallas" (the kernels as generation runs them),
"pallas_sum" / "pallas_dot" (the B products multiplied and summed / by ``tl.dot``, whatever the tiling picks).
Prints one JSON line per (batch, form) and, for the kernels, their largest difference from "remix" after one
layer and after all layers.

    python scripts/bench_remix_ffn_pallas.py --batch_sizes=1,16,128
    python scripts/bench_remix_ffn_pallas.py --batch_sizes=1,16 --layers=4 --interpret=1   # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_remix_ffn import layer_ffn, stacked_mats, time_layers  # noqa: E402

from remix_jax.adapters.adapter_config import AdapterConfig  # noqa: E402
from remix_jax.inference.remix_kernels import RoutedLayout, down_product, routed_back, routed_front  # noqa: E402
from remix_jax.models.fused import inference_product  # noqa: E402

EPS = 1e-5
PER_ITER = 2


def layer_fn(form: str, cfg: AdapterConfig, lay: RoutedLayout, dtype, interpret: bool, blocks):
    def sliced(mats, name, layer):
        return jax.lax.dynamic_index_in_dim(mats[name], layer, keepdims=False)

    def apply(x, mats, i, j):
        layer = i * PER_ITER + j
        if form in ("base", "remix"):
            names = [k for k in mats if k.startswith(form)]
            one = {k: sliced(mats, k, layer) for k in names}
            return (x + layer_ffn(form, x, one, cfg, dtype, EPS)).astype(dtype)
        y = inference_product(x, sliced(mats, "remix_gate_up", layer), dtype, jnp.float32)
        index = jnp.reshape(i, (1,))
        kw = dict(stride=PER_ITER, offset=j, interpret=interpret, warps=blocks[2] or None, rows=blocks[3] or None,
                  dot={"pallas": None, "pallas_sum": False, "pallas_dot": True}[form])
        hidden = routed_front(y, x, mats["remix_b_gate_up"], index, lay, dtype, block=blocks[0] or None, **kw)
        y2 = down_product(hidden, sliced(mats, "remix_down", layer), dtype, None if blocks[4] < 0 else blocks[4])
        return routed_back(y, y2, x, mats["remix_b_down"], index, lay, dtype, block=blocks[1] or None, **kw)

    return apply


def stack_fn(form, cfg, lay, dtype, layers: int, interpret: bool = False, blocks=(0, 0, 0, 0, -1)):
    apply = layer_fn(form, cfg, lay, dtype, interpret, blocks)

    def run(x, mats):
        def body(i, h):
            for j in range(PER_ITER):
                h = apply(h, mats, i, j)
            return h

        return jax.lax.fori_loop(0, layers // PER_ITER, body, x)

    return jax.jit(run)


def _tiling_spec(text: str) -> tuple:
    t = tuple(int(v) for v in text.split(":"))
    return t + (0, 0, 0, 0, -1)[len(t):]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", default="1,16,128")
    p.add_argument("--forms", default="base,remix,pallas", help="comma list of: base, remix, pallas, pallas_sum, "
                   "pallas_dot")
    p.add_argument("--blocks", default="0:0:0:0",
                   help="comma list of the kernels' tilings front_columns:back_columns:warps[:rows[:splits]] (per "
                        "program, the down product's partial sums; 0 (splits -1): remix_kernels.tiling's)")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--interpret", type=int, default=0, help="1: Pallas's interpreter (CPU check, no timing)")
    p.add_argument("--profile", type=int, default=0, help="trace this many calls per row and print its kernels")
    args = p.parse_args(argv)
    dtype = jnp.bfloat16
    d, f, n, r = 576, 1536, 8, 8
    cfg = AdapterConfig(num_experts=n, top_k=2, rank=r)
    mats = stacked_mats(args.layers, d, f, cfg, dtype)
    parts = (mats["remix_gate_up"].shape[1] - 2 * f - 2 * n * r) // n
    lay = RoutedLayout(d=d, f=f, n=n, r=r, k=cfg.top_k, omega=cfg.omega_value(), parts=parts, eps=EPS)
    rows = []
    for m in [int(b) for b in args.batch_sizes.split(",") if b]:
        x = jax.random.normal(jax.random.key(m), (m, d), jnp.float32).astype(dtype)
        ref1 = refn = None
        specs = []
        for form in [s for s in args.forms.split(",") if s]:
            if form.startswith("pallas"):
                specs += [(form, _tiling_spec(b)) for b in args.blocks.split(",") if b]
            else:
                specs.append((form, (0, 0, 0, 0, -1)))
        for form, blocks in specs:
            fn = stack_fn(form, cfg, lay, dtype, args.layers, bool(args.interpret), blocks)
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(x, mats))
            row = {"batch": m, "form": form, "compile_s": round(time.perf_counter() - t0, 2),
                   "device": jax.devices()[0].device_kind}
            if form.startswith("pallas"):
                row["blocks"] = list(blocks)
            if form == "remix" or form.startswith("pallas"):
                one = jax.jit(lambda x, mats, form=form, blocks=blocks: layer_fn(
                    form, cfg, lay, dtype, bool(args.interpret), blocks)(x, mats, jnp.int32(0), 1))(x, mats)
                if form == "remix":
                    ref1, refn = one, out
                elif ref1 is not None:
                    d1 = jnp.abs(one.astype(jnp.float32) - ref1.astype(jnp.float32))
                    dn = jnp.abs(out.astype(jnp.float32) - refn.astype(jnp.float32))
                    row.update(max_diff_one_layer=float(d1.max()), frac_diff_one_layer=float((d1 > 0).mean()),
                               ref_max_one_layer=float(jnp.abs(ref1.astype(jnp.float32)).max()),
                               max_diff_all=float(dn.max()), ref_max_all=float(jnp.abs(refn.astype(jnp.float32)).max()))
            if not args.interpret:
                row.update(time_layers(fn, x, mats, args, f"batch {m} {form} {blocks}"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
