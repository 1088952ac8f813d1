"""A training run in its folder: ``run(config, workdir)`` is what ``python -m remix_jax.main`` does.

The config is checked against WORKDIR's record (``remix_jax.rundir``: a finished run is not trained again, its
summary is read from its files; a different config is refused unless ``continue_with_changes``), validated
whole before any model is loaded or compiled (``run_config.check_config``: every file and folder it names,
also those read only at the end of training, and the PEFT directory of ``adapter.init_from`` when the run starts
from scratch: a resumed run takes its adapter from its checkpoint and does not read it), recorded in
WORKDIR/config.json, trained (resuming from the newest checkpoint: ``training.loop.train``), evaluated, and
WORKDIR/run_complete.json ({"step", "wall_s", "compile_s": the seconds of it this process spent lowering and
compiling programs, ``remix_jax.compile_clock``}) is written last. WORKDIR/params.json ({"trainable", "active"}
parameter counts, ``training.param_record``) is written once the trainable state is built.

Evaluation (the optional ``config.eval`` section, ``run_config.eval_config()``): when ``eval.tasks`` names
tasks or ``eval.heldout.num_batches > 0``, the run is evaluated (``training.run_evaluation``)

- at step 0 (``eval.at_start``; the adapters start as the identity, so this scores the base model, or the
  adapter of ``adapter.init_from``),
- every ``train.eval_every`` steps (0: never),
- at the end of training.

Every evaluation also appends "eval/<task>/accuracy" and "eval/heldout_loss" to WORKDIR/metrics.jsonl. The
summary's before/after numbers are read back from the result files, so a resumed run reports the step-0
evaluation of its first process too.
"""

from __future__ import annotations

import copy
import json
import os
import time

import jax

from remix_jax import compile_clock, rundir
from remix_jax.parallel.mesh import maybe_initialize_distributed
from remix_jax.run_config import check_config, eval_enabled, resolve_dtypes, split_config
from remix_jax.training import loop, param_record
from remix_jax.training import metrics as metrics_lib
from remix_jax.training.run_evaluation import RunEvaluator


def has_checkpoint(workdir: str) -> bool:
    """Whether WORKDIR/checkpoints holds a step folder (then the run resumes and skips the step-0 evaluation)."""
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(x.isdigit() for x in os.listdir(d))


def run(config, workdir: str, log=print, continue_with_changes: bool = False) -> dict:
    """Check the config against DIR's record, validate it, train (resuming), evaluate, write
    run_complete.json. Returns {"step", "metrics" (last logged row), "export", "eval": {step: scalars},
    "complete": bool, "wall_s", "compile_s", "skipped": True when the run had already finished}. Raises
    rundir.RunConfigError for a config that differs from DIR/config.json (see remix_jax/rundir.py)."""
    maybe_initialize_distributed()
    t0, c0 = time.time(), compile_clock.seconds()
    auto = [f"model.{k}" for k in ("dtype", "param_dtype") if config.model[k] == "auto"]
    config = copy.deepcopy(config)
    with config.unlocked():
        resolve_dtypes(config)
    plan = rundir.plan_rerun(workdir, rundir.config_dict(config), continue_with_changes, auto_keys=auto)
    if plan.summary_only:
        return rundir.finished_summary(workdir)
    train_cfg, ev = split_config(config)
    check_config(train_cfg, ev, num_devices=len(jax.devices()), fresh=not has_checkpoint(workdir))
    for note in plan.notes:
        log(note)
    if jax.process_index() == 0:
        rundir.check_writable(workdir)
        rundir.apply_plan(workdir, config.to_json_best_effort(indent=2), plan)

    evaluator_box: list[RunEvaluator] = []

    def after_model(bundle):  # once the model is built, before the step compiles
        if jax.process_index() == 0:
            param_record.record(workdir, bundle.trainable, bundle.adapter_cfg)
        if eval_enabled(ev):  # the evaluator uses the model and tokenizer, not the weights: a run it refuses stops here
            evaluator_box.append(RunEvaluator(config, train_cfg, ev, workdir, bundle, log=log))

    def make_eval_fn(bundle):  # called once the trainable state is placed, before the first step
        if not evaluator_box:
            return None
        ret = evaluator_box[0]
        if ev.get("at_start", True) and not has_checkpoint(workdir):
            scalars = ret.evaluate(0, ret.variables(bundle.base, bundle.trainable))
            writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
            writer.write(0, {f"eval/{k}": v for k, v in scalars.items()})
            writer.close()
        return ret

    summary = loop.train(train_cfg, workdir, make_eval_fn=make_eval_fn, after_model=after_model, log_fn=log)
    summary.pop("state", None)
    wall, compiling = time.time() - t0, compile_clock.seconds() - c0
    # From the run's files, not from this process's memory: a resumed run keeps its step-0 evaluation.
    summary["eval"] = rundir.evaluations(workdir) if jax.process_index() == 0 else (
        evaluator_box[0].history if evaluator_box else {})
    if jax.process_index() == 0:
        done_path = os.path.join(workdir, rundir.RUN_COMPLETE)
        tmp = done_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"step": int(summary["step"]), "wall_s": wall, "compile_s": compiling}, f)
        os.replace(tmp, done_path)
    summary.update(complete=True, wall_s=wall, compile_s=compiling, skipped=False, workdir=workdir)
    return summary
