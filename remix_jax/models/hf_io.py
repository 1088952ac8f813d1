"""Hugging Face checkpoint import/export without torch.

Reads a model directory: ``config.json`` (through transformers' AutoConfig, or directly where it spells out
every field we read; see ``_complete_llama_config``) and ``model.safetensors`` or a
sharded ``model.safetensors.index.json``. Writes a directory (safetensors + config.json) that transformers'
``AutoModelForCausalLM.from_pretrained`` loads.

HF stores linear weights as [out, in]; ours are [in, out], stacked over layers.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from remix_jax.models.model_config import ModelConfig, ModelLoadError, from_hf_config, to_hf_config_dict

_LAYER_KEYS = {
    # ours (under params/layers)          HF suffix under model.layers.{i}.     transpose
    ("input_norm", "scale"): ("input_layernorm.weight", False),
    ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", False),
    ("attn", "q_proj", "kernel"): ("self_attn.q_proj.weight", True),
    ("attn", "k_proj", "kernel"): ("self_attn.k_proj.weight", True),
    ("attn", "v_proj", "kernel"): ("self_attn.v_proj.weight", True),
    ("attn", "o_proj", "kernel"): ("self_attn.o_proj.weight", True),
    ("attn", "q_proj", "bias"): ("self_attn.q_proj.bias", False),
    ("attn", "k_proj", "bias"): ("self_attn.k_proj.bias", False),
    ("attn", "v_proj", "bias"): ("self_attn.v_proj.bias", False),
    ("mlp", "gate_proj", "kernel"): ("mlp.gate_proj.weight", True),
    ("mlp", "up_proj", "kernel"): ("mlp.up_proj.weight", True),
    ("mlp", "down_proj", "kernel"): ("mlp.down_proj.weight", True),
}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape implied by the config (per layer), used to validate checkpoints."""
    d, f, hd, h, kv = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    per_layer = {
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (h * hd, d), "self_attn.k_proj.weight": (kv * hd, d),
        "self_attn.v_proj.weight": (kv * hd, d), "self_attn.o_proj.weight": (d, h * hd),
        "self_attn.q_proj.bias": (h * hd,), "self_attn.k_proj.bias": (kv * hd,),
        "self_attn.v_proj.bias": (kv * hd,),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }
    out = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_layers):
        for k, v in per_layer.items():
            if k.endswith(".bias") and not cfg.attention_bias:
                continue
            out[f"model.layers.{i}.{k}"] = v
    return out


def _read_config(path: pathlib.Path, **overrides) -> ModelConfig:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{cfg_file}: missing (a Hugging Face model directory needs config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({e})") from e
    model_type = raw.get("model_type")
    from remix_jax.models.model_config import SUPPORTED_MODEL_TYPES

    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{cfg_file}: unsupported architecture model_type={model_type!r} "
                             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    hf_cfg = _complete_llama_config(raw)
    if hf_cfg is None:
        from transformers import AutoConfig

        try:
            hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises several types for a bad config
            raise ModelLoadError(f"{cfg_file}: transformers could not read it ({e})") from e
    try:
        return from_hf_config(hf_cfg, **overrides)
    except ModelLoadError as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from e


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings")
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")


def _complete_llama_config(raw: dict) -> Any | None:
    """A llama config.json that states every field ``from_hf_config`` reads, with the default rotary embedding, as
    the attributes transformers' LlamaConfig gives it (the stated values; no default is filled in), without
    importing transformers (which imports torch: about two seconds at every start of a command). None for any
    other config (another architecture, a missing field, a rope scaling, a value of an unexpected type): those go
    through AutoConfig. What ``save_hf_checkpoint`` writes for a llama model qualifies."""
    import types

    if raw.get("model_type") != "llama" or raw.get("rope_scaling") is not None:
        return None
    if not all(type(raw.get(k)) is int for k in _INT_FIELDS) or not all(type(raw.get(k)) is bool
                                                                         for k in _BOOL_FIELDS):
        return None
    if type(raw.get("rms_norm_eps")) not in (int, float) or raw.get("hidden_act") not in ("silu", "swish"):
        return None
    rope = raw.get("rope_parameters")
    theta = raw.get("rope_theta")
    if rope is not None:
        if not isinstance(rope, dict) or set(rope) != {"rope_type", "rope_theta"} or rope["rope_type"] != "default":
            return None
        if theta is not None and theta != rope["rope_theta"]:
            return None
        theta = rope["rope_theta"]
    if type(theta) not in (int, float):
        return None
    fields = {k: raw[k] for k in (*_INT_FIELDS, *_BOOL_FIELDS, "rms_norm_eps", "hidden_act")}
    return types.SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "default", "rope_theta": theta},
                                 **fields)


