"""The optimizer: AdamW with separate learning rates for adapters and routers, no state for the base.

Only the trainable tree {"adapter": ..., "router": ...} is ever given to the optimizer; the frozen base
parameters are not part of the optimized pytree at all, so they have no moments and no gradients.
``optax.multi_transform`` labels each top-level collection and applies its own schedule. Global-norm
clipping runs over adapters and routers together, before the per-group Adam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

GROUPS = ("adapter", "router")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    adapter_lr: float = 2e-4
    router_lr: float = 1e-3
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_fraction: float = 0.0  # cosine decays to this fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float = 1.0  # <= 0 disables clipping


def learning_rate_schedule(peak: float, cfg: OptimizerConfig) -> Callable:
    """Linear warmup from 0 to ``peak`` over warmup_steps, then cosine decay to end_lr_fraction * peak."""
    warmup = max(int(cfg.warmup_steps), 0)
    decay = max(int(cfg.total_steps), warmup + 1)
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_lr_fraction)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay, end_value=peak * cfg.end_lr_fraction)


def group_labels(trainable: dict) -> dict:
    """Label every leaf of {"adapter": ..., "router": ...} with its top-level group name."""
    import jax

    return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in trainable.items()}


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
    """(transformation over the trainable tree, {group: lr schedule}) for adapters and routers."""
    schedules = {"adapter": learning_rate_schedule(cfg.adapter_lr, cfg),
                 "router": learning_rate_schedule(cfg.router_lr, cfg)}

    def adamw(schedule):
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)

    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.multi_transform({g: adamw(schedules[g]) for g in GROUPS}, group_labels))
    return optax.chain(*parts), schedules
