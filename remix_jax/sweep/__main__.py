"""The sweep command line (the options and the definition format: ``remix_jax.sweep``'s docstring).

    python -m remix_jax.sweep --sweep=experiments/NAME.py [--sweep=experiments/OTHER.py ...]
                              [--out_dir=DIR | --results_root=DIR]
                              [--mode=local|commands] [--parallel=N --devices=0,1,2,3] [--dry_run]
                              [--only=REGEX] [--report_only] [--params_only [--model_path=PATH]] [--no_check]
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
from collections.abc import Sequence

from remix_jax import sweep as sweep_pkg
from remix_jax.sweep.definition import SweepError, load_sweep, select
from remix_jax.sweep.runner import device_envs, is_complete, link_duplicates, run_local, write_commands


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; expected failures (a bad sweep file, a folder that cannot be written) end in a short
    message and exit status 2 (remix_jax/cli.py; --debug shows the traceback)."""
    from remix_jax import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.guard(lambda: _main(argv), argv)


def _main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m remix_jax.sweep", description=sweep_pkg.__doc__.split("\n")[0])
    p.add_argument("--sweep", required=True, action="append",
                   help="a sweep definition file (experiments/NAME.py); repeat (or comma-separate) for several")
    p.add_argument("--mode", choices=("local", "commands"), default="local")
    p.add_argument("--dry_run", action="store_true", help="print the runs and their commands; run nothing")
    p.add_argument("--only", default=None, help="only runs whose name matches this regular expression")
    p.add_argument("--report_only", action="store_true", help="only aggregate the runs' outputs")
    p.add_argument("--params_only", action="store_true",
                   help="only write params.json (parameter counts, from config.json; no training, no weights read) "
                        "into the selected runs' workdirs that lack it; then run --report_only")
    p.add_argument("--model_path", default=None,
                   help="with --params_only: the model (file, or random:SHAPE for its architecture) in place of the "
                        "model.path the runs recorded, when that is not on this machine")
    p.add_argument("--workdir_root", default=None, help="override the sweep's workdir_root (one sweep only)")
    p.add_argument("--out_dir", default=None,
                   help="where results and plots go (default: results/NAME beside the sweep file; one sweep "
                        "only)")
    p.add_argument("--results_root", default=None,
                   help="each sweep's results go to RESULTS_ROOT/NAME instead of results/NAME beside its file (several "
                        "sweeps of one study in one queue, e.g. experiments/results/qwen0.5b)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once in local mode")
    p.add_argument("--devices", default="",
                   help="comma-separated GPU ids the concurrent runs are spread over (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--no_dedup", action="store_true", help="train identical runs of several sweeps separately")
    p.add_argument("--no_check", action="store_true",
                   help="start the runs without first checking their configs here (sweep/preflight.py)")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' output here")
    p.add_argument("--debug", action="store_true", help="show the traceback of expected failures (also REMIX_DEBUG=1)")

    def usage_error(message: str):  # two lines, not argparse's whole usage text
        from remix_jax import cli

        cli.print_error(message, f"{p.prog} --help lists the options")
        sys.exit(2)

    p.error = usage_error
    args = p.parse_args(argv)
    files = [f for arg in args.sweep for f in arg.split(",") if f]
    if len(files) > 1 and (args.workdir_root or args.out_dir):
        raise SweepError("--workdir_root / --out_dir apply to a single --sweep (--results_root to several)")
    if args.results_root and args.out_dir:
        raise SweepError("give --out_dir (one sweep) or --results_root (each sweep under it), not both")
    sweeps = [load_sweep(f, workdir_root=args.workdir_root,
                         out_dir=args.out_dir or (args.results_root and str(pathlib.Path(args.results_root)
                                                                          / pathlib.Path(f).stem)))
              for f in files]
    if args.model_path and not args.params_only:
        raise SweepError("--model_path applies to --params_only")
    if args.params_only:
        from remix_jax.training.param_record import backfill

        said = {"written": "wrote params.json ({trainable} trainable, {active} active)",
                "present": "params.json present, kept", "no config.json": "no config.json (not started), skipped"}
        for run in (run for sw in sweeps for run in select(sw.runs, args.only)):
            state, counts = backfill(run.workdir, args.model_path)
            print(f"{run.workdir}: {said[state].format(**(counts or {}))}", flush=True)
        return 0
    envs = device_envs(args.parallel, [d for d in args.devices.split(",") if d])
    selected = {sw.path: select(sw.runs, args.only) for sw in sweeps}
    for sw in sweeps:
        print(f"sweep {sw.name}: {len(selected[sw.path])} of {len(sw.runs)} runs selected, workdirs under "
              f"{sw.workdir_root}", flush=True)
    all_runs = [run for sw in sweeps for run in selected[sw.path]]
    runners = {run.workdir: sw.runner for sw in sweeps for run in selected[sw.path]}
    if args.no_dedup or args.report_only:
        queue_runs, aliases = all_runs, {}
    else:
        queue_runs, aliases = link_duplicates(all_runs, create=not args.dry_run)
        for wd, primary in aliases.items():
            print(f"{wd}: same run as {primary.workdir}", flush=True)
    if args.dry_run:
        for run in queue_runs:
            state = "finished" if is_complete(run.workdir) else "to run"
            print(f"{run.name} [{state}]\n  {shlex.join(run.command(runners[run.workdir]))}")
        return 0
    failed: dict[str, str] = {}
    if not args.report_only:
        if args.mode == "commands":
            for sw in sweeps:
                mine = [r for r in queue_runs if r in selected[sw.path]]
                print(f"wrote {write_commands(sw, mine)}")
        else:
            if not args.no_check:
                from remix_jax.sweep.preflight import check_runs

                check_runs([r for r in queue_runs if not is_complete(r.workdir)], runners)
            failed = run_local(None, queue_runs, echo=not args.quiet, parallel=len(envs),
                               devices=[d for d in args.devices.split(",") if d], runners=runners)
    from remix_jax.sweep import report  # matplotlib only when aggregating

    for sw in sweeps:
        for path in report.write_report(sw, runs=sw.runs):
            print(f"wrote {path}")
    if failed:
        print(f"{len(failed)} run(s) failed:", file=sys.stderr)
        for name, reason in failed.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
