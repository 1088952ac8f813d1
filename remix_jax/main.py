"""Training entry point: train, evaluate, write the run's outputs.

    python -m remix_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.key=value ...]

The config file's ``get_config(variant)`` returns a ConfigDict (see remix_jax/config.py for the schema);
it is locked, so overriding a key that does not exist fails. The config is validated before any model is
loaded or compiled, every file and folder it names included (data, evaluation files, the model), also those
read only at the end of training. DIR/config.json records the config (remix_jax/rundir.py). Rerunning the
same command resumes from the newest checkpoint in DIR; a run that has finished (DIR/run_complete.json
exists) is not trained again, its summary is printed from its files. Rerunning with a different config is
refused, listing the differing keys, unless ``--continue_with_changes`` is given: then e.g. a larger
``train.num_steps`` trains the extra steps (the learning-rate schedule then spans the new total), while
changes of the model, adapters, method, seed or data are still refused (see remix_jax/rundir.py).
Expected failures end in a short message and exit status 2 (``--debug`` shows the traceback; remix_jax/cli.py).

Evaluation (the optional ``config.eval`` section, ``eval_config()`` below): when ``eval.tasks`` names tasks
or ``eval.heldout.num_batches > 0``, the run is evaluated

- at step 0 (``eval.at_start``; the adapters start as the identity, so this scores the base model),
- every ``train.eval_every`` steps (0: never),
- at the end of training.

Each evaluation scores every task of ``eval.tasks`` with ``remix_jax.evaluation.evaluator`` (as
``python -m remix_jax.evaluate`` does) and, when configured, the mean response-token cross-entropy of
``eval.heldout.num_batches`` batches of ``eval.heldout.source`` (top-k routing, no sampling). The final one
writes DIR/eval/<task>.json (+ predictions; "heldout_loss" is added to each task's metrics) and
DIR/eval/heldout.json; earlier ones go to DIR/eval_history/step_<N>/eval/. Every evaluation also appends
"eval/<task>/accuracy" and "eval/heldout_loss" to DIR/metrics.jsonl. DIR/run_complete.json ({"step",
"wall_s"}) is written last. The summary's before/after numbers are read back from these files, so a resumed
run reports the step-0 evaluation of its first process too.

``model.dtype`` / ``model.param_dtype`` may be "auto": bfloat16 on a GPU or TPU backend, float32 on CPU.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

from absl import app, flags

from remix_jax.rundir import RUN_COMPLETE, format_summary

_FLAGS: dict = {}  # defined only when run as a program, so config files may import this module


def _define_flags() -> None:
    from remix_jax import cli

    _FLAGS["config"] = cli.define_config_flag()
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Output folder: checkpoints, metrics.jsonl, eval/, export/.")
    _FLAGS["continue_with_changes"] = flags.DEFINE_bool(
        "continue_with_changes", False,
        "Continue the run of --workdir under a config that differs from its config.json (e.g. a larger "
        "train.num_steps); changes of the model, adapters, method, seed or data are refused even so.")

HELDOUT = "heldout"


# ------------------------------------------------------------------------------------------ config


def eval_config():
    """``config.eval`` for training runs: ``remix_jax.evaluation.config.default_eval_config()`` with no
    tasks, plus

    at_start: evaluate before the first step (fresh runs only).
    heldout.source: a ``remix_jax.data.source_config`` read through the training data pipeline (template,
      max_length, batch_size of ``config.data``); ``heldout.num_batches`` > 0 enables the held-out loss
      (fewer when the source runs out: it is read once, in order).
    """
    import ml_collections

    from remix_jax.data import source_config
    from remix_jax.evaluation.config import default_eval_config

    e = default_eval_config()
    e.tasks = ""
    e.at_start = True
    e.heldout = ml_collections.ConfigDict(dict(source=source_config("file"), num_batches=0))
    return e


def split_config(config) -> tuple[Any, Any | None]:
    """(the training config without its ``eval`` section, the eval section or None)."""
    if "eval" not in config:
        return config, None
    train_cfg = copy.deepcopy(config)
    with train_cfg.unlocked():
        del train_cfg["eval"]
    return train_cfg, config.eval


def eval_enabled(ev) -> bool:
    return ev is not None and (bool(str(ev.tasks).strip()) or heldout_batches(ev) > 0)


def heldout_batches(ev) -> int:
    h = ev.get("heldout") if ev is not None else None
    return int(h.num_batches) if h is not None else 0


def validate_eval(ev, train_cfg) -> list[str]:
    """Task names to run; raises ConfigError listing every problem of the section, missing files included."""
    from remix_jax.config import ConfigError, problem_lines, source_path_problems
    from remix_jax.evaluation.config import EvalConfigError, validate_eval_config

    problems, tasks = [], []
    if str(ev.tasks).strip():
        try:
            tasks = validate_eval_config(ev)
        except EvalConfigError as e:
            problems += problem_lines(e)
    n = heldout_batches(ev)
    if n < 0:
        problems.append(f"eval.heldout.num_batches={n}: must be >= 0")
    if n and not ev.heldout.source.name:
        problems.append("eval.heldout.source.name: missing (e.g. 'file' with a path)")
    elif n > 0 and ev.heldout.source.name != "synthetic":
        problems += source_path_problems("eval.heldout.source", ev.heldout.source,
                                         train_cfg.data.get("tfds_data_dir", ""))
    if str(ev.tasks).strip() and train_cfg.model.path.startswith("random:") and not ev.tokenizer:
        problems.append(f"eval.tokenizer: model.path={train_cfg.model.path!r} has no tokenizer; set "
                        "eval.tokenizer to score tasks")
    if n and train_cfg.data.get("synthetic", False) and ev.heldout.source.name != "synthetic":
        problems.append("eval.heldout: data.synthetic=True trains without a tokenizer; set "
                        "eval.heldout.source.name='synthetic' for a held-out synthetic loss")
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks


def check_config(train_cfg, ev, num_devices: int | None) -> list[str]:
    """Validate the whole run config before any model is loaded: one ConfigError listing every problem of
    the training and eval sections (unknown keys, bad values, every missing file or folder with its key).
    Returns the eval task names."""
    from remix_jax.config import ConfigError, problem_lines, validate_config

    problems, tasks = [], []
    try:
        validate_config(train_cfg, num_devices=num_devices)
    except ConfigError as e:
        problems += problem_lines(e)
    if ev is not None:
        try:
            tasks = validate_eval(ev, train_cfg)
        except ConfigError as e:
            problems += problem_lines(e)
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks


# ------------------------------------------------------------------------------------------ held-out loss


def heldout_loss_fn():
    """jit(model, variables, batch, rng) -> (sum of response-token CE, number of response tokens)."""
    import functools

    import jax
    import jax.numpy as jnp

    from remix_jax.training.objective import token_cross_entropy

    @functools.partial(jax.jit, static_argnames=("model",))
    def loss_sums(model, variables, batch, rng):
        logits, _ = model.apply(variables, batch["tokens"], segment_ids=batch["segment_ids"],
                                positions=batch["positions"], deterministic=True, rngs={"routing": rng})
        mask = batch["loss_mask"].astype(jnp.float32) * (batch["segment_ids"] > 0)
        return jnp.sum(token_cross_entropy(logits, batch["tokens"]) * mask), jnp.sum(mask)

    return loss_sums


def heldout_data(train_cfg, ev, bundle) -> list[dict]:
    """The held-out batches (numpy), read once in file order."""
    import numpy as np

    n = heldout_batches(ev)
    d = train_cfg.data
    if ev.heldout.source.name == "synthetic":
        from remix_jax.training.synthetic import SyntheticLoader

        loader = SyntheticLoader(d.batch_size, d.max_length, bundle.model_cfg.vocab_size, seed=d.seed + 7919)
        return [dict(next(loader)) for _ in range(n)]
    from remix_jax.data import build_train_loader

    data_cfg = copy.deepcopy(d)
    with data_cfg.unlocked():
        data_cfg.sources = {HELDOUT: ev.heldout.source}
        data_cfg.shuffle = False
        data_cfg.num_epochs = 1
        if "synthetic" in data_cfg:
            del data_cfg["synthetic"]
    loader = build_train_loader(data_cfg, bundle.tokenizer)
    batches = []
    for _ in range(n):
        try:
            batch = next(loader)
        except StopIteration:
            break
        if not np.any(batch["loss_mask"]):
            break
        batches.append({k: np.asarray(v) for k, v in batch.items()})
    return batches


# ------------------------------------------------------------------------------------------ evaluation


class RunEvaluator:
    """Evaluates the model being trained: ``__call__(step, state) -> {"<task>/accuracy", "heldout_loss"}``
    (the loop prefixes "eval/"), writing the result files described in the module docstring."""

    def __init__(self, config, train_cfg, ev, workdir: str, bundle, log=print):
        import jax

        from remix_jax.models.loading import load_tokenizer

        self.config, self.train_cfg, self.ev, self.workdir, self.log = config, train_cfg, ev, workdir, log
        self.bundle = bundle
        self.progress = bool(train_cfg.train.get("progress", True))
        self.total = int(train_cfg.train.num_steps)
        self.tasks = validate_eval(ev, train_cfg)
        self.tokenizer = load_tokenizer(ev.tokenizer) if ev.tokenizer else bundle.tokenizer
        if self.tasks and self.tokenizer is None:
            raise ValueError(f"model.path={train_cfg.model.path!r} has no tokenizer; set eval.tokenizer")
        self.heldout = heldout_data(train_cfg, ev, bundle) if heldout_batches(ev) else []
        self._loss = heldout_loss_fn() if self.heldout else None
        self.rng = jax.random.key(int(ev.seed))
        self.history: dict[int, dict] = {}

    def variables(self, base, trainable) -> dict:
        return {"params": base, **{k: v for k, v in trainable.items() if v}}

    def heldout_loss(self, variables) -> float:
        import jax
        import jax.numpy as jnp

        total, count = 0.0, 0.0
        for i, batch in enumerate(self.heldout):
            s, c = self._loss(self.bundle.model, variables, {k: jnp.asarray(v) for k, v in batch.items()},
                              jax.random.fold_in(self.rng, i))
            total, count = total + float(s), count + float(c)
        return total / max(count, 1.0)

    def evaluate(self, step: int, variables) -> dict[str, float]:
        """Run every configured evaluation of ``variables`` at ``step``; writes files, returns scalars."""
        import jax

        from remix_jax.evaluation import evaluator, results

        t0 = time.perf_counter()
        final = step >= self.total
        out_dir = self.workdir if final else os.path.join(self.workdir, "eval_history", f"step_{step}")
        is_main = jax.process_index() == 0
        scalars: dict[str, float] = {}
        heldout = None
        if self.heldout:
            heldout = self.heldout_loss(variables)
            scalars["heldout_loss"] = heldout
        extra = {"model_path": self.train_cfg.model.path, "adapters": f"training step {step}",
                 "adapter_config": dict(self.train_cfg.adapter), "step": step}
        if heldout is not None and is_main:
            n_tok = int(sum(float((b["loss_mask"] * (b["segment_ids"] > 0)).sum()) for b in self.heldout))
            results.write_task_results(
                out_dir, HELDOUT,
                {"heldout_loss": heldout, "num_batches": len(self.heldout), "num_tokens": n_tok}, [],
                config=self.config, extra={**extra, "source": self.ev.heldout.source.to_dict()})
        if self.tasks:
            runner = evaluator.ModelRunner(self.bundle.model, variables, self.tokenizer,
                                           batch_size=int(self.ev.batch_size),
                                           routing_stats=bool(self.ev.routing_stats), seed=int(self.ev.seed),
                                           remix_kernels=str(self.ev.get("remix_kernels", "auto")),
                                           progress=self.progress)
            for task in self.tasks:
                res = evaluator.run_task(task, runner, self.ev)
                metrics = dict(res.metrics)
                if heldout is not None:
                    metrics["heldout_loss"] = heldout
                if is_main:
                    results.write_task_results(out_dir, task, metrics, res.predictions, config=self.config,
                                               extra={**extra, "routing_stats": res.routing_stats})
                if metrics.get("accuracy") is not None:
                    scalars[f"{task}/accuracy"] = float(metrics["accuracy"])
                if res.routing_stats and "ess_applied_mean" in res.routing_stats:
                    scalars[f"{task}/ess_applied"] = float(res.routing_stats["ess_applied_mean"])
        shown = ", ".join(f"{k}={v:.4f}" for k, v in scalars.items())
        self.log(f"evaluation at step {step} ({time.perf_counter() - t0:.1f} s): {shown}")
        self.history[step] = scalars
        return scalars

    def __call__(self, step: int, state) -> dict[str, float]:
        return self.evaluate(step, self.variables(state.base, state.trainable))


def _has_checkpoint(workdir: str) -> bool:
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(x.isdigit() for x in os.listdir(d))


# ------------------------------------------------------------------------------------------ run


def run(config, workdir: str, log=print, continue_with_changes: bool = False) -> dict:
    """Check the config against DIR's record, validate it, train (resuming), evaluate, write
    run_complete.json. Returns {"step", "metrics" (last logged row), "export", "eval": {step: scalars},
    "complete": bool, "wall_s", "skipped": True when the run had already finished}. Raises
    rundir.RunConfigError for a config that differs from DIR/config.json (see remix_jax/rundir.py)."""
    import jax

    from remix_jax import rundir
    from remix_jax.config import resolve_dtypes
    from remix_jax.parallel.mesh import maybe_initialize_distributed
    from remix_jax.training import metrics as metrics_lib
    from remix_jax.training.loop import train

    maybe_initialize_distributed()
    t0 = time.time()
    auto = [f"model.{k}" for k in ("dtype", "param_dtype") if config.model[k] == "auto"]
    config = copy.deepcopy(config)
    with config.unlocked():
        resolve_dtypes(config)
    plan = rundir.plan_rerun(workdir, rundir.config_dict(config), continue_with_changes, auto_keys=auto)
    if plan.summary_only:
        return rundir.finished_summary(workdir)
    train_cfg, ev = split_config(config)
    check_config(train_cfg, ev, num_devices=len(jax.devices()))
    for note in plan.notes:
        log(note)
    if jax.process_index() == 0:
        rundir.check_writable(workdir)
        rundir.apply_plan(workdir, config.to_json_best_effort(indent=2), plan)

    evaluator_box: list[RunEvaluator] = []

    def make_eval_fn(bundle):
        if not eval_enabled(ev):
            return None
        ret = RunEvaluator(config, train_cfg, ev, workdir, bundle, log=log)
        evaluator_box.append(ret)
        if ev.get("at_start", True) and not _has_checkpoint(workdir):
            scalars = ret.evaluate(0, ret.variables(bundle.base, bundle.trainable))
            writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
            writer.write(0, {f"eval/{k}": v for k, v in scalars.items()})
            writer.close()
        return ret

    summary = train(train_cfg, workdir, make_eval_fn=make_eval_fn, log_fn=log)
    summary.pop("state", None)
    wall = time.time() - t0
    # From the run's files, not from this process's memory: a resumed run keeps its step-0 evaluation.
    summary["eval"] = rundir.evaluations(workdir) if jax.process_index() == 0 else (
        evaluator_box[0].history if evaluator_box else {})
    if jax.process_index() == 0:
        done_path = os.path.join(workdir, RUN_COMPLETE)
        tmp = done_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"step": int(summary["step"]), "wall_s": wall}, f)
        os.replace(tmp, done_path)
    summary.update(complete=True, wall_s=wall, skipped=False, workdir=workdir)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # keep checkpointing's per-file INFO lines out of the console
        logging.set_verbosity(logging.WARNING)
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    if config is None:
        raise app.UsageError("--config=configs/NAME.py[:VARIANT] is required")
    if not workdir:
        raise app.UsageError("--workdir=DIR is required")
    if not config.train.progress:
        os.environ["REMIX_PROGRESS"] = "0"  # model loading and evaluation bars too (remix_jax/progress.py)
    summary = run(config, workdir, continue_with_changes=_FLAGS["continue_with_changes"].value)
    print(format_summary(summary), flush=True)
    last = {k: v for k, v in summary.get("metrics", {}).items() if not isinstance(v, list)}
    print(json.dumps({"step": summary["step"], "export": summary.get("export"), "last": last,
                      "eval": summary.get("eval", {}), "skipped": summary.get("skipped", False)},
                     default=str))


if __name__ == "__main__":
    from remix_jax import cli

    _define_flags()
    cli.run(main)
