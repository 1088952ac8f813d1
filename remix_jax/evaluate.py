"""Evaluation entry point.

    python -m remix_jax.evaluate --config=configs/NAME.py[:VARIANT] --workdir=DIR \
        [--config.eval.tasks=gsm8k,arc_c] [--eval_name=NAME]

Loads the base model from ``config.model.path`` and attaches the adapters and routers of DIR: the final
export (DIR/export/adapters.safetensors + adapter_config.json) when it is at least as new as the newest
checkpoint, else the newest checkpoint (DIR/checkpoints, built with ``config.adapter``;
``training.trained_model``). Without either the base model is evaluated (and the output says so). Every file
the evaluation reads is checked before the model is loaded. Writes <task>.json (metrics, counts, config,
commit, adapter source, routing statistics) and <task>.predictions.jsonl, and prints a table and where the
files are:

- into DIR/eval/ when DIR is not a training run and DIR/eval/ holds no results yet;
- else into DIR/evals/<NAME>/ (NAME: --eval_name, default the UTC time, e.g. 20261204-135501), so a
  training run's own results (DIR/eval/) and earlier evaluations are never overwritten.

``remix_jax.training.evaluate_run.run`` does the work. ``config.eval`` is
``remix_jax.evaluation.eval_config.default_eval_config()`` (data paths must be set). Tasks defined as data (the
built-in piqa, arc_easy, arc_challenge, hellaswag, arc_c_mc, ... and your own through
``--config.eval.task_files=FILE.yaml``) are described in docs/tasks.md.
Expected failures end in a short message and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import os

from absl import app, flags

from remix_jax import cli

_FLAGS: dict = {}  # defined only when run as a program, so tests may import this module


def _define_flags() -> None:
    _FLAGS["config"] = cli.define_config_flag()
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Run folder: adapters are read from it; results go to its eval/ or evals/NAME/.")
    _FLAGS["eval_name"] = flags.DEFINE_string(
        "eval_name", "", "Write the results to WORKDIR/evals/NAME/ (default for a training run or a folder "
        "that already holds results: the UTC time).")


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
    from remix_jax import compile_cache
    from remix_jax.training.evaluate_run import run  # jax is imported once the flags are parsed

    compile_cache.enable()  # programs compiled by an earlier process are read back (remix_jax/compile_cache.py)

    run(config, workdir, name=_FLAGS["eval_name"].value, progress=progress)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
