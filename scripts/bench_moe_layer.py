"""Micro-benchmark of the mixture-of-LoRAs product: dense vs gather formulation (remix_jax/adapters/moe.py).

Times forward + backward (grads of A and B, as in training) of sum_j w_j x A_{e_j} B_{e_j} for k of n experts
per token, and prints one JSON line per configuration:
    {"d": ..., "n": 8, "k": ..., "r": ..., "tokens": ..., "dtype": ..., "backend": ...,
     "dense_ms": ..., "gather_ms": ..., "base_ms": ...}
base_ms is the frozen projection x W alone, for scale.

    python scripts/bench_moe_layer.py                       # GPU sizes: d 576/2048/4096, k 1/2/4, r 8/16/32
    python scripts/bench_moe_layer.py --d 256 576 --tokens 1024 --iters 5   # a few minutes on a small CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import jax
import jax.numpy as jnp

from remix_jax.adapters.moe import mixture_delta


def _time(fn, *args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def bench(d: int, n: int, k: int, r: int, tokens: int, dtype, iters: int) -> dict:
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (tokens, d), dtype)
    a = jax.random.normal(keys[1], (n, d, r), jnp.float32) * d ** -0.5
    b = jax.random.normal(keys[2], (n, r, d), jnp.float32) * 0.01
    w_base = jax.random.normal(keys[3], (d, d), dtype) * d ** -0.5
    experts = jax.vmap(lambda kk: jax.random.choice(kk, n, (k,), replace=False))(
        jax.random.split(keys[4], tokens)).astype(jnp.int32)
    weights = jnp.full((tokens, k), 1.0 / k, jnp.float32)

    def step(mode):
        def loss(a, b, x):
            return jnp.sum(mixture_delta(x, a, b, experts, weights, mode).astype(jnp.float32) ** 2)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    base = jax.jit(jax.grad(lambda w, x: jnp.sum((x @ w).astype(jnp.float32) ** 2), argnums=(0, 1)))
    return {"d": d, "n": n, "k": k, "r": r, "tokens": tokens, "dtype": jnp.dtype(dtype).name,
            "backend": jax.default_backend(),
            "dense_ms": round(_time(step("dense"), a, b, x, iters=iters), 3),
            "gather_ms": round(_time(step("gather"), a, b, x, iters=iters), 3),
            "base_ms": round(_time(base, w_base, x, iters=iters), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, nargs="+", default=[576, 2048, 4096])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--r", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--dtype", default="bfloat16" if jax.default_backend() == "gpu" else "float32")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    for d, k, r in itertools.product(args.d, args.k, args.r):
        print(json.dumps(bench(d, args.n, k, r, args.tokens, jnp.dtype(args.dtype), args.iters)), flush=True)


if __name__ == "__main__":
    main()