def _safetensors_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> file holding it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({e})") from e
        files = {k: path / v for k, v in weight_map.items()}
        for f in set(files.values()):
            if not f.exists():
                raise ModelLoadError(f"{index}: names shard {f.name}, which is missing")
        return files
    if single.exists():
        return {name: single for name in _tensor_names(single)}
    raise ModelLoadError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _tensor_names(file: pathlib.Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            return list(f.keys())
    except Exception as e:
        raise ModelLoadError(f"{file}: cannot read safetensors header ({e}); the file may be truncated") from e


def _load_tensors(files: dict[str, pathlib.Path], on_tensor=None) -> dict[str, np.ndarray]:
    """Read the named tensors; ``on_tensor(done, total)`` after each (a progress bar)."""
    from safetensors import safe_open

    by_file: dict[pathlib.Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    out = {}
    for f, names in by_file.items():
        try:
            with safe_open(str(f), framework="numpy") as h:
                for n in names:
                    out[n] = h.get_tensor(n)
                    if on_tensor is not None:
                        on_tensor(len(out), len(files))
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read tensor data ({e}); the file may be truncated") from e
    return out


def _to_numpy_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return arr.astype(ml_dtypes.bfloat16)
    return arr.astype(np.dtype(dtype))


def params_from_hf_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> dict:
    """Our ``params`` tree from HF-named tensors (validating every shape against ``cfg``)."""
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in tensors:
            raise ModelLoadError(f"{source}: tensor {name} is missing")
        if tuple(tensors[name].shape) != shape:
            raise ModelLoadError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                 f"but config.json implies {shape}")
    dt = cfg.param_dtype

    def get(name, transpose=False):
        a = np.asarray(tensors[name], dtype=np.float32)
        return _to_numpy_dtype(a.T if transpose else a, dt)

    layers: dict[str, Any] = {}
    for ours, (suffix, transpose) in _LAYER_KEYS.items():
        if ours[-1] == "bias" and not cfg.attention_bias:
            continue
        stacked = np.stack([get(f"model.layers.{i}.{suffix}", transpose) for i in range(cfg.num_layers)])
        node = layers
        for k in ours[:-1]:
            node = node.setdefault(k, {})
        node[ours[-1]] = stacked
    params = {
        "embed": {"embedding": get("model.embed_tokens.weight")},
        "layers": layers,
        "final_norm": {"scale": get("model.norm.weight")},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = get("lm_head.weight", transpose=True)
    return params


def load_hf_checkpoint(path: str | os.PathLike, on_tensor=None, **config_overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a Hugging Face model directory; params are numpy arrays in param_dtype.
    ``on_tensor(done, total)`` is called after each tensor is read (tensors read so far, tensors to read)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model directory")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: expected a Hugging Face model directory (or a .gguf file)")
    cfg = _read_config(path, **config_overrides)
    files = _safetensors_files(path)
    # Tied checkpoints sometimes also store lm_head.weight: ignore it when tied.
    names = {n: f for n, f in files.items() if n in expected_shapes(cfg) or n == "lm_head.weight"}
    if cfg.tie_embeddings:
        names.pop("lm_head.weight", None)
    tensors = _load_tensors(names, on_tensor)
    return cfg, params_from_hf_tensors(cfg, tensors, source=str(path))


def hf_tensors_from_params(cfg: ModelConfig, params: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The inverse of ``params_from_hf_tensors``: HF-named [out, in] tensors."""

    def put(a, transpose=False):
        a = np.asarray(a, dtype=np.float32)
        return np.ascontiguousarray(_to_numpy_dtype(a.T if transpose else a, dtype))

    out = {"model.embed_tokens.weight": put(params["embed"]["embedding"]),
           "model.norm.weight": put(params["final_norm"]["scale"])}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = put(params["lm_head"], transpose=True)
    layers = params["layers"]
    for ours, (suffix, transpose) in _LAYER_KEYS.items():
        if ours[-1] == "bias" and not cfg.attention_bias:
            continue
        node = layers
        for k in ours:
            node = node[k]
        stacked = np.asarray(node)
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{suffix}"] = put(stacked[i], transpose)
    return out


def save_hf_checkpoint(out_dir: str | os.PathLike, cfg: ModelConfig, params: dict,
                       dtype: str = "float32") -> pathlib.Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads as the same model."""
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors_from_params(cfg, params, dtype)
    cfg_dict = to_hf_config_dict(cfg)
    cfg_dict["torch_dtype"] = dtype
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    return out
