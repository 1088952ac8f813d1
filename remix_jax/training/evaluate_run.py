"""What ``python -m remix_jax.evaluate`` does: a model, or a training run's trained model, scored on the tasks of
``config.eval``, the results written where they overwrite nothing.

``run(config, workdir)`` loads the base model from ``config.model.path`` and attaches the adapters and routers
of WORKDIR (``training.trained_model.load_trained_model``: the final export when it is at least as new as the
newest checkpoint, else the newest checkpoint; without either the base model, and the log says so). Every file
the evaluation reads is checked before the model is loaded (``check_config``). It writes <task>.json (metrics,
counts, config, commit, adapter source, routing statistics) and <task>.predictions.jsonl, and logs a table and
where the files are (``results_dir``):

- into WORKDIR/eval/ when WORKDIR is not a training run and WORKDIR/eval/ holds no results yet;
- else into WORKDIR/evals/<NAME>/ (NAME: ``name``, the command's --eval_name, default the UTC time, e.g.
  20261204-135501), so a training run's own results (WORKDIR/eval/) and earlier evaluations are never overwritten.

``config.eval`` defaults to ``remix_jax.evaluation.eval_config.default_eval_config()``. Messages name the
command's flags (--eval_name), as they are the user's to fix.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re

from remix_jax import rundir
from remix_jax.cli import UserError
from remix_jax.evaluation import chat_format, evaluator, results
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, validate_eval_config
from remix_jax.evaluation.scoring import DEFAULT_PACK_LEN
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK
from remix_jax.run_config import ConfigError, model_path_problems, problem_lines, resolve_dtypes
from remix_jax.training.trained_model import load_trained_model

TRAINING_RUN_FILES = ("config.json", "run_complete.json", "metrics.jsonl")  # written by remix_jax.main


def eval_section(config):
    """config.eval, or the defaults when the config has none."""
    return config.eval if "eval" in config else default_eval_config()


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
    problems, tasks = model_path_problems(config.model.path), []
    try:
        tasks = validate_eval_config(eval_section(config))
    except EvalConfigError as e:
        problems += problem_lines(e)
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks


def _config_drift(config, workdir: str) -> list[str]:
    """model.* / adapter.* keys where ``config`` differs from the training run's config.json (a key the record
    lacks at its schema default is no difference; adapter.init_from only chose the run's step-0 adapter)."""
    recorded = rundir.recorded_config(workdir)
    if recorded is None:
        return []
    now = rundir.config_dict(config)
    old = {s: recorded.get(s, {}) for s in ("model", "adapter")}
    changes = rundir.added_with_default(old, rundir.diff(old, {s: now.get(s, {}) for s in ("model", "adapter")}))
    return [f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in changes
            if not k.startswith(("model.dtype", "model.param_dtype", "model.remat", "model.scan_unroll",
                                 "model.offload_keep_fraction", "adapter.init_from"))]


def run(config, workdir: str, log=print, generators: dict | None = None, name: str = "",
        progress: bool = False) -> dict[str, dict]:
    """Evaluate every task of config.eval.tasks; returns task -> metrics (files written under
    ``results_dir(workdir, name)``, which the log names)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        resolve_dtypes(config)  # model.dtype / param_dtype "auto"
    ev = eval_section(config)
    tasks = check_config(config)
    out_dir = results_dir(workdir, name)
    os.makedirs(out_dir, exist_ok=True)  # fails now, before the model is loaded, when it cannot be written
    for line in _config_drift(config, workdir):
        log(f"warning: the run in {workdir} was trained with another setting: {line}")
    loaded = load_trained_model(config, workdir, log)
    chat_format.check_tokenizer(ev, loaded.tokenizer, config.model.path)
    runner = evaluator.ModelRunner(
        loaded.model,
        loaded.variables,
        loaded.tokenizer,
        batch_size=ev.batch_size,
        routing_stats=ev.routing_stats,
        seed=ev.seed,
        remix_kernels=str(ev.get("remix_kernels", "auto")),
        share_context=bool(ev.get("share_context", True)),
        prefill_chunk=int(ev.get("prefill_chunk", DEFAULT_PREFILL_CHUNK)),
        pack_len=int(ev.get("pack_len", DEFAULT_PACK_LEN)),
        progress=progress,
    )
    out = {}
    for task in tasks:
        res, seconds = evaluator.run_task_timed(task, runner, ev, (generators or {}).get(task))
        extra = {
            "model_path": config.model.path,
            "adapters": loaded.source,
            "adapter_config": loaded.adapter,
            "routing_stats": res.routing_stats,
            "seconds": seconds,
        }
        path = results.write_task_results(
            out_dir, task, res.metrics, res.predictions, config=config, extra=extra, subdir=""
        )
        scalars = {k: v for k, v in res.metrics.items() if not isinstance(v, dict)}
        log(f"{task}: {json.dumps(scalars)} -> {path}")
        log(f"{task} took {evaluator.format_seconds(seconds)}")
        out[task] = res.metrics
    named = [m for m in ("acc", "acc_norm") if any(m in metrics for metrics in out.values())]
    log(results.format_table(out, columns=["accuracy", *named, "num_correct", "num_examples"]))
    log(f"results written to {out_dir}")
    return out
