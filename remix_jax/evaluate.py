"""Evaluation entry point.

    python -m remix_jax.evaluate --config=configs/NAME.py[:VARIANT] --workdir=DIR \
        [--config.eval.tasks=gsm8k,arc_c] [--eval_name=NAME]

Loads the base model from ``config.model.path`` and attaches the adapters and routers of DIR: the final
export (DIR/export/adapters.safetensors + adapter_config.json) when it is at least as new as the newest
checkpoint, else the newest checkpoint (DIR/checkpoints, built with ``config.adapter``). Without either
the base model is evaluated (and the output says so). Every file the evaluation reads is checked before
the model is loaded. Writes <task>.json (metrics, counts, config, commit, adapter source, routing
statistics) and <task>.predictions.jsonl, and prints a table and where the files are:

- into DIR/eval/ when DIR is not a training run and DIR/eval/ holds no results yet;
- else into DIR/evals/<NAME>/ (NAME: --eval_name, default the UTC time, e.g. 20261204-135501), so a
  training run's own results (DIR/eval/) and earlier evaluations are never overwritten.

``config.eval`` is ``remix_jax.evaluation.config.default_eval_config()`` (data paths must be set). Tasks defined as
data (the built-in piqa, arc_easy, arc_challenge, hellaswag, arc_c_mc, ... and your own through
``--config.eval.task_files=FILE.yaml``) are described in docs/tasks.md.
Expected failures end in a short message and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from typing import Any

from absl import app, flags

from remix_jax.cli import UserError

_FLAGS: dict = {}  # defined only when run as a program, so other modules and tests may import this one
TRAINING_RUN_FILES = ("config.json", "run_complete.json", "metrics.jsonl")  # written by remix_jax.main


def _define_flags() -> None:
    from remix_jax import cli

    _FLAGS["config"] = cli.define_config_flag()
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Run folder: adapters are read from it; results go to its eval/ or evals/NAME/.")
    _FLAGS["eval_name"] = flags.DEFINE_string(
        "eval_name", "", "Write the results to WORKDIR/evals/NAME/ (default for a training run or a folder "
        "that already holds results: the UTC time).")


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

    from remix_jax.models.config import ModelLoadError
    from remix_jax.training.checkpointing import flatten_tree

    want, got = flatten_tree(template), flatten_tree(loaded)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ModelLoadError(
            f"{where}: adapter tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k in want:
        if want[k].shape != got[k].shape:
            raise ModelLoadError(
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


def load_for_eval(config, workdir: str, log=print, require_adapters: bool = False) -> LoadedModel:
    """Base model + the newest adapters of ``workdir`` (see the module docstring). ``require_adapters``:
    a workdir without adapters is an error instead of an evaluation of the base model."""
    import jax

    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.models.config import ModelLoadError
    from remix_jax.models.llama import Decoder
    from remix_jax.models.loading import load_tokenizer
    from remix_jax.training.loop import load_base_model

    ev = eval_section(config)
    found = find_adapters(workdir)
    if found is None and require_adapters:
        raise UserError(f"{workdir}: no adapters (no export/ and no checkpoint in checkpoints/)",
                        "train the run first, or check the folder")
    model_cfg, base, tokenizer = load_base_model(config.model)  # a progress bar on a terminal
    if ev.tokenizer:
        tokenizer = load_tokenizer(ev.tokenizer)
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
    log(f"model {config.model.path} with adapters from {source} (method {adapter_cfg.method})")
    return LoadedModel(
        model, {"params": base, **trainable}, tokenizer, source, dataclasses.asdict(adapter_cfg)
    )


def results_dir(workdir: str, name: str = "") -> str:
    """Where this evaluation's <task>.json files go (see the module docstring); never a folder that already
    holds results."""
    if name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            raise UserError(f"--eval_name={name!r}: use letters, digits and . _ + - only")
        out = os.path.join(workdir, "evals", name)
        if _holds_results(out):
            raise UserError(f"{out} already holds results", "choose another --eval_name")
        return out
    own = os.path.join(workdir, "eval")
    if not _holds_results(own) and not any(os.path.exists(os.path.join(workdir, f)) for f in TRAINING_RUN_FILES):
        return own
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out, n = os.path.join(workdir, "evals", stamp), 1
    while os.path.exists(out):
        n += 1
        out = os.path.join(workdir, "evals", f"{stamp}-{n}")
    return out


def _holds_results(folder: str) -> bool:
    return os.path.isdir(folder) and any(f.endswith(".json") for f in os.listdir(folder))


def check_config(config) -> list[str]:
    """Every problem of ``config`` that evaluation meets, before any model is loaded: the eval section and
    every file it names, and model.path. Raises one ConfigError listing them; returns the task names."""
    from remix_jax.config import ConfigError, model_path_problems, problem_lines
    from remix_jax.evaluation.config import EvalConfigError, validate_eval_config

    problems, tasks = model_path_problems(config.model.path), []
    try:
        tasks = validate_eval_config(eval_section(config))
    except EvalConfigError as e:
        problems += problem_lines(e)
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks


def _config_drift(config, workdir: str) -> list[str]:
    """model.* / adapter.* keys where ``config`` differs from the training run's config.json."""
    from remix_jax import rundir

    recorded = rundir.recorded_config(workdir)
    if recorded is None:
        return []
    now = rundir.config_dict(config)
    return [f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in rundir.diff(
        {s: recorded.get(s, {}) for s in ("model", "adapter")}, {s: now.get(s, {}) for s in ("model", "adapter")})
        if not k.startswith(("model.dtype", "model.param_dtype", "model.remat", "model.scan_unroll"))]


