"""Checking a sweep's runs before any of them starts.

Each queued run's config is resolved from its command line as ``python -m remix_jax.main`` resolves it (the config
file and variant, every ``--config.KEY=VALUE`` override) and validated as the trainer validates it before it loads
a model (``remix_jax.run_config.check_config``: unknown keys, bad values, every missing file, folder or package
with its key). A sweep whose runs would stop at their first line, all of them for the same missing package, says
so once, before it queues anything, instead of once per run in every run's log.

What it cannot see it leaves to the run: the device count (checked per run on its devices), a run's
``adapter.init_from`` (checked only when the run starts from scratch), and dtypes set to "auto" (resolved by the
trainer for its backend; checked here as float32). Only runs of the default runner (``python -m
remix_jax.main``) are checked; nothing here initialises a jax backend, so no device memory is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

from remix_jax.cli import UserError
from remix_jax.sweep.definition import DEFAULT_RUNNER, Run

MAX_LISTED = 8  # runs whose problems are printed in full; the rest are counted


def resolved_config(run: Run):
    """The run's ConfigDict, parsed from its command line with the entry point's flag definition."""
    from absl import flags
    from ml_collections import config_flags

    argv = [a for a in run.command(["prog"]) if not a.startswith("--workdir=")]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv, known_only=True)
    return fv.config


def run_problems(run: Run) -> list[str]:
    """What the trainer would refuse in ``run``'s config before loading a model (empty: nothing)."""
    from remix_jax.run_config import ConfigError, check_config, problem_lines, split_config

    try:
        config = resolved_config(run)
    except Exception as e:  # a key the config lacks, a value of the wrong type: as the entry point says it
        return [str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__]
    with config.unlocked():
        for key in ("dtype", "param_dtype"):
            if config.model.get(key) == "auto":
                config.model[key] = "float32"
    try:
        check_config(*split_config(config), num_devices=None)
    except ConfigError as e:
        return problem_lines(e)
    return []


def check_runs(runs: Sequence[Run], runners: dict[str, Sequence[str]]) -> None:
    """Raise UserError listing every run (of the default runner) whose config the trainer would refuse."""
    bad = [(run, p) for run in runs if tuple(runners.get(run.workdir, DEFAULT_RUNNER))[-2:] == DEFAULT_RUNNER[-2:]
           for p in [run_problems(run)] if p]
    if not bad:
        return
    lines = [f"{len(bad)} of {len(runs)} run(s) would stop before training:"]
    for run, problems in bad[:MAX_LISTED]:
        lines.append(f"  {run.name}:")
        lines += [f"    {p}" for p in problems]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    raise UserError("\n".join(lines), "fix those settings, or pass --no_check to start the runs anyway")
