"""Import a GGUF checkpoint (llama.cpp format) into the Decoder's parameter tree, without torch.

Tensors are dequantised with ``gguf.quants.dequantize`` (any quantisation type the ``gguf`` package
knows: F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants, ...). The configuration comes from the GGUF
metadata (``{arch}.block_count``, ``{arch}.attention.head_count``, ...).

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` of llama-architecture models for
its interleaved RoPE; we undo it so the rotate-half RoPE of ``llama.py`` applies. Qwen2 GGUFs are
stored unpermuted and carry q/k/v biases.

Llama 3.1/3.2 GGUFs do not record their "llama3" rope scaling as metadata but as a tensor
``rope_freqs.weight`` [head_dim / 2] of frequency divisors; we recover the scaling parameters by
matching those divisors against the standard llama3 settings.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from remix_jax.models.model_config import ModelConfig, ModelLoadError, rope_inv_freq

SUPPORTED_GGUF_ARCHS = ("llama", "qwen2")

# GGUF per-block tensor name -> (path in our layer tree, is a linear weight to transpose to [in, out]).
_BLOCK_TENSORS = {
    "attn_norm.weight": (("input_norm", "scale"), False),
    "ffn_norm.weight": (("post_attn_norm", "scale"), False),
    "attn_q.weight": (("attn", "q_proj", "kernel"), True),
    "attn_k.weight": (("attn", "k_proj", "kernel"), True),
    "attn_v.weight": (("attn", "v_proj", "kernel"), True),
    "attn_output.weight": (("attn", "o_proj", "kernel"), True),
    "attn_q.bias": (("attn", "q_proj", "bias"), False),
    "attn_k.bias": (("attn", "k_proj", "bias"), False),
    "attn_v.bias": (("attn", "v_proj", "bias"), False),
    "ffn_gate.weight": (("mlp", "gate_proj", "kernel"), True),
    "ffn_up.weight": (("mlp", "up_proj", "kernel"), True),
    "ffn_down.weight": (("mlp", "down_proj", "kernel"), True),
}
# Tensors that carry no parameters of ours (rope_freqs is folded into the config).
_IGNORED_TENSORS = ("rope_freqs.weight",)


def _open_reader(path: str):
    """The parsed GGUF file (``gguf_file.GGUFFile``); ModelLoadError for a missing or unreadable one."""
    from remix_jax.models.gguf_file import read_gguf

    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: not a file (expected a .gguf file)")
    try:
        return read_gguf(path)
    except Exception as e:  # ValueError from gguf_file (or the gguf package's reader for byte-swapped files)
        size = os.path.getsize(path)
        raise ModelLoadError(
            f"{path}: not a readable GGUF file ({size} bytes; truncated or corrupt?): "
            f"{type(e).__name__}: {e}") from e


def field_value(reader, key: str, default: Any = None) -> Any:
    """A metadata value of ``reader`` (a ``gguf_file.GGUFFile``: str, number, bool or list), or ``default`` when
    absent."""
    return reader.fields.get(key, default)


def _require(reader, path: str, key: str) -> Any:
    v = field_value(reader, key)
    if v is None:
        raise ModelLoadError(f"{path}: GGUF metadata key {key!r} is missing")
    return v


def _llama3_scaling_from_rope_freqs(path: str, base: ModelConfig, divisors: np.ndarray) -> tuple:
    """Recover llama3 rope-scaling parameters from llama.cpp's ``rope_freqs`` divisors [head_dim / 2]."""
    plain = rope_inv_freq(base.replace(rope_scaling=None))
    observed = plain / divisors.astype(np.float64)
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0, 64.0):
        for orig in (8192, 4096, 16384, 32768, 131072):
            for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0)):
                scaling = (("factor", factor), ("high_freq_factor", high), ("low_freq_factor", low),
                           ("original_max_position_embeddings", orig), ("rope_type", "llama3"))
                cand = rope_inv_freq(base.replace(rope_scaling=scaling))
                if np.allclose(cand, observed, rtol=1e-4, atol=0):
                    return scaling
    raise ModelLoadError(
        f"{path}: tensor rope_freqs.weight does not match any llama3 rope scaling we know "
        f"(divisors {np.round(divisors[:4], 4).tolist()}...)")


