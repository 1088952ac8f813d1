"""Adapters on the frozen decoder: LoRA / rsLoRA / DoRA and the mixture-of-LoRAs layer."""

from remix_jax.adapters.config import AdapterConfig, AdapterConfigError, validate_adapter_config
from remix_jax.adapters.modules import (
    AdaptedMLP,
    AdaptedProjection,
    build_model,
    cast_factors_for_inference,
    init_adapter_variables,
)

__all__ = ["AdapterConfig", "AdapterConfigError", "AdaptedMLP", "AdaptedProjection", "build_model",
           "cast_factors_for_inference", "init_adapter_variables", "validate_adapter_config"]
