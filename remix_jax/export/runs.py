"""What an export needs from a run folder: the base model, the adapter config and the trained adapters/routers.

The adapters come from WORKDIR/export (``training.checkpointing.export_adapters``) when it is at least as new as
the newest checkpoint, else from the newest checkpoint in WORKDIR/checkpoints (restored with the run's
WORKDIR/config.json), the same choice ``remix_jax.evaluate`` makes (``training.trained_model``). The base is
loaded in float32 so that merged weights and converted magnitudes are computed exactly; the export's dtype is
chosen when it is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from remix_jax.adapters.adapter_config import AdapterConfig
from remix_jax.training.trained_model import TRAINABLE


class RunLoadError(ValueError):
    """A run folder that cannot be exported; the message names the file."""


@dataclasses.dataclass
class RunParts:
    model_cfg: Any  # ModelConfig (float32)
    base: dict  # the decoder's frozen "params"
    adapter_cfg: AdapterConfig
    trainable: dict  # {"adapter": ..., "router": ...}, numpy, stacked [L, ...]
    tokenizer: Any  # models.tokenizer.load_tokenizer's, or None for random:SHAPE models
    model_path: str
    source: str  # "export DIR" or "checkpoint step N"


def load_base(path: str, run_config: Mapping[str, Any] | None = None) -> tuple[Any, dict, Any]:
    """(ModelConfig, float32 params, tokenizer or None) of a model path: a Hugging Face directory (its tokenizer
    when it has tokenizer.json), a .gguf file, or random:SHAPE (the run's model.init_seed)."""
    if path.startswith("random:"):
        import ml_collections

        from remix_jax.training.loop import load_base_model

        seed = (run_config or {}).get("model", {}).get("init_seed", 0)
        section = dict(path=path, dtype="float32", param_dtype="float32", remat="none", attention_impl="xla",
                       scan_unroll=1, init_seed=seed)
        return load_base_model(ml_collections.ConfigDict(section))
    from remix_jax.models.loading import load_model, load_tokenizer

    cfg, params = load_model(path, dtype="float32", param_dtype="float32")
    has_tokenizer = not os.path.isdir(path) or os.path.exists(os.path.join(path, "tokenizer.json"))
    return cfg, params, load_tokenizer(path) if has_tokenizer else None


def load_run(workdir: str, model_path: str | None = None) -> RunParts:
    """The parts of the run in ``workdir``; ``model_path`` overrides the base model's path the run recorded."""
    import jax
    import ml_collections

    from remix_jax.adapters import build_model, init_adapter_variables
    from remix_jax.training import trained_model

    if not os.path.isdir(workdir):
        raise RunLoadError(f"{workdir}: no such run folder")
    cfg_file = os.path.join(workdir, "config.json")
    run_config = None
    if os.path.exists(cfg_file):
        try:
            with open(cfg_file) as f:
                run_config = json.load(f)
        except json.JSONDecodeError as e:
            raise RunLoadError(f"{cfg_file}: not valid JSON ({e})") from e
    found = trained_model.find_adapters(workdir)
    if found is None:
        raise RunLoadError(f"{workdir}: no adapters (neither export/adapters.safetensors nor checkpoints/)")
    kind, where = found
    if kind == "export":
        from remix_jax.training.checkpointing import load_exported_adapters

        flat, description = load_exported_adapters(where)
        adapter_cfg = AdapterConfig.from_dict(description["adapter"])
        path = model_path or description.get("model_path", "")
    else:
        if run_config is None:
            raise RunLoadError(f"{cfg_file}: missing; a checkpoint is restored with the run's config")
        adapter_cfg = AdapterConfig.from_dict(run_config["adapter"])
        path = model_path or run_config.get("model", {}).get("path", "")
    if not path:
        raise RunLoadError(f"{workdir}: the run records no model path; pass the base model (--model=PATH)")
    model_cfg, base, tokenizer = load_base(path, run_config)
    model = build_model(model_cfg, adapter_cfg)
    template = init_adapter_variables(model, jax.random.key(0))
    template = {g: template.get(g, {}) for g in TRAINABLE}
    if kind == "export":
        st = os.path.join(where, "adapters.safetensors")
        trainable = {g: trained_model.match_template(trained_model.unflatten(flat, g), template[g], st, RunLoadError)
                     for g in TRAINABLE}
        source = f"export {where}"
    else:
        trainable = trained_model.restore_checkpoint_trainable(workdir, where, template,
                                                               ml_collections.ConfigDict(dict(run_config)))
        source = f"checkpoint step {where}"
    return RunParts(model_cfg, base, adapter_cfg, trainable, tokenizer, path, source)