def gguf_config(reader, path: str, **overrides) -> ModelConfig:
    """ModelConfig from GGUF metadata; ``overrides`` replace fields (e.g. dtype, param_dtype)."""
    arch = field_value(reader, "general.architecture")
    if arch is None:
        raise ModelLoadError(f"{path}: GGUF metadata key 'general.architecture' is missing")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise ModelLoadError(
            f"{path}: unsupported GGUF architecture {arch!r} (supported: {', '.join(SUPPORTED_GGUF_ARCHS)})")
    names = {t.name: t for t in reader.tensors}
    hidden = int(_require(reader, path, f"{arch}.embedding_length"))
    heads = int(_require(reader, path, f"{arch}.attention.head_count"))
    kv_heads = int(field_value(reader, f"{arch}.attention.head_count_kv", heads))
    head_dim = int(field_value(reader, f"{arch}.attention.key_length",
                               field_value(reader, f"{arch}.rope.dimension_count", hidden // heads)))
    vocab = field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        if "token_embd.weight" not in names:
            raise ModelLoadError(f"{path}: tensor 'token_embd.weight' is missing")
        vocab = int(names["token_embd.weight"].shape[-1])
    kw = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_require(reader, path, f"{arch}.feed_forward_length")),
        num_layers=int(_require(reader, path, f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(field_value(reader, f"{arch}.context_length", 4096)),
        tie_embeddings="output.weight" not in names,
        attention_bias=arch == "qwen2" or "blk.0.attn_q.bias" in names,
        model_type=arch,
    )
    scaling_type = field_value(reader, f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise ModelLoadError(
                f"{path}: unsupported rope scaling type {scaling_type!r} (supported: linear)")
        factor = float(_require(reader, path, f"{arch}.rope.scaling.factor"))
        kw["rope_scaling"] = (("factor", factor), ("rope_type", "linear"))
    try:
        cfg = ModelConfig(**kw)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from e
    if "rope_freqs.weight" in names:
        divisors = _dequantize(names["rope_freqs.weight"]).reshape(-1)
        if divisors.shape != (head_dim // 2,):
            raise ModelLoadError(f"{path}: tensor rope_freqs.weight has shape {divisors.shape}, "
                                 f"expected ({head_dim // 2},)")
        if not np.allclose(divisors, 1.0):
            cfg = cfg.replace(rope_scaling=_llama3_scaling_from_rope_freqs(path, cfg, divisors))
    return cfg.replace(**overrides) if overrides else cfg


def _dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32 numpy in row-major (PyTorch) layout: [out, in] for weights."""
    from gguf.quants import dequantize

    arr = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(s) for s in reversed(tensor.shape))
    return np.asarray(arr, np.float32).reshape(shape)


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-RoPE row permutation of a q/k weight [out, in] or bias [out]."""
    o = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, o // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(o, *rest)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Row-major (PyTorch-layout) shapes of each per-block GGUF tensor."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    return {
        "attn_norm.weight": (d,), "ffn_norm.weight": (d,),
        "attn_q.weight": (q, d), "attn_k.weight": (kv, d), "attn_v.weight": (kv, d),
        "attn_output.weight": (d, q), "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
        "ffn_gate.weight": (f, d), "ffn_up.weight": (f, d), "ffn_down.weight": (d, f),
    }


def _set(tree: dict, keys: tuple[str, ...], value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def load_gguf(path: str | os.PathLike, **config_overrides) -> tuple[ModelConfig, dict]:
    """Load a GGUF file: (config, params) where params is the Decoder's "params" collection.

    Apply the model as ``Decoder(cfg).apply({"params": params}, tokens)``. Parameters are cast to
    ``cfg.param_dtype`` (override with ``param_dtype="bfloat16"``). Raises ModelLoadError naming the
    file and the problem (missing file, truncated file, unsupported architecture, missing tensor,
    shape mismatch).
    """
    import jax.numpy as jnp

    path = os.fspath(path)
    reader = _open_reader(path)
    cfg = gguf_config(reader, path, **config_overrides)
    arch = cfg.model_type
    names = {t.name: t for t in reader.tensors}
    pdt = jnp.dtype(cfg.param_dtype)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in names:
            raise ModelLoadError(f"{path}: tensor {name!r} is missing")
        t = names[name]
        got = tuple(int(s) for s in reversed(t.shape))
        if got != shape:
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {got}, expected {shape} from the config")
        try:
            return _dequantize(t)
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot dequantise tensor {name!r} "
                                 f"({t.tensor_type.name}): {type(e).__name__}: {e}") from e

    known = {"token_embd.weight", "output_norm.weight", "output.weight", *_IGNORED_TENSORS}
    per_block = _expected_shapes(cfg)
    for i in range(cfg.num_layers):
        known.update(f"blk.{i}.{k}" for k in per_block)
    unknown = sorted(set(names) - known)
    if unknown:
        raise ModelLoadError(f"{path}: unexpected tensors for a {cfg.num_layers}-layer {arch} model: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")

    d, v = cfg.hidden_size, cfg.vocab_size
    params: dict[str, Any] = {
        "embed": {"embedding": jnp.asarray(get("token_embd.weight", (v, d)), pdt)},
        "final_norm": {"scale": jnp.asarray(get("output_norm.weight", (d,)), pdt)},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = jnp.asarray(get("output.weight", (v, d)).T, pdt)

    wanted = [k for k in per_block if not k.endswith(".bias") or cfg.attention_bias]
    layers: dict[str, Any] = {}
    for key in wanted:
        tree_path, transpose = _BLOCK_TENSORS[key]
        stacked = []
        for i in range(cfg.num_layers):
            w = get(f"blk.{i}.{key}", per_block[key])
            if arch == "llama" and key.startswith(("attn_q.", "attn_k.")):
                w = unpermute_rows(w, cfg.num_heads if key.startswith("attn_q.") else cfg.num_kv_heads)
            stacked.append(w.T if transpose else w)
        _set(layers, tree_path, jnp.asarray(np.stack(stacked), pdt))
    params["layers"] = layers
    return cfg, params
