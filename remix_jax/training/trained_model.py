"""The model a training run leaves in its folder: the base model with the run's newest adapters and routers.

The adapters come from WORKDIR/export (``checkpointing.export_adapters``) when it is at least as new as the
newest checkpoint, else from the newest checkpoint in WORKDIR/checkpoints (restored with the run's config):
``find_adapters``. ``load_trained_model`` builds the ready-to-apply model (``python -m remix_jax.evaluate`` and
``python -m remix_jax.generate --run``); ``export.runs`` reads the same adapters with the helpers below.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from remix_jax.cli import UserError
from remix_jax.training import checkpointing

TRAINABLE = ("adapter", "router")


@dataclasses.dataclass
class LoadedModel:
    model: Any  # Decoder (adapted or base)
    variables: dict  # {"params", "adapter"?, "router"?}
    tokenizer: Any
    source: str  # "base model", "export DIR/export", "checkpoint step N"
    adapter: dict | None  # the adapter configuration used, as a dict


def find_adapters(workdir: str) -> tuple[str, Any] | None:
    """("export", dir) or ("checkpoint", step) for the newest adapters in ``workdir``; None if none."""
    export = os.path.join(workdir, "export")
    has_export = os.path.exists(os.path.join(export, "adapters.safetensors"))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    step = None
    if os.path.isdir(ckpt_dir):
        steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
        step = max(steps) if steps else None
    if has_export:
        with open(os.path.join(export, "adapter_config.json")) as f:
            exported_steps = json.load(f).get("train", {}).get("num_steps", -1)
        if step is None or exported_steps >= step:
            return "export", export
    if step is not None:
        return "checkpoint", step
    return None


def unflatten(flat: Mapping[str, Any], group: str) -> dict:
    """The nested tree of one collection (``group``: "adapter" or "router") of an export's flat
    {"group/a/b/name": array} dict."""
    out: dict = {}
    for name, arr in flat.items():
        parts = name.split("/")
        if parts[0] != group:
            continue
        node = out
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = arr
    return out


def match_template(loaded: dict, template: dict, where: str, error: type[Exception]) -> dict:
    """``loaded`` with exactly the names and shapes of ``template`` (else ``error`` naming ``where`` and the
    tensor), as numpy arrays of the template's dtypes."""
    want, got = checkpointing.flatten_tree(template), checkpointing.flatten_tree(loaded)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise error(f"{where}: the adapter tensors do not match the adapter config: missing {missing[:5]}, "
                    f"unexpected {extra[:5]}")
    for k in want:
        if want[k].shape != got[k].shape:
            raise error(f"{where}: tensor {k} has shape {got[k].shape}, the adapter config implies {want[k].shape}")
    return jax.tree.map(lambda t, x: np.asarray(x, t.dtype), template, loaded)


def restore_checkpoint_trainable(workdir: str, step: int, template: dict, config) -> dict:
    """The adapters and routers ({"adapter", "router"}, numpy, like ``template``) of checkpoint ``step`` in
    WORKDIR/checkpoints, restored with the optimizer of the run's ``config`` (a ConfigDict)."""
    from remix_jax.training import optimizer as opt_lib
    from remix_jax.training.loop import optimizer_config
    from remix_jax.training.train_state import create_train_state

    tx, _ = opt_lib.make_optimizer(optimizer_config(config))
    state = create_train_state(None, template, tx)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        state, _, _ = ckpt.restore(state, step=step)
    finally:
        ckpt.close()
    return jax.tree.map(np.asarray, jax.device_get(state.trainable))


def load_trained_model(config, workdir: str, log=print, require_adapters: bool = False) -> LoadedModel:
    """Base model (``config.model``) + the newest adapters of ``workdir`` (see the module docstring), with the
    tokenizer of ``config.eval.tokenizer`` where set, else the model's own. ``require_adapters``: a workdir
    without adapters is an error instead of the base model alone."""
    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.models.llama import Decoder
    from remix_jax.models.loading import load_tokenizer
    from remix_jax.models.model_config import ModelLoadError
    from remix_jax.training.loop import load_base_model

    found = find_adapters(workdir)
    if found is None and require_adapters:
        raise UserError(f"{workdir}: no adapters (no export/ and no checkpoint in checkpoints/)",
                        "train the run first, or check the folder")
    model_cfg, base, tokenizer = load_base_model(config.model)  # a progress bar on a terminal
    tokenizer_path = config.eval.get("tokenizer", "") if "eval" in config else ""
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer is None:
        raise UserError(f"model.path={config.model.path!r} has no tokenizer", "set eval.tokenizer")
    if len(tokenizer) > model_cfg.vocab_size:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {model_cfg.vocab_size}"
        )
    if found is None:
        log(f"no adapters in {workdir} (no export/ and no checkpoints/): evaluating the base model")
        return LoadedModel(Decoder(model_cfg), {"params": base}, tokenizer, "base model", None)
    kind, where = found
    if kind == "export":
        flat, description = checkpointing.load_exported_adapters(where)
        adapter_cfg = AdapterConfig.from_dict(description["adapter"])
    else:
        adapter_cfg = AdapterConfig.from_dict(dict(config.adapter))
    model = build_model(model_cfg, adapter_cfg)
    template = init_adapter_variables(model, jax.random.key(0))
    template = {g: template.get(g, {}) for g in TRAINABLE}
    if kind == "export":
        st = os.path.join(where, "adapters")
        trainable = {g: match_template(unflatten(flat, g), template[g], st, ModelLoadError) for g in TRAINABLE}
        source = f"export {where}"
    else:
        trainable = restore_checkpoint_trainable(workdir, where, template, config)
        source = f"checkpoint step {where}"
    log(f"model {config.model.path} with adapters from {source} (method {adapter_cfg.method})")
    return LoadedModel(model, {"params": base, **trainable}, tokenizer, source, dataclasses.asdict(adapter_cfg))
