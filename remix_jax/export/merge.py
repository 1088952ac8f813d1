"""A single adapter folded into the frozen base: a plain decoder computing what base + adapter computes.

LoRA / rsLoRA:  W' = W + s A B                                  (s = alpha/r or alpha/sqrt(r))
DoRA:           W' = (W + s A B) * m / ||W + s A B||_c,  m = ||W||_c + magnitude_delta
Kernels are [L, d_in, d_out], A [L, d_in, r], B [L, r, d_out]; computed in float32 (adapters/lora.py's math).
Mixtures route per token and cannot be folded into one weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.adapters import layout
from remix_jax.adapters import lora as lora_math
from remix_jax.adapters.adapter_config import SINGLE_METHODS, AdapterConfig


def _merged_kernel(kernel, a, b, scale: float, magnitude_delta=None):
    """One block: kernel [d_in, d_out] -> the merged kernel, float32."""
    v = kernel.astype(jnp.float32) + scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
    if magnitude_delta is None:
        return v
    m = lora_math.column_norms(kernel) + magnitude_delta.astype(jnp.float32)
    return v * (m / jnp.maximum(lora_math.column_norms(v), jnp.finfo(jnp.float32).tiny))


def merge_adapter(base: Mapping[str, Any], adapter: Mapping[str, Any], cfg: AdapterConfig) -> dict:
    """``base`` (the decoder's "params") with every adapted kernel replaced by its merged float32 kernel."""
    if cfg.method not in SINGLE_METHODS:
        raise ValueError(f"adapter method {cfg.method!r} routes per token: only {', '.join(SINGLE_METHODS)} "
                         "fold into the base weights (export mixtures with --format=hf-mixture)")
    merged = jax.tree.map(lambda x: x, dict(base))  # a new tree of the same leaves
    scale = cfg.lora_scale()
    for name in cfg.targets:
        node = layout.site(adapter, name)
        kernel = jnp.asarray(layout.base_kernel(base, name))
        mag = node.get("magnitude_delta") if cfg.method == "dora" else None
        fn = jax.jit(jax.vmap(lambda k, a, b, md: _merged_kernel(k, a, b, scale, md)))
        new = fn(kernel, jnp.asarray(node["lora_a"]), jnp.asarray(node["lora_b"]),
                 None if mag is None else jnp.asarray(mag))
        proj = dict(layout.site(merged, name))
        proj["kernel"] = np.asarray(new)
        group = dict(merged["layers"][layout.GROUP[name]])
        group[name] = proj
        merged["layers"] = {**merged["layers"], layout.GROUP[name]: group}
    return merged
