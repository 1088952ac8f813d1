"""The routing algorithm: sampler + log-probability, routing rules per method, diagnostics (RLOO: rloo.py)."""

from remix_jax.routing.diagnostics import (
    collect_routing_stats,
    distinct_subsets,
    effective_support_size,
    entropy,
    expert_load,
)
from remix_jax.routing.routers import RouterOutput, load_balancing_loss, route
from remix_jax.routing.sampler import gumbel_top_k, ordered_log_prob, top_k_select

__all__ = ["RouterOutput", "collect_routing_stats", "distinct_subsets", "effective_support_size", "entropy",
           "expert_load", "gumbel_top_k", "load_balancing_loss", "ordered_log_prob", "route", "top_k_select"]
