"""Write a run (or a base model) in a format other tools read; every directory is written whole or not at all.

Formats (``FORMATS``):
    peft        a PEFT LoRA adapter directory (lora, rslora, dora): adapter_config.json + adapter_model.safetensors
    merged      a plain Hugging Face model with the adapter folded into the base weights (lora, rslora, dora)
    hf-mixture  a Hugging Face model with routed experts, loaded by transformers with trust_remote_code=True
                (remix, mixlora, hydralora, softmax_dense)
    hf          the base model alone as a Hugging Face directory (no run needed)
A tokenizer, when the model has one, is saved beside the weights of every format.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

from remix_jax.adapters import peft_io
from remix_jax.export import merge, mixture
from remix_jax.export.runs import RunParts, load_base, load_run

FORMATS = ("peft", "merged", "hf-mixture", "hf")
DTYPES = ("float32", "bfloat16")


class ExportError(ValueError):
    """An export that cannot be written; the message names the path or the setting."""


def write_atomically(out: str | os.PathLike, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Call ``write(tmp)`` on a fresh sibling folder and rename it to ``out``; ``out`` must not exist (or be an
    empty folder), so a finished export is never overwritten and a failed one leaves nothing behind."""
    out = pathlib.Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists; an export never overwrites, choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        write(tmp)
        for f in tmp.rglob("*"):  # some writers create 0600 files; an export is for sharing
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_tokenizer(tokenizer, out: pathlib.Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def write_run(parts: RunParts, fmt: str, out: str | os.PathLike, dtype: str = "float32",
              base_model_name_or_path: str | None = None) -> pathlib.Path:
    """Write ``parts`` (``load_run``) as ``fmt`` into the new folder ``out``."""
    from remix_jax.models.hf_io import save_hf_checkpoint

    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    cfg, method = parts.adapter_cfg, parts.adapter_cfg.method
    if fmt in ("peft", "merged") and cfg.routed:
        raise ExportError(f"--format={fmt}: the run's adapter method {method!r} routes per token; "
                          "use --format=hf-mixture")
    if fmt == "hf-mixture":
        try:
            mixture.check_exportable(cfg)
        except ValueError as e:
            raise ExportError(f"--format=hf-mixture: {e}") from e
    if fmt == "peft" and dtype != "float32":
        raise ExportError("--format=peft: adapters are written in float32 (--dtype applies to merged, hf-mixture "
                          "and hf)")
    model_cfg = parts.model_cfg

    def write(tmp: pathlib.Path) -> None:
        if fmt == "peft":
            name = base_model_name_or_path
            if name is None and os.path.isdir(parts.model_path):
                name = os.path.abspath(parts.model_path)
            peft_io.save_peft_adapter(tmp, parts.trainable["adapter"], cfg, model_cfg.num_layers, parts.base, name)
        elif fmt == "merged":
            save_hf_checkpoint(tmp, model_cfg, merge.merge_adapter(parts.base, parts.trainable["adapter"], cfg),
                               dtype=dtype)
        elif fmt == "hf-mixture":
            mixture.save_mixture(tmp, model_cfg, parts.base, parts.trainable, cfg, dtype=dtype)
        else:
            save_hf_checkpoint(tmp, model_cfg, parts.base, dtype=dtype)
        _save_tokenizer(parts.tokenizer, tmp)

    return write_atomically(out, write)


def export_run(workdir: str, fmt: str, out: str | os.PathLike, dtype: str = "float32", model_path: str | None = None,
               base_model_name_or_path: str | None = None) -> pathlib.Path:
    """``python -m remix_jax.export --run=WORKDIR``: load the run's newest adapters and write them as ``fmt``
    (``hf`` writes the run's base model alone)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
    return write_run(load_run(workdir, model_path), fmt, out, dtype, base_model_name_or_path)


def export_base(model_path: str, out: str | os.PathLike, dtype: str = "float32") -> pathlib.Path:
    """A base model (HF directory, GGUF file, random:SHAPE) as a Hugging Face directory with its tokenizer."""
    from remix_jax.models.hf_io import save_hf_checkpoint

    if dtype not in DTYPES:
        raise ExportError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    model_cfg, base, tokenizer = load_base(model_path)

    def write(tmp: pathlib.Path) -> None:
        save_hf_checkpoint(tmp, model_cfg, base, dtype=dtype)
        _save_tokenizer(tokenizer, tmp)

    return write_atomically(out, write)
