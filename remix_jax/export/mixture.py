"""A routed mixture (ReMix, MixLoRA, HydraLoRA, dense softmax) as a Hugging Face directory that transformers
loads with ``trust_remote_code=True``: config.json (the base's fields, ``auto_map`` and ``remix_mixture``),
model.safetensors (the base's tensors, the experts' factors, the routers) and ``modeling_remix_mixture.py``
(PyTorch; docs/export.md documents the format for other readers).

Tensors added to the base's, per block i and adapted projection P (module M = model.layers.{i}.{self_attn|mlp}.P):
    M.lora_A          [n, r, d_in]   = our lora_a[i] transposed per expert  (HydraLoRA: [r, d_in], shared)
    M.lora_B          [n, d_out, r]  = our lora_b[i] transposed per expert
    model.layers.{i}.mlp.router.weight   [n, d]     the block router (router_scope "block", FFN targets)
    M.router.weight                      [n, d_in]  a projection's own router (attention targets, or scope
                                                    "projection")
Routers are written in the run's router dtype (float32) and the factors in float32, whatever the base dtype.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from remix_jax.adapters import layout
from remix_jax.adapters.adapter_config import AdapterConfig
from remix_jax.models.hf_io import hf_tensors_from_params
from remix_jax.models.model_config import ModelConfig, to_hf_config_dict

MODELING_FILE = "modeling_remix_mixture.py"
FORMAT_VERSION = 1
EXPORTABLE = ("remix", "mixlora", "hydralora", "softmax_dense")
# Our architecture -> (model_type of the export, its config and model classes in MODELING_FILE)
_CLASSES = {"llama": ("remix_mixture_llama", "RemixMixtureLlamaConfig", "RemixMixtureLlamaForCausalLM"),
            "mistral": ("remix_mixture_llama", "RemixMixtureLlamaConfig", "RemixMixtureLlamaForCausalLM"),
            "qwen2": ("remix_mixture_qwen2", "RemixMixtureQwen2Config", "RemixMixtureQwen2ForCausalLM")}


def check_exportable(cfg: AdapterConfig) -> None:
    if cfg.method not in EXPORTABLE:
        hint = ("export single adapters with --format=peft or --format=merged" if not cfg.routed
                else "its routing is random at inference")
        raise ValueError(f"adapter method {cfg.method!r} cannot be exported as a mixture ({hint}); "
                         f"exportable: {', '.join(EXPORTABLE)}")
    if cfg.method == "remix" and cfg.sample_at_inference:
        raise ValueError("adapter.sample_at_inference=True samples the experts at inference: no deterministic "
                         "export computes it")


def mixture_spec(cfg: AdapterConfig) -> dict[str, Any]:
    """The ``remix_mixture`` field of config.json: everything the PyTorch module needs to route and mix."""
    check_exportable(cfg)
    spec = {"format_version": FORMAT_VERSION, "method": cfg.method, "num_experts": cfg.num_experts,
            "top_k": cfg.top_k, "rank": cfg.rank, "targets": list(cfg.targets), "router_scope": cfg.router_scope,
            "expert_scale": cfg.lora_scale(), "router_dtype": cfg.router_dtype, "alpha": cfg.alpha,
            "omega": cfg.omega}
    if cfg.method == "remix":
        spec["selected_weight"] = cfg.omega_value()
    if cfg.method == "mixlora":
        spec["mixlora_form"] = cfg.mixlora_form
    return spec


def mixture_config(model_cfg: ModelConfig, cfg: AdapterConfig, dtype: str) -> dict[str, Any]:
    """config.json: the base architecture's fields plus the custom model type, auto_map and remix_mixture."""
    model_type, config_cls, model_cls = _CLASSES[model_cfg.model_type]
    out = to_hf_config_dict(model_cfg)
    if model_cfg.model_type != "qwen2":  # Llama classes serve Mistral-style models too (full attention, as ours)
        out.update(attention_bias=False, mlp_bias=False)
    module = MODELING_FILE[:-len(".py")]
    out.update(model_type=model_type, architectures=[model_cls], torch_dtype=dtype,
               auto_map={"AutoConfig": f"{module}.{config_cls}", "AutoModelForCausalLM": f"{module}.{model_cls}"},
               remix_mixture=mixture_spec(cfg))
    return out


def mixture_tensors(model_cfg: ModelConfig, base: Mapping[str, Any], trainable: Mapping[str, Any],
                    cfg: AdapterConfig, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors: the base in ``dtype``, factors float32, routers in router_dtype."""
    check_exportable(cfg)
    out = hf_tensors_from_params(model_cfg, base, dtype)
    adapter, router = trainable["adapter"], trainable.get("router", {})
    rdt = np.dtype(cfg.router_dtype) if cfg.router_dtype != "bfloat16" else None
    if rdt is None:
        import ml_dtypes

        rdt = ml_dtypes.bfloat16

    def put(name: str, arr) -> None:
        out[name] = np.ascontiguousarray(arr)

    for name in cfg.targets:
        node = layout.site(adapter, name)
        a, b = np.asarray(node["lora_a"], np.float32), np.asarray(node["lora_b"], np.float32)
        own = layout.has_own_router(cfg, name)
        w = np.asarray(layout.site(router, name)["weight"], np.float32) if own else None
        for i in range(model_cfg.num_layers):
            m = layout.hf_module(i, name)
            put(f"{m}.lora_A", a[i].T if a.ndim == 3 else np.transpose(a[i], (0, 2, 1)))
            put(f"{m}.lora_B", np.transpose(b[i], (0, 2, 1)))
            if w is not None:
                put(f"{m}.router.weight", w[i].T.astype(rdt))
    if layout.block_router(cfg):
        w = np.asarray(router["layers"]["mlp"]["weight"], np.float32)  # [L, d, n]
        for i in range(model_cfg.num_layers):
            put(f"model.layers.{i}.mlp.router.weight", w[i].T.astype(rdt))
    return out


def save_mixture(out_dir: str | os.PathLike, model_cfg: ModelConfig, base: Mapping[str, Any],
                 trainable: Mapping[str, Any], cfg: AdapterConfig, dtype: str = "float32") -> pathlib.Path:
    """Write config.json, model.safetensors and the modeling file (transformers: trust_remote_code=True)."""
    from safetensors.numpy import save_file

    config = mixture_config(model_cfg, cfg, dtype)  # raises for what cannot be exported, before writing
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(mixture_tensors(model_cfg, base, trainable, cfg, dtype), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copyfile(pathlib.Path(__file__).with_name(MODELING_FILE), out / MODELING_FILE)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
