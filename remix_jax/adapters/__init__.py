"""Adapters on the frozen decoder: LoRA / rsLoRA / DoRA and the mixture-of-LoRAs layer (training and scoring;
the inference-only speed paths are in ``remix_jax.inference``)."""

from remix_jax.adapters.adapter_config import AdapterConfig, AdapterConfigError, validate_adapter_config
from remix_jax.adapters.modules import (
    AdaptedMLP,
    AdaptedProjection,
    build_model,
    init_adapter_variables,
)

__all__ = ["AdapterConfig", "AdapterConfigError", "AdaptedMLP", "AdaptedProjection", "build_model",
           "init_adapter_variables", "validate_adapter_config"]
