"""Sweeps: expand a grid of config overrides into runs, run them (or write their commands), aggregate.

    python -m remix_jax.sweep --sweep=experiments/NAME.py [--sweep=experiments/OTHER.py ...]
                              [--out_dir=DIR | --results_root=DIR]
                              [--mode=local|commands] [--parallel=N --devices=0,1,2,3] [--dry_run]
                              [--only=REGEX] [--report_only] [--params_only [--model_path=PATH]] [--no_check]

A sweep definition is a Python file exposing ``get_sweep()``, which returns a dict:

    config          "configs/gsm8k.py:remix"   the config file (and variant) every run starts from
    base_overrides  {key: value}               overrides shared by every run (``--config.key=value``)
    grid            [axis, ...]                the cartesian product of the axes gives the runs; an axis is
                      - a dict {key: [v1, v2, ...], ...}: every key is its own axis (product over keys);
                        the run's column for it is the key itself ("adapter.top_k");
                      - a list of variants, each {"name": str, "config": optional spec, "overrides": {...},
                        "labels": {column: value}}: one run per variant (zipped / named settings, e.g. the
                        methods of a table); the name goes to the column "variant" ("variant_2" for a
                        second list axis), labels are extra columns for the report (e.g. {"k": 2}); a
                        "config" starting with ":" replaces only the variant of the sweep's config file.
    seeds           [0, 1, 2]                  one run per seed per grid point (override key ``KEYS.seed``)
    workdir_root    optional; default <results dir>/runs, the results dir being results/NAME beside the
                    sweep file (experiments/main_table.py: experiments/results/main_table/runs)
    runner          optional argv prefix; default ["python", "-m", "remix_jax.main"] (mode "local" runs a
                    leading "python" with the current interpreter)
    name            optional; default the file name without .py
    report          optional dict for ``remix_jax.sweep.report.write_report``: {"tables": [...], "plots":
                    [...]} (see sweep/report.py); by default a table of every metric.

A sweep file may import modules next to it (e.g. ``experiments/common.py`` with shared settings).

Each run gets a deterministic name from its grid point ("lora__rank=16__seed=0") and the workdir
``workdir_root/name``; its command is

    <runner> --config=<config> --workdir=<workdir> --config.<key>=<value> ...

Mode "local" first checks every run still to train as the trainer checks its config before loading a model
(sweep/preflight.py: unknown keys, bad values, missing files and packages), and starts none when any would stop
there (``--no_check`` starts them anyway). It runs the runs as subprocesses, one after another or
``--parallel=N`` at a time, streams each
run's output to WORKDIR/log.txt (and to this terminal unless --quiet), keeps going past a failed run and lists
the failures at the end. With ``--devices=0,1,2,3`` (GPU ids) the N concurrent runs are spread over those GPUs
round-robin: each run sees only its GPU (CUDA_VISIBLE_DEVICES) and takes 0.9/(runs per GPU) of its memory
(XLA_PYTHON_CLIENT_MEM_FRACTION), so small models can share a GPU, e.g. ``--parallel=8 --devices=0,1,2,3``.

Several ``--sweep`` files in one invocation share one queue. Runs that are the same run (the config file
and variant with all overrides applied give the same resolved config, seed included) are trained once: the
later ones' workdirs become symbolic links to the first's, so e.g. the k sweep's k=2 point and the main
table's ReMix row are one run. Each sweep is then aggregated on its own. ``--results_root=DIR`` puts each sweep's
results in DIR/NAME (NAME.py's results folder moved under DIR), so the sweeps of one study share a queue and a
folder of their own (``--out_dir`` moves a single sweep's).
A run is finished when WORKDIR/run_complete.json exists; finished runs are skipped, so re-invoking a sweep
resumes it. Mode "commands" writes one shell command per unfinished run to <results dir>/commands.sh for a
cluster or TPU-pod scheduler. Both modes then aggregate every run's outputs into <results dir>/results.csv,
results.md and PNG plots (``--report_only`` does only that). ``--params_only`` trains nothing and writes each
started run's parameter counts, WORKDIR/params.json, where it is missing (runs that predate the file): from its
config.json, with ``--model_path`` (a model file, or ``random:SHAPE`` for the architecture alone) in place of a
recorded model.path that is not on this machine (``training.param_record``); ``--report_only`` then shows them.
The sweep definitions stay apart from what they produce: experiments/NAME.py writes only under
experiments/results/NAME/.

Multi-host (TPU pods, multi-node GPU): run the SAME command on every worker of the slice, e.g.
``gcloud compute tpus tpu-vm ssh POD --worker=all --command="cd remix-jax && <line of commands.sh>"``;
the entry point initialises jax.distributed, process 0 writes the workdir (use a shared file system or a
bucket path for ``--workdir_root``), and the run counts as finished once run_complete.json exists.

Config keys used by the experiment files are named once, in ``KEYS``, so a schema change is a one-line fix.

Modules: ``definition`` (loading and expanding a definition, run identity), ``runner`` (running the runs, commands.sh),
``__main__`` (the command line); ``results``, ``plots`` and ``report`` aggregate the runs' outputs.
"""


from remix_jax.sweep.definition import (
    DEFAULT_RUNNER,
    KEYS,
    Run,
    Sweep,
    SweepError,
    expand,
    fingerprint,
    format_value,
    load_sweep,
    results_dir,
    select,
)
from remix_jax.sweep.runner import (
    RUN_COMPLETE,
    device_envs,
    is_complete,
    link_duplicates,
    run_local,
    run_one,
    write_commands,
)

__all__ = ["DEFAULT_RUNNER", "KEYS", "RUN_COMPLETE", "Run", "Sweep", "SweepError", "device_envs", "expand",
           "fingerprint", "format_value", "is_complete", "link_duplicates", "load_sweep", "results_dir", "run_local",
           "run_one", "select", "write_commands"]
