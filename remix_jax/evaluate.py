"""Evaluation entry point.

    python -m remix_jax.evaluate --config=configs/NAME.py[:VARIANT] --workdir=DIR \
        [--config.eval.tasks=gsm8k,arc_c]

Loads the base model from ``config.model.path`` and attaches the adapters and routers of DIR: the final
export (DIR/export/adapters.safetensors + adapter_config.json) when it is at least as new as the newest
checkpoint, else the newest checkpoint (DIR/checkpoints, built with ``config.adapter``). Without either
the base model is evaluated (and the output says so). Writes DIR/eval/<task>.json (metrics, counts,
config, commit, adapter source, routing statistics) and DIR/eval/<task>.predictions.jsonl, and prints a
table. ``config.eval`` is ``remix_jax.evaluation.config.default_eval_config()`` (data paths must be set).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_FLAGS: dict = {}  # defined only when run as a program, so other modules and tests may import this one


def _define_flags() -> None:
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/NAME.py[:VARIANT]).", lock_config=True)
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Run folder: adapters are read from it, eval/ is written.")


@dataclasses.dataclass
class LoadedModel:
    model: Any  # Decoder (adapted or base)
    variables: dict  # {"params", "adapter"?, "router"?}
    tokenizer: Any
    source: str  # "base model", "export DIR/export", "checkpoint step N"
    adapter: dict | None  # the adapter configuration used, as a dict


def eval_section(config):
    """config.eval, or the defaults when the config has none."""
    from remix_jax.evaluation.config import default_eval_config

    return config.eval if "eval" in config else default_eval_config()


def _unflatten(flat: dict[str, Any], group: str) -> dict:
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


def _check_like(loaded: dict, template: dict, where: str) -> dict:
    """``loaded`` must have exactly the names and shapes of ``template``; returns it cast to its dtypes."""
    import jax
    import numpy as np

    from remix_jax.training.checkpointing import flatten_tree

    want, got = flatten_tree(template), flatten_tree(loaded)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"{where}: adapter tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k in want:
        if want[k].shape != got[k].shape:
            raise ValueError(
                f"{where}: tensor {k} has shape {got[k].shape}, the model expects {want[k].shape}"
            )
    return jax.tree.map(lambda t, x: np.asarray(x, t.dtype), template, loaded)


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


def load_for_eval(config, workdir: str, log=print) -> LoadedModel:
    """Base model + the newest adapters of ``workdir`` (see the module docstring)."""
    import jax

    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.models.llama import Decoder
    from remix_jax.models.loading import load_tokenizer
    from remix_jax.training.loop import load_base_model

    ev = eval_section(config)
    model_cfg, base, tokenizer = load_base_model(config.model)
    if ev.tokenizer:
        tokenizer = load_tokenizer(ev.tokenizer)
    if tokenizer is None:
        raise ValueError(f"model.path={config.model.path!r} has no tokenizer; set eval.tokenizer")
    if len(tokenizer) > model_cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {model_cfg.vocab_size}"
        )
    found = find_adapters(workdir)
    if found is None:
        log(f"no adapters in {workdir} (no export/ and no checkpoints/): evaluating the base model")
        return LoadedModel(Decoder(model_cfg), {"params": base}, tokenizer, "base model", None)
    kind, where = found
    if kind == "export":
        from remix_jax.training.checkpointing import load_exported_adapters

        flat, description = load_exported_adapters(where)
        adapter_cfg = AdapterConfig.from_dict(description["adapter"])
        model = build_model(model_cfg, adapter_cfg)
        template = init_adapter_variables(model, jax.random.key(0))
        trainable = {
            g: _check_like(_unflatten(flat, g), template.get(g, {}), os.path.join(where, "adapters"))
            for g in ("adapter", "router")
        }
        source = f"export {where}"
    else:
        from remix_jax.training import checkpointing
        from remix_jax.training import optimizer as opt_lib
        from remix_jax.training.loop import optimizer_config
        from remix_jax.training.train_state import create_train_state

        adapter_cfg = AdapterConfig.from_dict(dict(config.adapter))
        model = build_model(model_cfg, adapter_cfg)
        template = init_adapter_variables(model, jax.random.key(0))
        tx, _ = opt_lib.make_optimizer(optimizer_config(config))
        state = create_train_state(None, {g: template.get(g, {}) for g in ("adapter", "router")}, tx)
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        try:
            state, _, _ = ckpt.restore(state, step=where)
        finally:
            ckpt.close()
        trainable = jax.device_get(state.trainable)
        source = f"checkpoint step {where}"
    log(f"evaluating {config.model.path} with adapters from {source} (method {adapter_cfg.method})")
    return LoadedModel(
        model, {"params": base, **trainable}, tokenizer, source, dataclasses.asdict(adapter_cfg)
    )


def run(config, workdir: str, log=print, generators: dict | None = None) -> dict[str, dict]:
    """Evaluate every task of config.eval.tasks; returns task -> metrics (files written under DIR/eval)."""
    import copy

    from remix_jax.config import resolve_dtypes
    from remix_jax.evaluation import evaluator, results
    from remix_jax.evaluation.config import validate_eval_config

    config = copy.deepcopy(config)
    with config.unlocked():
        resolve_dtypes(config)  # model.dtype / param_dtype "auto"
    ev = eval_section(config)
    tasks = validate_eval_config(ev)
    loaded = load_for_eval(config, workdir, log)
    runner = evaluator.ModelRunner(
        loaded.model,
        loaded.variables,
        loaded.tokenizer,
        batch_size=ev.batch_size,
        routing_stats=ev.routing_stats,
        seed=ev.seed,
        remix_kernels=str(ev.get("remix_kernels", "auto")),
    )
    out = {}
    for task in tasks:
        res = evaluator.run_task(task, runner, ev, (generators or {}).get(task))
        extra = {
            "model_path": config.model.path,
            "adapters": loaded.source,
            "adapter_config": loaded.adapter,
            "routing_stats": res.routing_stats,
        }
        path = results.write_task_results(
            workdir, task, res.metrics, res.predictions, config=config, extra=extra
        )
        scalars = {k: v for k, v in res.metrics.items() if not isinstance(v, dict)}
        log(f"{task}: {json.dumps(scalars)} -> {path}")
        out[task] = res.metrics
    log(results.format_table(out, columns=["accuracy", "num_correct", "num_examples"]))
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    if config is None:
        raise app.UsageError("--config=configs/NAME.py[:VARIANT] is required")
    if not workdir:
        raise app.UsageError("--workdir=DIR is required")
    from remix_jax.data import DataError
    from remix_jax.evaluation.config import EvalConfigError
    from remix_jax.models.config import ModelLoadError

    try:
        run(config, workdir)
    except (EvalConfigError, ModelLoadError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
