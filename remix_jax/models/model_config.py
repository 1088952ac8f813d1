"""Model configuration for the LLaMA-family decoder.

One frozen dataclass covers Llama 2/3/3.1/3.2, Mistral-style, SmolLM2 and Qwen2/2.5. It is built from a
Hugging Face ``config.json`` (through transformers' AutoConfig), from GGUF metadata, or by name for
benchmarks with random weights (``named_config``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class ModelLoadError(ValueError):
    """A model path, config or checkpoint that cannot be loaded; the message names the file and problem."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Rotary scaling as a sorted tuple of (key, value) pairs so the config stays hashable;
    # None or (("rope_type", "default"),) means plain RoPE. Supported: "default", "linear", "llama3".
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 4096
    tie_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    model_type: str = "llama"
    # Numerics: parameters are stored in param_dtype, matmuls run in dtype; norms, softmax and
    # logits are float32.
    param_dtype: str = "float32"
    dtype: str = "float32"
    # "xla": einsum attention with an explicit mask (any mask, any backend).
    # "cudnn": jax.nn.dot_product_attention(implementation="cudnn") (GPU flash attention).
    # "splash": the Pallas splash-attention kernel (TPU flash attention; models/tpu_attention.py).
    # "auto": cudnn on GPU, splash on TPU (sequence length a multiple of 128), else xla.
    attention_impl: str = "xla"
    # Rematerialisation of each block in the backward pass: "none", "full", "dots", "dots_no_batch",
    # "save_qkv_ffn", "save_proj_out", "save_proj_out_attention", "offload_proj_out", "offload_layer_input" (see
    # remat.REMAT_POLICIES).
    remat: str = "none"
    # Layers per iteration of the scanned layer loop (lax.scan's unroll): 1 = a rolled loop (fastest compile),
    # num_layers = fully unrolled: straight-line code with no stacked buffers of saved activations to fill, so
    # training steps 5-7% faster on an H100 (1B and 8B LoRA) and faster decoding at batch 1 (loop control), at 3-8x
    # the compile time. Under remat each layer's checkpoint then slices the stacked weights inside
    # (models.unrolled) instead of keeping every layer's slices from the forward to the backward pass, so the step
    # holds no more than the rolled one (1B LoRA on an H100: 9.03 GiB against 9.07 rolled and 10.79 with the slices
    # kept; docs/performance.md, "Against Unsloth"; docs/notes/benchmarks-log.md, training and generation runs G
    # and the entries from "The unrolled step's extra memory is the layer weights' slices" on). Not with remat
    # "offload_layer_input" (refused below). Initialisation always runs the rolled loop (the same variables).
    scan_unroll: int = 1
    # Under remat "offload_layer_input": the fraction of each block input's positions (the first ones of every row)
    # kept in device memory for the backward pass; the rest goes to host memory. 0 offloads all of it; larger
    # values move less over the host link and hold more on the device (layers x batch x positions x d).
    offload_keep_fraction: float = 0.0
    # Training: the FFN (models.llama.MLP, so LoRA, rsLoRA and DoRA; not the routed mixtures) runs over this many
    # chunks of positions, each recomputed on its own in the backward pass, so one layer's backward holds its
    # [B, T, intermediate] tensors for T / mlp_chunks positions at a time. Same result; each chunk's FFN forward
    # runs once more in the backward pass, which "full" and "offload_layer_input" already pay. 1 = no chunks.
    mlp_chunks: int = 1

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim"):
            if getattr(self, k) < 1:
                raise ModelLoadError(f"model config field {k}={getattr(self, k)} must be >= 1")
        if self.attention_impl not in ("xla", "cudnn", "splash", "auto"):
            raise ModelLoadError(f"attention_impl={self.attention_impl!r}: expected xla, cudnn, splash or auto")
        if not isinstance(self.scan_unroll, int) or self.scan_unroll < 1:
            raise ModelLoadError(f"scan_unroll={self.scan_unroll!r}: expected an integer >= 1")
        if not isinstance(self.mlp_chunks, int) or self.mlp_chunks < 1:
            raise ModelLoadError(f"mlp_chunks={self.mlp_chunks!r}: expected an integer >= 1")
        if not 0.0 <= self.offload_keep_fraction < 1.0:
            raise ModelLoadError(f"offload_keep_fraction={self.offload_keep_fraction!r}: expected a fraction in [0, 1)")
        if self.offload_keep_fraction and self.remat != "offload_layer_input":
            raise ModelLoadError(f"offload_keep_fraction={self.offload_keep_fraction!r} applies only to "
                                 f"remat='offload_layer_input' (not {self.remat!r})")
        if self.remat == "offload_layer_input" and self.scan_unroll >= self.num_layers:
            # Each checkpoint of the unrolled loop takes its layer's input as an argument, which stays on the
            # device (1B LoRA on an H100: 8.27 GiB against 3.34 rolled; docs/notes/benchmarks-log.md).
            raise ModelLoadError(f"remat='offload_layer_input' offloads nothing with the layer loop fully unrolled "
                                 f"(scan_unroll={self.scan_unroll}, {self.num_layers} layers): use scan_unroll="
                                 f"1 (or fewer than {self.num_layers}), or remat='full'")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling) if self.rope_scaling else {"rope_type": "default"}

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.attention_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        n = self.num_layers * per_layer + d
        if include_embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return n


