"""Where a fully unrolled layer loop's extra memory goes: the per-layer weight slices kept for the backward pass.

The decoder's layers are one stacked parameter tree ([L, ...] leaves) run by ``nn.scan``. Rolled, the forward and
the backward pass are two loops and each slices layer l's weights where it needs them. Fully unrolled
(``model.scan_unroll`` = number of layers), JAX's scan takes each layer's slice once, outside the block's
``jax.checkpoint``, so the slice is an input of the checkpoint, hence one of its residuals: it stays alive from the
layer's forward to its backward, and at the backward pass's start every layer's slice is alive at once, a second
copy of the layer weights wherever the compiler materialises a slice.

This probe compiles the gradient of a stack of L remat'd two-matmul blocks on stacked bf16 weights (the two matmul
outputs named and saved, as ``save_proj_out`` does) five ways and prints the compiler's temporary memory of each:

- ``rolled``: ``lax.scan`` over the layers (the shipped default);
- ``unrolled``: a Python loop, layer l's weights sliced outside the checkpoint (what ``nn.scan`` unrolled does,
  and the decoder did until it took the ``inside`` way, ``models.unrolled``), the recompute protected
  (``prevent_cse=True``);
- ``merged``: the same without protection (XLA may merge each recompute with its forward);
- ``inside``: the slice taken inside the checkpoint, so the residual is the stacked array (alive anyway) and the
  backward pass slices again (the decoder's fully unrolled loop under remat now);
- ``none_saved``: ``unrolled`` with nothing saved, for scale.

    python scripts/unrolled_slices_memory.py                        # this host's default backend
    JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 python scripts/unrolled_slices_memory.py --topology=v5e:1x1

``--topology`` compiles for a TPU topology ahead of time (needs ``libtpu``; ``remix_jax.parallel.topology``). On
the local backend the gradients of every way are also checked equal to the rolled one's. Prints one JSON line per
way: temporaries (MiB), the compiled program's matmul count, and the stacked weights' own size for comparison.
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

MODES = ("rolled", "unrolled", "merged", "inside", "none_saved")


def block(p, x):
    h = jnp.tanh(checkpoint_name(x @ p["w1"], "proj"))
    return x + checkpoint_name((jnp.sin(h) * h) @ p["w2"], "proj")


def make_grad(mode: str, layers: int):
    policy = (jax.checkpoint_policies.nothing_saveable if mode == "none_saved"
              else jax.checkpoint_policies.save_only_these_names("proj"))

    def loss(ps, x):
        if mode == "rolled":
            blk = jax.checkpoint(block, policy=policy, prevent_cse=False)
            x, _ = jax.lax.scan(lambda c, p: (blk(p, c), None), x, ps)
            return jnp.sum(x.astype(jnp.float32) ** 2)
        for layer in range(layers):
            if mode == "inside":
                def sliced(ps, x, layer=layer):
                    return block(jax.tree.map(lambda a: a[layer], ps), x)
                x = jax.checkpoint(sliced, policy=policy, prevent_cse=True)(ps, x)
            else:
                p = jax.tree.map(lambda a, layer=layer: a[layer], ps)
                x = jax.checkpoint(block, policy=policy, prevent_cse=mode != "merged")(p, x)
        return jnp.sum(x.astype(jnp.float32) ** 2)

    return jax.jit(jax.grad(loss))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--topology", default="", help="a TPU topology to compile for ahead of time (v5e:1x1, ...)")
    a = ap.parse_args()
    modes = a.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"--modes: unknown {unknown}; known: {', '.join(MODES)}")
    shapes = {"w1": (a.layers, a.d, a.ffn), "w2": (a.layers, a.ffn, a.d)}
    if a.topology:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from remix_jax.parallel.topology import parse_topology, topology_devices

        devices = topology_devices(parse_topology(a.topology))
        sh = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())
        ps = {k: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=sh) for k, s in shapes.items()}
        x = jax.ShapeDtypeStruct((a.tokens, a.d), jnp.bfloat16, sharding=sh)
        device = devices[0].device_kind
    else:
        rng = np.random.default_rng(0)
        ps = {k: jnp.asarray(rng.normal(0, 0.02, s), jnp.bfloat16) for k, s in shapes.items()}
        x = jnp.asarray(rng.normal(0, 1, (a.tokens, a.d)), jnp.bfloat16)
        device = jax.devices()[0].device_kind
    weights_mib = sum(np.prod(s) for s in shapes.values()) * 2 / 2**20
    reference = None
    for mode in modes:
        fn = make_grad(mode, a.layers)
        compiled = fn.lower(ps, x).compile()
        text = compiled.as_text()
        row = {"mode": mode, "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
               # matmuls in the compiled program (6 a layer when nothing saved is recomputed; TPU: convolutions)
               "matmuls": len(re.findall(r"= \S+ (?:dot|convolution)\(", text)),
               "weights_mib": round(float(weights_mib), 1), "layers": a.layers, "tokens": a.tokens, "d": a.d,
               "ffn": a.ffn, "device": device, "jax": jax.__version__}
        if not a.topology:
            grads = compiled(ps, x)
            if reference is None:
                reference = grads
            row["max_grad_diff_vs_first"] = max(
                float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
                for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
