"""Time of ReMix's fused inference FFN (``inference.remix_ffn.remix_ffn_fused``) per layer while decoding, and of
the frozen SwiGLU FFN for scale.

A decode step's FFNs in isolation: ``--layers`` layers of stacked random matrices of the SmolLM2-135M FFN
(d 576, F 1536; 8 experts, top-2, rank 8 on gate/up/down, the router as two bf16 parts), bf16, run by a
``lax.scan`` two layers per iteration as generation runs them, each layer's input the previous layer's output
plus the residual, with the RMSNorm folded (row factor applied to the first product's rows). One JSON line per
(batch, form): microseconds per layer (best of ``--repeats`` timings of ``--calls`` calls each) and, with
``--profile``, the kernels per call.

    python scripts/bench_remix_ffn.py --batch_sizes=1,16,128 --profile=2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from remix_jax.adapters.adapter_config import AdapterConfig  # noqa: E402
from remix_jax.inference.remix_ffn import remix_block_matrices, remix_ffn_fused  # noqa: E402
from remix_jax.models.fused import inference_layout, inference_product  # noqa: E402
from remix_jax.models.llama import rms_inverse  # noqa: E402


def stacked_mats(layers: int, d: int, f: int, cfg: AdapterConfig, dtype, seed: int = 0) -> dict:
    """Random ReMix FFN weights of ``layers`` layers as generation holds them (``remix_block_matrices`` in
    ``inference_layout``, stacked [L, ...]), plus their frozen gate/up/down alone (base_gate_up, base_down)."""
    ks = iter(jax.random.split(jax.random.key(seed), 10))
    n, r = cfg.num_experts, cfg.rank

    def normal(shape, scale):
        return jax.random.normal(next(ks), (layers, *shape), jnp.float32) * scale

    shapes = {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    kernels = {name: normal(shape, shape[0] ** -0.5) for name, shape in shapes.items()}
    factors = {name: (normal((n, d_in, r), d_in ** -0.5), normal((n, r, d_out), 0.05))
               for name, (d_in, d_out) in shapes.items()}
    router = normal((d, n), d ** -0.5)
    mats = jax.vmap(lambda k, fa, w: remix_block_matrices(k, fa, w, cfg, dtype))(kernels, factors, router)
    mats = {name: inference_layout(m) for name, m in mats.items()}
    return {**mats, "base_gate_up": mats["remix_gate_up"][:, :2 * f], "base_down": mats["remix_down"][:, :d]}


def layer_ffn(form: str, x, mats: dict, cfg: AdapterConfig, dtype, eps: float = 1e-5):
    """One layer's FFN(x) (no residual) from that layer's matrices: "base" (the frozen SwiGLU FFN) or "remix"
    (``remix_ffn_fused``), the norm folded (its row factor applied to the first product's rows)."""
    rs = rms_inverse(x, eps)
    if form == "base":
        y = inference_product(x, mats["base_gate_up"], dtype, jnp.float32)
        f = y.shape[-1] // 2
        g, u = (y[..., :f] * rs).astype(dtype), (y[..., f:] * rs).astype(dtype)
        return inference_product(jax.nn.silu(g) * u, mats["base_down"], dtype)
    remix = {k: v for k, v in mats.items() if k.startswith("remix_")}
    return remix_ffn_fused(x, remix, cfg, dtype, rs)


def ffn_stack(form: str, cfg: AdapterConfig, dtype):
    """jitted x [m, d] -> x after all layers' FFNs (residual added), for one form."""

    def ffn(x, mats):
        return layer_ffn(form, x, mats, cfg, dtype)

    def run(x, mats):
        def body(h, layer_mats):
            return (h + ffn(h, layer_mats)).astype(dtype), None

        return jax.lax.scan(body, x, mats, unroll=2)[0]

    return jax.jit(run)


def time_layers(fn, x, mats, args, label: str) -> dict:
    """{"us_per_layer": best of args.repeats timings of args.calls calls of fn(x, mats) over args.layers layers}
    and, with args.profile, "kernels_per_call" (the kernel table goes to stderr under ``label``)."""
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.calls):
            out = fn(x, mats)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / args.calls)
    row = {"us_per_layer": round(best / args.layers * 1e6, 3)}
    if args.profile:
        from profile_ops import format_report, profile_calls

        report = profile_calls(functools.partial(lambda f, *a: jax.block_until_ready(f(*a)), fn, x, mats),
                               fn.lower(x, mats).compile().as_text(), calls=args.profile, top=30)
        print(f"--- profile {label}\n{format_report(report)}", file=sys.stderr, flush=True)
        row["kernels_per_call"] = report["kernels_per_call"]
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", default="1,16,128")
    p.add_argument("--forms", default="base,remix", help="comma list: base (the frozen FFN), remix")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", type=int, default=0,
                   help="trace this many more calls per row and print its kernels (scripts/profile_ops.py)")
    args = p.parse_args(argv)
    dtype = jnp.bfloat16
    d, f, n, r = 576, 1536, 8, 8
    cfg = AdapterConfig(num_experts=n, top_k=2, rank=r)
    mats = stacked_mats(args.layers, d, f, cfg, dtype)
    rows = []
    for m in [int(b) for b in args.batch_sizes.split(",") if b]:
        x = jax.random.normal(jax.random.key(m), (m, d), jnp.float32).astype(dtype)
        for form in [name for name in args.forms.split(",") if name]:
            fn = ffn_stack(form, cfg, dtype)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x, mats))
            compile_s = time.perf_counter() - t0
            row = {"batch": m, "form": form, "compile_s": round(compile_s, 2), "device": jax.devices()[0].device_kind,
                   **time_layers(fn, x, mats, args, f"batch {m} {form}")}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