def _rope_from_hf(cfg: Any) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling) from a transformers config, v4 or v5 style."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = getattr(cfg, "rope_theta", 10000.0)
        scaling = dict(getattr(cfg, "rope_scaling", None) or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    rope_type = scaling.get("rope_type", "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise ModelLoadError(f"unsupported rope_type {rope_type!r} (supported: default, linear, llama3)")
    if rope_type == "default":
        return float(theta), None
    return float(theta), tuple(sorted((k, v) for k, v in scaling.items() if _is_scalar(v)))


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def from_hf_config(cfg: Any, **overrides) -> ModelConfig:
    """ModelConfig from a transformers PretrainedConfig (LlamaConfig, MistralConfig, Qwen2Config)."""
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"unsupported architecture model_type={model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    num_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    theta, scaling = _rope_from_hf(cfg)
    if model_type == "mistral" and getattr(cfg, "sliding_window", None):
        # Sliding-window attention only matters past the window; we attend fully and say so.
        pass
    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=getattr(cfg, "max_position_embeddings", 4096),
        tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        attention_bias=bool(getattr(cfg, "attention_bias", False)) or model_type == "qwen2",
        model_type=model_type,
    )
    if getattr(cfg, "mlp_bias", False):
        raise ModelLoadError("mlp_bias=True checkpoints are not supported")
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
        raise ModelLoadError(f"unsupported hidden_act {cfg.hidden_act!r} (SwiGLU with silu expected)")
    kw.update(overrides)
    return ModelConfig(**kw)


def to_hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json dictionary that transformers' AutoConfig reads back into the same architecture."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope = {**dict(cfg.rope_scaling), "rope_theta": cfg.rope_theta}
    d = {
        "architectures": [arch[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "torch_dtype": "float32" if cfg.param_dtype == "float32" else "bfloat16",
    }
    if cfg.rope_scaling:
        d["rope_scaling"] = dict(rope)
    if cfg.model_type == "llama":
        d["attention_bias"] = cfg.attention_bias
        d["mlp_bias"] = False
    return d


# Shapes for benchmarks and tests with random weights (no checkpoint needed).
NAMED_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                         num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_embeddings=True, max_position_embeddings=8192),
    "llama3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
                        tie_embeddings=True, max_position_embeddings=131072,
                        rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0),
                                      ("low_freq_factor", 1.0),
                                      ("original_max_position_embeddings", 8192),
                                      ("rope_type", "llama3"))),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                      num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                      max_position_embeddings=8192),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                         num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0,
                         tie_embeddings=True, attention_bias=True, model_type="qwen2",
                         rms_norm_eps=1e-6),
}


def named_config(name: str, **overrides) -> ModelConfig:
    if name not in NAMED_SHAPES:
        raise ModelLoadError(f"unknown model shape {name!r}; known: {', '.join(sorted(NAMED_SHAPES))}")
    return ModelConfig(**{**NAMED_SHAPES[name], **overrides})


def config_to_json(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def rope_inv_freq(cfg: ModelConfig):
    """Inverse rotary frequencies [head_dim // 2] (float64 numpy), with linear or llama3 scaling."""
    import numpy as np

    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    sc = cfg.rope_scaling_dict
    kind = sc.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        lo, hi = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        lo_wavelen, hi_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
        inv = np.where(medium, smoothed, scaled)
    elif kind != "default":
        raise ModelLoadError(f"unsupported rope_type {kind!r}")
    return inv