def run(config, workdir: str, log=print, generators: dict | None = None, name: str = "",
        progress: bool = False) -> dict[str, dict]:
    """Evaluate every task of config.eval.tasks; returns task -> metrics (files written under
    ``results_dir(workdir, name)``, which the log names)."""
    import copy

    from remix_jax.config import resolve_dtypes
    from remix_jax.evaluation import evaluator, results

    config = copy.deepcopy(config)
    with config.unlocked():
        resolve_dtypes(config)  # model.dtype / param_dtype "auto"
    ev = eval_section(config)
    tasks = check_config(config)
    out_dir = results_dir(workdir, name)
    os.makedirs(out_dir, exist_ok=True)  # fails now, before the model is loaded, when it cannot be written
    for line in _config_drift(config, workdir):
        log(f"warning: the run in {workdir} was trained with another setting: {line}")
    loaded = load_for_eval(config, workdir, log)
    runner = evaluator.ModelRunner(
        loaded.model,
        loaded.variables,
        loaded.tokenizer,
        batch_size=ev.batch_size,
        routing_stats=ev.routing_stats,
        seed=ev.seed,
        remix_kernels=str(ev.get("remix_kernels", "auto")),
        progress=progress,
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
            out_dir, task, res.metrics, res.predictions, config=config, extra=extra, subdir=""
        )
        scalars = {k: v for k, v in res.metrics.items() if not isinstance(v, dict)}
        log(f"{task}: {json.dumps(scalars)} -> {path}")
        out[task] = res.metrics
    named = [m for m in ("acc", "acc_norm") if any(m in metrics for metrics in out.values())]
    log(results.format_table(out, columns=["accuracy", *named, "num_correct", "num_examples"]))
    log(f"results written to {out_dir}")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    if config is None:
        raise app.UsageError("--config=configs/NAME.py[:VARIANT] is required")
    if not workdir:
        raise app.UsageError("--workdir=DIR is required")
    progress = bool(config.train.progress) if "train" in config else True
    if not progress:
        os.environ["REMIX_PROGRESS"] = "0"  # model loading too (remix_jax/progress.py)
    run(config, workdir, name=_FLAGS["eval_name"].value, progress=progress)


if __name__ == "__main__":
    from remix_jax import cli

    _define_flags()
    cli.run(main)
