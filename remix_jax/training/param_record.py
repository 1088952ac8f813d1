"""A run's parameter counts in WORKDIR/params.json: {"trainable": int, "active": int} (``adapters.param_count``).

``record`` writes the file when training starts, once the trainable state is built (``training.run``, process 0).
For a run that predates the file, ``backfill`` computes the counts from WORKDIR/config.json without training or
loading weights: the adapters' shapes come from ``jax.eval_shape`` of their initialisation on the model's
architecture, read from ``model.path`` (a GGUF header or a Hugging Face config.json; ``random:SHAPE`` names a
shape of ``models.model_config.NAMED_SHAPES``) or from ``model_path`` when the recorded path is not on this
machine. Where the run exported its adapters (WORKDIR/export/adapters.safetensors), the shapes are checked
against that file, so an override of another architecture is refused.
The sweep command line does this for a sweep's runs: ``python -m remix_jax.sweep --sweep=... --params_only``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax

from remix_jax.adapters.param_count import leaf_shapes, param_counts
from remix_jax.cli import UserError

PARAMS = "params.json"
CONFIG = "config.json"
EXPORT = os.path.join("export", "adapters.safetensors")
RANDOM = "random:"


def write_counts(workdir: str, counts: Mapping[str, int]) -> bool:
    """Write WORKDIR/params.json atomically unless it already holds ``counts``; whether it was written."""
    path = os.path.join(workdir, PARAMS)
    data = {"trainable": int(counts["trainable"]), "active": int(counts["active"])}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                if json.load(f) == data:
                    return False
        except json.JSONDecodeError:
            pass  # a damaged file is replaced by the counts of the run that owns the folder
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return True


def record(workdir: str, trainable: Mapping[str, Any], adapter_cfg) -> dict[str, int]:
    """Count the run's trainable tree ({"adapter", "router"}) and write WORKDIR/params.json; returns the counts."""
    counts = param_counts(trainable, adapter_cfg)
    write_counts(workdir, counts)
    return counts


def model_config(model_path: str, where: str):
    """The ModelConfig of ``model_path`` (random:SHAPE, a .gguf file or a Hugging Face directory), weights unread."""
    from remix_jax.models.model_config import NAMED_SHAPES, named_config

    if model_path.startswith(RANDOM):
        return named_config(model_path[len(RANDOM):])
    if not os.path.exists(model_path):
        raise UserError(f"{where}: model.path {model_path!r} does not exist here",
                        f"pass --model_path=PATH of the model the run trained on, or random:SHAPE with its "
                        f"architecture (SHAPE: {', '.join(sorted(NAMED_SHAPES))})")
    from remix_jax.models.loading import load_model_config

    return load_model_config(model_path)


def abstract_trainable(config: Mapping[str, Any], model_path: str | None = None, where: str = CONFIG):
    """(the trainable tree of ``config`` (a run's config.json) as jax.ShapeDtypeStruct leaves, its AdapterConfig)."""
    from remix_jax.adapters import AdapterConfig, AdapterConfigError, build_model, init_adapter_variables

    try:
        adapter_cfg = AdapterConfig.from_dict(dict(config["adapter"]))
        path = model_path or config["model"]["path"]
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: no adapter or model.path section ({e!r})") from None
    except AdapterConfigError as e:
        raise UserError(f"{where}: {e}") from None
    model = build_model(model_config(path, where), adapter_cfg)
    shapes = jax.eval_shape(lambda key: init_adapter_variables(model, key), jax.random.key(0))
    return shapes, adapter_cfg


def check_against_export(workdir: str, shapes: Mapping[str, Any]) -> None:
    """Refuse shapes that differ from the adapters the run exported (when it did), naming the first difference."""
    path = os.path.join(workdir, EXPORT)
    if not os.path.isfile(path):
        return
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        exported = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    ours = {**leaf_shapes(shapes.get("adapter", {}), "adapter/"), **leaf_shapes(shapes.get("router", {}), "router/")}
    if ours != exported:
        diff = sorted(set(ours) ^ set(exported)) or sorted(k for k in ours if ours[k] != exported[k])
        k = diff[0]
        raise UserError(f"{path}: the run's adapters differ from those of its config and model "
                        f"({k}: exported {exported.get(k)}, computed {ours.get(k)})",
                        "pass the --model_path of the model the run trained on")


def backfill(workdir: str, model_path: str | None = None) -> tuple[str, dict[str, int] | None]:
    """Write WORKDIR/params.json of a run that lacks it, from WORKDIR/config.json. Returns (what happened:
    "written", "present" (the file exists and is kept) or "no config.json" (nothing recorded yet), the counts)."""
    params_path, config_path = os.path.join(workdir, PARAMS), os.path.join(workdir, CONFIG)
    if os.path.isfile(params_path):
        return "present", None
    if not os.path.isfile(config_path):
        return "no config.json", None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    shapes, adapter_cfg = abstract_trainable(config, model_path, config_path)
    check_against_export(workdir, shapes)
    counts = param_counts(shapes, adapter_cfg)
    write_counts(workdir, counts)
    return "written", counts
