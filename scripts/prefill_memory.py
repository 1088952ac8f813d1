"""Compile-time memory of one generation call (prefill + decode loop, remix_jax/inference/generation.py) per
prefill chunk: XLA's ``memory_analysis()`` of the compiled ``_generate_batch`` for abstract weights of a named shape
(nothing is materialised or run). Prints one JSON line per chunk: temp bytes (the scratch the call asks for, where
the prefill's [B, KV, G, chunk, T + N] float32 attention scores live), argument and output bytes.

    python scripts/prefill_memory.py                                  # qwen2.5-0.5b, bf16, B=64, T=1024, N=256
    python scripts/prefill_memory.py --shape=smollm2-135m --batch=16 --prompt=512 --chunks=0,128

Run it on the GPU too: the figures are those of the backend that compiles.
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

from remix_jax.inference import generation  # noqa: E402
from remix_jax.models.llama import Decoder, init_params  # noqa: E402
from remix_jax.models.model_config import named_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt", type=int, default=1024, help="prompt bucket T (a power of two)")
    p.add_argument("--new", type=int, default=256, help="max_new_tokens N")
    p.add_argument("--chunks", default="0,256", help="prefill_chunk values (0 = the whole prompt at once)")
    args = p.parse_args()
    cfg = named_config(args.shape, dtype=args.dtype, param_dtype=args.dtype)
    model = Decoder(cfg)
    variables = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((args.batch, args.prompt), jnp.int32)
    for chunk in (int(c) for c in args.chunks.split(",")):
        start = time.perf_counter()
        compiled = generation._generate_batch.lower(
            model, variables, tokens, tokens, jax.random.key(0), jnp.float32(0), jnp.float32(1), jnp.asarray([-1]),
            max_new_tokens=args.new, greedy=True, prefill_chunk=chunk).compile()
        stats = compiled.memory_analysis()
        print(json.dumps({
            "shape": args.shape, "dtype": args.dtype, "batch": args.batch, "prompt": args.prompt, "new": args.new,
            "prefill_chunk": chunk, "backend": jax.default_backend(),
            "temp_bytes": None if stats is None else stats.temp_size_in_bytes,
            "argument_bytes": None if stats is None else stats.argument_size_in_bytes,
            "output_bytes": None if stats is None else stats.output_size_in_bytes,
            "compile_s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
