"""One entry point for model loading: a Hugging Face directory or a .gguf file.

``load_model(path, **config_overrides) -> (ModelConfig, params)`` where params is the Decoder's
"params" collection (apply as ``Decoder(cfg).apply({"params": params}, tokens)``).
"""

from __future__ import annotations

import os

from remix_jax.models.config import ModelConfig, ModelLoadError
from remix_jax.models.tokenizer import load_tokenizer

__all__ = ["load_model", "load_tokenizer", "model_format"]


def model_format(path: str | os.PathLike) -> str:
    """"hf" for a model directory, "gguf" for a .gguf file; ModelLoadError otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return "hf"
    if path.endswith(".gguf"):
        return "gguf"
    raise ModelLoadError(
        f"{path}: unknown model format (expected a Hugging Face model directory or a .gguf file)")


def load_model(path: str | os.PathLike, **config_overrides) -> tuple[ModelConfig, dict]:
    """Load a checkpoint from a Hugging Face directory or a GGUF file (see module docstring)."""
    if model_format(path) == "gguf":
        from remix_jax.models.gguf_io import load_gguf

        return load_gguf(path, **config_overrides)
    from remix_jax.models.hf_io import load_hf_checkpoint

    return load_hf_checkpoint(path, **config_overrides)
