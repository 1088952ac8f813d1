"""Mixtures of LoRA experts (ReMix, MixLoRA, HydraLoRA, dense softmax) on a LLaMA or Qwen2 decoder, for
transformers with ``trust_remote_code=True``.

Written by remix-jax's ``python -m remix_jax.export --format=hf-mixture`` next to config.json and
model.safetensors; it needs only torch and transformers. The format (config fields, tensor names) is documented
in remix-jax's docs/export.md. Routing is computed as remix-jax computes it at inference:

    logits = x W_router^T in float32 (x: the FFN input for the block router, a projection's own input otherwise)
    remix      pi_i = selected_weight on the top_k experts, 0 elsewhere (ties to the lower expert index)
    mixlora    pi = softmax(logits) on the top_k experts (of the probabilities, ties to the lower index),
               renormalised to sum 1, 0 elsewhere
    hydralora, softmax_dense   pi = softmax(logits) over all experts
    projection output = x W^T (+ b) + expert_scale * sum_i pi_i (x A_i^T) B_i^T
    (hydralora: one A shared by the experts; mixlora_form "expert_ffn": sum_i pi_i FFN_i(x), FFN_i the whole
    SwiGLU FFN with expert i's LoRAs on gate/up/down)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.activations import ACT2FN

FORMAT_VERSION = 1
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")
METHODS = ("remix", "mixlora", "hydralora", "softmax_dense")


def check_spec(spec: dict) -> dict:
    """The ``remix_mixture`` field of config.json, validated; a ValueError names the bad field."""
    if not isinstance(spec, dict):
        raise ValueError(f"config.json: 'remix_mixture' must be an object, got {spec!r}")
    need = ("format_version", "method", "num_experts", "top_k", "rank", "targets", "router_scope", "expert_scale")
    missing = [k for k in need if k not in spec]
    if missing:
        raise ValueError(f"config.json: remix_mixture lacks {missing}")
    if spec["format_version"] != FORMAT_VERSION:
        raise ValueError(f"config.json: remix_mixture.format_version={spec['format_version']!r}; this code reads "
                         f"version {FORMAT_VERSION}")
    if spec["method"] not in METHODS:
        raise ValueError(f"config.json: remix_mixture.method={spec['method']!r}; known: {', '.join(METHODS)}")
    if spec["method"] == "remix" and "selected_weight" not in spec:
        raise ValueError("config.json: remix_mixture.selected_weight is missing (ReMix's constant weight omega)")
    unknown = [t for t in spec["targets"] if t not in ATTN + FFN]
    if unknown:
        raise ValueError(f"config.json: remix_mixture.targets has unknown projections {unknown}")
    if spec["router_scope"] not in ("block", "projection"):
        raise ValueError(f"config.json: remix_mixture.router_scope={spec['router_scope']!r}")
    if not 1 <= spec["top_k"] <= spec["num_experts"]:
        raise ValueError(f"config.json: remix_mixture.top_k={spec['top_k']} must be in [1, num_experts]")
    return spec


def total_order_key(z: torch.Tensor) -> torch.Tensor:
    """int32 keys ordered like the IEEE total order of float32 z (-0.0 < +0.0), as jax.lax.top_k orders."""
    bits = z.to(torch.float32).contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def top_k_mask(z: torch.Tensor, k: int) -> torch.Tensor:
    """Membership of the k largest entries of z [..., n] -> bool [..., n]; ties go to the lower index."""
    key = total_order_key(z)
    n = key.shape[-1]
    idx = torch.arange(n, device=z.device)
    kj, ki = key.unsqueeze(-2), key.unsqueeze(-1)  # [..., 1, n] (entry j), [..., n, 1] (entry i)
    ahead = (kj > ki) | ((kj == ki) & (idx.view(1, n) < idx.view(n, 1)))  # entry j comes before entry i
    return ahead.sum(-1) < k


def route(router: nn.Linear, x: torch.Tensor, spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(pi [..., n] float32 without expert_scale, selected [..., n] bool) for the inputs x [..., d]."""
    logits = F.linear(x.to(torch.float32), router.weight.to(torch.float32))
    method, k = spec["method"], spec["top_k"]
    if method == "remix":
        mask = top_k_mask(logits, k)
        return torch.where(mask, float(spec["selected_weight"]), 0.0).to(torch.float32), mask
    probs = torch.softmax(logits, dim=-1)
    if method == "mixlora":
        mask = top_k_mask(probs, k)
        top = torch.where(mask, probs, 0.0)
        return top / top.sum(-1, keepdim=True), mask
    return probs, torch.ones_like(probs, dtype=torch.bool)


