"""Training entry point: train, evaluate, write the run's outputs.

    python -m remix_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.key=value ...]

The config file's ``get_config(variant)`` returns a ConfigDict (the schema: ``remix_jax.run_config``); it is
locked, so overriding a key that does not exist fails. ``remix_jax.training.run.run`` does the work: validates
the whole config first (every file and folder it names), records it in DIR/config.json, trains (resuming from
the newest checkpoint in DIR), evaluates (``config.eval``, ``run_config.eval_config()``) and writes
DIR/run_complete.json. A finished run is not trained again, its summary is printed from its files. Rerunning
with a different config is refused, listing the differing keys, unless ``--continue_with_changes`` is given:
then e.g. a larger ``train.num_steps`` trains the extra steps, while changes of the model, adapters, method,
seed or data are still refused (see remix_jax/rundir.py). Expected failures end in a short message and exit
status 2 (``--debug`` shows the traceback; remix_jax/cli.py).

``model.dtype`` / ``model.param_dtype`` may be "auto": bfloat16 on a GPU or TPU backend, float32 on CPU.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from remix_jax import cli
from remix_jax.rundir import format_summary

_FLAGS: dict = {}  # defined only when run as a program, so tests may import this module


def _define_flags() -> None:
    _FLAGS["config"] = cli.define_config_flag()
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Output folder: checkpoints, metrics.jsonl, eval/, export/.")
    _FLAGS["continue_with_changes"] = flags.DEFINE_bool(
        "continue_with_changes", False,
        "Continue the run of --workdir under a config that differs from its config.json (e.g. a larger "
        "train.num_steps); changes of the model, adapters, method, seed or data are refused even so.")


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
    from remix_jax import compile_cache
    from remix_jax.training.run import run  # jax is imported once the flags are parsed

    compile_cache.enable()  # programs compiled by an earlier process are read back (remix_jax/compile_cache.py)

    summary = run(config, workdir, continue_with_changes=_FLAGS["continue_with_changes"].value)
    print(format_summary(summary), flush=True)
    last = {k: v for k, v in summary.get("metrics", {}).items() if not isinstance(v, list)}
    print(json.dumps({"step": summary["step"], "export": summary.get("export"), "last": last,
                      "eval": summary.get("eval", {}), "skipped": summary.get("skipped", False)},
                     default=str))


if __name__ == "__main__":
    from remix_jax.cpu_memory import single_arena

    single_arena()  # before jax is imported: on the CPU, the train step's buffers are reused (remix_jax/cpu_memory.py)
    _define_flags()
    cli.run(main)
