"""One entry point for model loading: a Hugging Face directory or a .gguf file.

``load_model(path, **config_overrides) -> (ModelConfig, params)`` where params is the Decoder's
"params" collection (apply as ``Decoder(cfg).apply({"params": params}, tokens)``). On a terminal it shows the
tensors read so far of the total with their rate and ETA (``progress=False`` or REMIX_PROGRESS=0: never;
remix_jax/progress.py). ``load_model_config(path)`` reads the ModelConfig alone, without the weights.
"""

from __future__ import annotations

import os

from remix_jax import progress as progress_lib
from remix_jax.models.model_config import ModelConfig, ModelLoadError
from remix_jax.models.tokenizer import load_tokenizer

__all__ = ["load_model", "load_model_config", "load_tokenizer", "model_format"]


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


def gguf_tensor_count(path: str | os.PathLike) -> int | None:
    """The number of tensors a GGUF file holds, from its 24-byte header (magic, version, tensor count);
    None when the header is not a GGUF one (the loader then names the problem)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:4] != b"GGUF":
        return None
    return int.from_bytes(head[8:16], "little")


def load_model_config(path: str | os.PathLike, **config_overrides) -> ModelConfig:
    """The ModelConfig of a Hugging Face directory (its config.json) or a GGUF file (its metadata), without
    reading the weights: what a run checks its other inputs against before loading the model."""
    fmt = model_format(path)
    path = os.fspath(path)
    if fmt == "gguf":
        from remix_jax.models.gguf_io import _open_reader, gguf_config

        return gguf_config(_open_reader(path), path, **config_overrides)
    import pathlib

    from remix_jax.models.hf_io import _read_config

    return _read_config(pathlib.Path(path), **config_overrides)


class _TensorBar:
    """A progress bar over the tensors of one load; ``__call__(done, total)`` is the loaders' callback."""

    def __init__(self, path: str, total: int | None, enabled: bool):
        self.bar = progress_lib.bar(total, f"loading {os.path.basename(os.path.normpath(path))}", "tensor", enabled)
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if getattr(self.bar, "total", total) != total:  # the first tensor: the rate counts from here
            self.bar.reset(total=total)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.bar.close()


def load_model(path: str | os.PathLike, progress: bool = True, **config_overrides) -> tuple[ModelConfig, dict]:
    """Load a checkpoint from a Hugging Face directory or a GGUF file (see module docstring)."""
    fmt = model_format(path)
    path = os.fspath(path)
    if fmt == "gguf":
        from remix_jax.models.gguf_io import load_gguf

        # gguf_io takes no per-tensor callback yet: one status line instead of a bar.
        n = gguf_tensor_count(path)
        progress_lib.note(f"loading {path} (GGUF{f', {n} tensors' if n else ''}) ...", progress)
        return load_gguf(path, **config_overrides)
    from remix_jax.models.hf_io import load_hf_checkpoint

    bar = _TensorBar(path, None, progress)
    try:
        return load_hf_checkpoint(path, on_tensor=bar, **config_overrides)
    finally:
        bar.close()
