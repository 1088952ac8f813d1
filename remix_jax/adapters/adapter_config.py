"""Adapter configuration: which projections get LoRA experts, how many, and how they are routed.

Validated up front (``validate_adapter_config``) so a typo or an impossible combination fails before any
compilation; every error names the offending key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from remix_jax.adapters.moe import resolve_compute

METHODS = ("lora", "rslora", "dora", "remix", "mixlora", "hydralora", "softmax_dense", "uniform_random")
# Methods without a router: one LoRA per projection.
SINGLE_METHODS = ("lora", "rslora", "dora")
# Methods that pick k of n experts per token (the rest weigh all n densely).
TOP_K_METHODS = ("remix", "mixlora", "uniform_random")
# Methods whose router has trainable weights.
LEARNED_ROUTER_METHODS = ("remix", "mixlora", "hydralora", "softmax_dense")

ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = ATTN_PROJECTIONS + FFN_PROJECTIONS
TARGET_SHORTHANDS = {"all": ALL_PROJECTIONS, "attn": ATTN_PROJECTIONS, "ffn": FFN_PROJECTIONS}

MAX_EXPERTS = 30  # selected subsets are encoded as int32 bit masks in the diagnostics
# The constant weight of a selected expert (remix, uniform_random): alpha/(k r), alpha/sqrt(k r), 2/(k r).
OMEGAS = ("lora", "rslora", "paper")


class AdapterConfigError(ValueError):
    """An adapter configuration that cannot be built; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """How adapters attach to the frozen decoder (docs/method.md §1, §2 and §4).

    method: lora | rslora | dora | remix | mixlora | hydralora | softmax_dense | uniform_random.
    targets: projection names, or the shorthands "all", "attn", "ffn" (normalised to a sorted-by-model
        tuple of names).
    num_experts (n) and top_k (k): forced to 1 for lora/rslora/dora; ignored by the dense routers
        (hydralora, softmax_dense) except for validation.
    rank (r), alpha: LoRA rank and scale numerator.
    omega: "lora", "rslora" or "paper" scaling. remix/uniform_random weight each selected expert by
        alpha/(k*r) ("lora"), alpha/sqrt(k*r) ("rslora") or 2/(k*r) ("paper": the paper's constant, whatever
        alpha); every other method scales each expert's LoRA by alpha/r or alpha/sqrt(r) (the method "rslora"
        always uses alpha/sqrt(r)) and does not accept "paper".
    router_scope: "block" (one router per block reading the FFN input, shared by the block's adapted FFN
        projections; adapted attention projections get their own router) or "projection".
    sample_at_inference: remix ablation: sample (instead of top-k) when deterministic=True.
    mixlora_form: "additive" (section 1 layer) or "expert_ffn" (each expert is the whole FFN).
    load_balance_coef: coefficient of MixLoRA's Switch-style loss (already applied in "aux_loss").
    router_dtype: dtype of router weights and logits (float32).
    router_init_std: std of the router's normal init; None means 0.1 / sqrt(d_in) so that the initial
        logits have std ~0.1 x RMS(router input) whatever the width (near-uniform q: no collapse at birth,
        docs/method.md §2.1, §5).
    expert_compute: "auto" | "dense" | "gather" (see remix_jax/adapters/moe.py and docs/routing.md).
    init_from: a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) whose factors are
        the adapter at step 0 of a new run (lora, rslora, dora only; adapters/peft_io.py); "" = fresh init. A
        resumed run takes its adapter from its checkpoint and does not read the directory.
    """

    method: str = "remix"
    targets: Any = FFN_PROJECTIONS
    num_experts: int = 8
    top_k: int = 2
    rank: int = 8
    alpha: float = 16.0
    omega: str = "lora"
    router_scope: str = "block"
    sample_at_inference: bool = False
    mixlora_form: str = "additive"
    load_balance_coef: float = 0.01
    router_dtype: str = "float32"
    router_init_std: float | None = None
    expert_compute: str = "auto"
    init_from: str = ""

    def __post_init__(self):
        object.__setattr__(self, "targets", _normalise_targets(self.targets))
        if self.method in SINGLE_METHODS:
            object.__setattr__(self, "num_experts", 1)
            object.__setattr__(self, "top_k", 1)
        _check(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterConfig:
        """Build from a mapping (e.g. an ml_collections ConfigDict); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AdapterConfigError(f"adapter config: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **kw) -> AdapterConfig:
        return dataclasses.replace(self, **kw)

    @property
    def routed(self) -> bool:
        return self.method not in SINGLE_METHODS

    @property
    def has_router_weights(self) -> bool:
        return self.method in LEARNED_ROUTER_METHODS

    @property
    def selects_top_k(self) -> bool:
        return self.method in TOP_K_METHODS

    @property
    def dense_experts(self) -> bool:
        """Whether the mixtures compute every expert for every token (expert_compute "dense", or "auto" where it
        resolves to dense, ``moe.resolve_compute``)."""
        return resolve_compute(self.expert_compute) == "dense"

    def lora_scale(self) -> float:
        """Per-expert LoRA scale: alpha/r ("lora") or alpha/sqrt(r) ("rslora"); 1 for remix/uniform
        (there omega is the routing weight itself)."""
        if self.method in ("remix", "uniform_random"):
            return 1.0
        if self.method == "rslora" or (self.method != "lora" and self.omega == "rslora"):
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank

    def omega_value(self) -> float:
        """remix/uniform_random weight of each selected expert: alpha/(k*r), alpha/sqrt(k*r) or 2/(k*r)."""
        kr = self.top_k * self.rank
        if self.omega == "paper":
            return 2.0 / kr
        return self.alpha / kr if self.omega == "lora" else self.alpha / math.sqrt(kr)


def _normalise_targets(targets: Any) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    try:
        items = tuple(targets)
    except TypeError as e:
        raise AdapterConfigError(f"adapter config key 'targets': expected names, got {targets!r}") from e
    names: list[str] = []
    for t in items:
        if not isinstance(t, str):
            raise AdapterConfigError(f"adapter config key 'targets': {t!r} is not a projection name")
        expanded = TARGET_SHORTHANDS.get(t, (t,))
        for name in expanded:
            if name not in ALL_PROJECTIONS:
                raise AdapterConfigError(
                    f"adapter config key 'targets': {t!r} matches no projection; known: "
                    f"{', '.join(ALL_PROJECTIONS)} or {', '.join(TARGET_SHORTHANDS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise AdapterConfigError("adapter config key 'targets': empty; name at least one projection")
    return tuple(n for n in ALL_PROJECTIONS if n in names)


def _check(c: AdapterConfig) -> None:
    def bad(key, msg):
        raise AdapterConfigError(f"adapter config key {key!r}: {msg}")

    if c.method not in METHODS:
        bad("method", f"unknown method {c.method!r}; known: {', '.join(METHODS)}")
    for key in ("num_experts", "top_k", "rank"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool):
            bad(key, f"expected an int, got {v!r}")
    if c.rank < 1:
        bad("rank", f"r={c.rank} must be >= 1")
    if c.num_experts < 1:
        bad("num_experts", f"n={c.num_experts} must be >= 1")
    if c.num_experts > MAX_EXPERTS:
        bad("num_experts", f"n={c.num_experts} exceeds the supported maximum {MAX_EXPERTS}")
    if c.top_k < 1:
        bad("top_k", f"k={c.top_k} must be >= 1")
    if c.top_k > c.num_experts:
        bad("top_k", f"k={c.top_k} exceeds num_experts n={c.num_experts}")
    if not isinstance(c.alpha, (int, float)) or not c.alpha > 0:
        bad("alpha", f"{c.alpha!r} must be a positive number")
    if c.omega not in OMEGAS:
        bad("omega", f"{c.omega!r}: expected one of {', '.join(map(repr, OMEGAS))}")
    if c.omega == "paper" and c.method not in ("remix", "uniform_random"):
        bad("omega", f"'paper' (2/(k r)) is the constant weight of remix and uniform_random, not of {c.method!r}")
    if c.router_scope not in ("block", "projection"):
        bad("router_scope", f"{c.router_scope!r}: expected 'block' or 'projection'")
    if c.mixlora_form not in ("additive", "expert_ffn"):
        bad("mixlora_form", f"{c.mixlora_form!r}: expected 'additive' or 'expert_ffn'")
    if c.method == "mixlora" and c.mixlora_form == "expert_ffn":
        if c.router_scope != "block":
            bad("mixlora_form", "'expert_ffn' needs router_scope='block' (one selection for the whole FFN)")
        if set(c.targets) & set(ATTN_PROJECTIONS) or set(c.targets) != set(FFN_PROJECTIONS):
            bad("targets", "mixlora_form='expert_ffn' adapts exactly gate_proj, up_proj and down_proj")
    if not isinstance(c.load_balance_coef, (int, float)) or c.load_balance_coef < 0:
        bad("load_balance_coef", f"{c.load_balance_coef!r} must be a number >= 0")
    if c.router_dtype not in ("float32", "bfloat16", "float16", "float64"):
        bad("router_dtype", f"{c.router_dtype!r} is not a floating dtype name")
    if c.router_init_std is not None and not c.router_init_std > 0:
        bad("router_init_std", f"{c.router_init_std!r} must be positive or None")
    if c.expert_compute not in ("auto", "dense", "gather"):
        bad("expert_compute", f"{c.expert_compute!r}: expected 'auto', 'dense' or 'gather'")
    if not isinstance(c.sample_at_inference, bool):
        bad("sample_at_inference", f"expected a bool, got {c.sample_at_inference!r}")
    if not isinstance(c.init_from, str):
        bad("init_from", f"expected a PEFT adapter directory (a string), got {c.init_from!r}")
    if c.init_from and c.method not in SINGLE_METHODS:
        bad("init_from", f"a PEFT LoRA adapter holds one adapter per projection: it can initialise "
                         f"{', '.join(SINGLE_METHODS)}, not method {c.method!r}")


def projection_shapes(model_cfg) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of every adaptable projection of a ModelConfig."""
    d, f = model_cfg.hidden_size, model_cfg.intermediate_size
    q, kv = model_cfg.num_heads * model_cfg.head_dim, model_cfg.num_kv_heads * model_cfg.head_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def validate_adapter_config(adapter_cfg: AdapterConfig | Mapping[str, Any], model_cfg) -> AdapterConfig:
    """Check ``adapter_cfg`` against ``model_cfg``; returns the AdapterConfig or raises AdapterConfigError."""
    if isinstance(adapter_cfg, Mapping):
        adapter_cfg = AdapterConfig.from_dict(adapter_cfg)
    if not isinstance(adapter_cfg, AdapterConfig):
        raise AdapterConfigError(
            f"adapter config: expected AdapterConfig or a mapping, got {type(adapter_cfg)}")
    _check(adapter_cfg)
    shapes = projection_shapes(model_cfg)
    for name in adapter_cfg.targets:
        d_in, d_out = shapes[name]
        if adapter_cfg.rank > min(d_in, d_out):
            raise AdapterConfigError(
                f"adapter config key 'rank': r={adapter_cfg.rank} exceeds min(d_in, d_out)="
                f"{min(d_in, d_out)} of {name}")
    if getattr(model_cfg, "mlp_chunks", 1) > 1 and adapter_cfg.routed:
        raise AdapterConfigError(
            f"model.mlp_chunks={model_cfg.mlp_chunks} applies to the unrouted adapters (lora, rslora, dora), "
            f"not to method {adapter_cfg.method!r}: a routed FFN would route each chunk on its own")
    return adapter_cfg