class MixtureLinear(nn.Linear):
    """A frozen projection (weight [out, in], bias) plus n LoRA experts:
    lora_A [n, r, in] ([r, in] shared for hydralora), lora_B [n, out, r]; router [n, in] when it routes itself."""

    def __init__(self, in_features: int, out_features: int, bias: bool, spec: dict, own_router: bool):
        super().__init__(in_features, out_features, bias=bias)
        n, r = spec["num_experts"], spec["rank"]
        self.spec = spec
        self.lora_A = nn.Parameter(torch.zeros((r, in_features) if spec["method"] == "hydralora"
                                               else (n, r, in_features)))
        self.lora_B = nn.Parameter(torch.zeros(n, out_features, r))
        self.router = nn.Linear(in_features, n, bias=False) if own_router else None

    def expert_delta(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_i weights_i (x A_i^T) B_i^T: x [..., in], weights [..., n] (scale included) -> [..., out]."""
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        w = weights.to(x.dtype)
        if a.dim() == 2:  # HydraLoRA: one A, n B heads
            h = (x @ a.T).unsqueeze(-2) * w.unsqueeze(-1)  # [..., n, r]
        else:
            h = torch.einsum("...d,nrd->...nr", x, a) * w.unsqueeze(-1)
        return torch.einsum("...nr,nor->...o", h, b)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """weights [..., n]: the block router's pi * expert_scale; None routes x with this projection's router."""
        if weights is None:
            pi, _ = route(self.router, x, self.spec)
            weights = pi * float(self.spec["expert_scale"])
        return super().forward(x) + self.expert_delta(x, weights)


class MixtureMLP(nn.Module):
    """SwiGLU FFN whose targeted projections are MixtureLinear; with router_scope "block", one router reading the
    FFN input routes all three."""

    def __init__(self, config, spec: dict):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.spec = spec
        block = spec["router_scope"] == "block" and any(t in FFN for t in spec["targets"])
        for name, (i, o) in (("gate_proj", (d, f)), ("up_proj", (d, f)), ("down_proj", (f, d))):
            layer = (MixtureLinear(i, o, False, spec, own_router=not block) if name in spec["targets"]
                     else nn.Linear(i, o, bias=False))
            setattr(self, name, layer)
        self.router = nn.Linear(d, spec["num_experts"], bias=False) if block else None
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.router is None:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        pi, selected = route(self.router, x, self.spec)
        if self.spec.get("mixlora_form", "additive") == "expert_ffn":
            return self._expert_ffn(x, pi, selected)
        weights = pi * float(self.spec["expert_scale"])

        def proj(module, inp):
            return module(inp, weights) if isinstance(module, MixtureLinear) else module(inp)

        return proj(self.down_proj, self.act_fn(proj(self.gate_proj, x)) * proj(self.up_proj, x))

    def _expert_ffn(self, x: torch.Tensor, pi: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """MixLoRA's original form sum_i pi_i FFN_i(x), each expert run on the tokens that selected it."""
        shape, d = x.shape, x.shape[-1]
        xs, pi, selected = x.reshape(-1, d), pi.reshape(-1, pi.shape[-1]), selected.reshape(-1, pi.shape[-1])
        scale = float(self.spec["expert_scale"])
        base_g, base_u = F.linear(xs, self.gate_proj.weight), F.linear(xs, self.up_proj.weight)
        out = torch.zeros_like(xs)
        for e in range(pi.shape[-1]):
            rows = torch.nonzero(selected[:, e]).squeeze(-1)
            if rows.numel() == 0:
                continue
            xe = xs[rows]
            one = torch.zeros(pi.shape[-1], dtype=xs.dtype, device=xs.device)
            one[e] = scale
            g = base_g[rows] + self.gate_proj.expert_delta(xe, one)
            u = base_u[rows] + self.up_proj.expert_delta(xe, one)
            h = self.act_fn(g) * u
            y = F.linear(h, self.down_proj.weight) + self.down_proj.expert_delta(h, one)
            out.index_add_(0, rows, pi[rows, e, None].to(xs.dtype) * y)
        return out.reshape(shape)


def attach_mixture(decoder: nn.Module, config) -> None:
    """Replace the FFN of every block and its targeted attention projections (``config.remix_mixture``)."""
    spec = check_spec(config.remix_mixture)
    for layer in decoder.layers:
        layer.mlp = MixtureMLP(config, spec)
        for name in spec["targets"]:
            if name in ATTN:
                old = getattr(layer.self_attn, name)
                setattr(layer.self_attn, name, MixtureLinear(old.in_features, old.out_features, old.bias is not None,
                                                             spec, own_router=True))


@strict
class RemixMixtureLlamaConfig(LlamaConfig):
    model_type = "remix_mixture_llama"
    remix_mixture: dict | None = None


@strict
class RemixMixtureQwen2Config(Qwen2Config):
    model_type = "remix_mixture_qwen2"
    remix_mixture: dict | None = None


class RemixMixtureLlamaForCausalLM(LlamaForCausalLM):
    config_class = RemixMixtureLlamaConfig
    _keep_in_fp32_modules_strict = ["router"]  # routers run in float32, as in remix-jax

    def __init__(self, config):
        super().__init__(config)
        attach_mixture(self.model, config)
        self.post_init()


class RemixMixtureQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = RemixMixtureQwen2Config
    _keep_in_fp32_modules_strict = ["router"]

    def __init__(self, config):
        super().__init__(config)
        attach_mixture(self.model, config)
        self.post_init()
