"""Sweeps: expand a grid of config overrides into runs, run them (or write their commands), aggregate.

    python -m remix_jax.sweep --sweep=experiments/NAME.py [--sweep=experiments/OTHER.py ...]
                              [--mode=local|commands] [--parallel=N --devices=0,1,2,3] [--dry_run]
                              [--only=REGEX] [--report_only]

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
    report          optional dict for ``remix_jax.reporting.write_report``: {"tables": [...], "plots":
                    [...]} (see reporting.py); by default a table of every metric.

A sweep file may import modules next to it (e.g. ``experiments/common.py`` with shared settings).

Each run gets a deterministic name from its grid point ("lora__rank=16__seed=0") and the workdir
``workdir_root/name``; its command is

    <runner> --config=<config> --workdir=<workdir> --config.<key>=<value> ...

Mode "local" runs the runs as subprocesses, one after another or ``--parallel=N`` at a time, streams each
run's output to WORKDIR/log.txt (and to this terminal unless --quiet), keeps going past a failed run and lists
the failures at the end. With ``--devices=0,1,2,3`` (GPU ids) the N concurrent runs are spread over those GPUs
round-robin: each run sees only its GPU (CUDA_VISIBLE_DEVICES) and takes 0.9/(runs per GPU) of its memory
(XLA_PYTHON_CLIENT_MEM_FRACTION), so small models can share a GPU, e.g. ``--parallel=8 --devices=0,1,2,3``.

Several ``--sweep`` files in one invocation share one queue. Runs that are the same run (the config file
and variant with all overrides applied give the same resolved config, seed included) are trained once: the
later ones' workdirs become symbolic links to the first's, so e.g. the k sweep's k=2 point and the main
table's ReMix row are one run. Each sweep is then aggregated on its own.
A run is finished when WORKDIR/run_complete.json exists; finished runs are skipped, so re-invoking a sweep
resumes it. Mode "commands" writes one shell command per unfinished run to <results dir>/commands.sh for a
cluster or TPU-pod scheduler. Both modes then aggregate every run's outputs into <results dir>/results.csv,
results.md and PNG plots (``--report_only`` does only that). The sweep definitions stay apart from what they
produce: experiments/NAME.py writes only under experiments/results/NAME/.

Multi-host (TPU pods, multi-node GPU): run the SAME command on every worker of the slice, e.g.
``gcloud compute tpus tpu-vm ssh POD --worker=all --command="cd remix-jax && <line of commands.sh>"``;
the entry point initialises jax.distributed, process 0 writes the workdir (use a shared file system or a
bucket path for ``--workdir_root``), and the run counts as finished once run_complete.json exists.

Config keys used by the experiment files are named once, in ``KEYS``, so a schema change is a one-line fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import pathlib
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

RUN_COMPLETE = "run_complete.json"
DEFAULT_RUNNER = ("python", "-m", "remix_jax.main")


@dataclasses.dataclass(frozen=True)
class _Keys:
    """Override keys of the run config schema (remix_jax.run_config.default_config) used by sweeps."""

    seed: str = "seed"
    model_path: str = "model.path"
    method: str = "adapter.method"
    num_experts: str = "adapter.num_experts"
    top_k: str = "adapter.top_k"
    rank: str = "adapter.rank"
    alpha: str = "adapter.alpha"
    omega: str = "adapter.omega"
    targets: str = "adapter.targets"
    sample_at_inference: str = "adapter.sample_at_inference"
    num_samples: str = "train.num_samples"  # M
    sample_chunk: str = "train.sample_chunk"  # routing samples processed at once (0 = all M)
    baseline: str = "train.baseline"  # "rloo" | "none"
    num_steps: str = "train.num_steps"
    batch_size: str = "data.batch_size"  # global batch
    max_length: str = "data.max_length"
    eval_limit: str = "eval.limit"
    tfds_data_dir: str = "data.tfds_data_dir"
    gsm8k_manual_dir: str = "data.sources.gsm8k.manual_dir"
    gsm8k_eval: str = "eval.gsm8k.path"
    gsm8k_shots: str = "eval.gsm8k.shots_path"
    heldout_path: str = "eval.heldout.source.path"
    log_every: str = "train.log_every"


KEYS = _Keys()


class SweepError(ValueError):
    """An invalid sweep definition; the message names the file and the offending entry."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, workdir, config spec, overrides and report columns (params)."""

    name: str
    workdir: str
    config: str
    overrides: dict
    params: dict

    def command(self, runner: Sequence[str]) -> list[str]:
        """The argv that trains this run."""
        return [*runner, f"--config={self.config}", f"--workdir={self.workdir}",
                *(f"--config.{k}={format_value(v)}" for k, v in self.overrides.items())]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep definition (paths resolved)."""

    name: str
    path: str  # the sweep file
    out_dir: str  # results.csv / results.md / plots / commands.sh go here
    workdir_root: str
    config: str
    runner: tuple
    runs: tuple
    report: dict


def format_value(v: Any) -> str:
    """A value as ml_collections' --config.key flag parser reads it."""
    if isinstance(v, (list, tuple)):
        return repr(tuple(v))
    return str(v)


def _short_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "+".join(_short_value(x) for x in v)
    s = repr(v) if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", s)


def _check_name(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise SweepError(f"{where}: variant name {name!r} must match [A-Za-z0-9][A-Za-z0-9._+-]*")


def _with_variant(config: str, variant_config: str | None) -> str:
    """``variant_config`` ":lora" replaces the variant of ``config``; a full spec replaces it."""
    if not variant_config:
        return config
    if variant_config.startswith(":"):
        return config.split(":", 1)[0] + variant_config
    return variant_config


def _axes(grid: Any, where: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """grid -> [(column, [(name_part, point), ...])], point = {"value"|"variant": ...}."""
    if not isinstance(grid, (list, tuple)):
        raise SweepError(f"{where}: 'grid' must be a list of axes, got {type(grid).__name__}")
    axes, n_variant_axes = [], 0
    keys_seen: set[str] = set()
    for i, axis in enumerate(grid):
        w = f"{where}: grid[{i}]"
        if isinstance(axis, Mapping):
            shorts = [k.rsplit(".", 1)[-1] for k in axis]
            for key, values in axis.items():
                if not isinstance(key, str) or not key:
                    raise SweepError(f"{w}: keys must be config keys like 'adapter.top_k', got {key!r}")
                if key in keys_seen:
                    raise SweepError(f"{w}: key {key!r} appears in two axes")
                keys_seen.add(key)
                if not isinstance(values, (list, tuple)) or not values:
                    raise SweepError(f"{w}: {key!r} needs a non-empty list of values, got {values!r}")
                short = key.rsplit(".", 1)[-1]
                label = short if shorts.count(short) == 1 else key
                axes.append((key, [(f"{label}={_short_value(v)}", {"key": key, "value": v}) for v in values]))
        elif isinstance(axis, (list, tuple)):
            if not axis:
                raise SweepError(f"{w}: empty list of variants")
            n_variant_axes += 1
            column = "variant" if n_variant_axes == 1 else f"variant_{n_variant_axes}"
            points = []
            for j, var in enumerate(axis):
                vw = f"{w}[{j}]"
                if not isinstance(var, Mapping) or "name" not in var:
                    raise SweepError(f"{vw}: a variant is a dict with a 'name' (and config/overrides/labels)")
                unknown = set(var) - {"name", "config", "overrides", "labels"}
                if unknown:
                    raise SweepError(f"{vw}: unknown variant field(s) {sorted(unknown)}; "
                                     "known: name, config, overrides, labels")
                _check_name(var["name"], vw)
                for field in ("overrides", "labels"):
                    if not isinstance(var.get(field, {}), Mapping):
                        raise SweepError(f"{vw}: '{field}' must be a dict")
                points.append((var["name"], {"variant": var}))
            names = [p[0] for p in points]
            if len(set(names)) != len(names):
                raise SweepError(f"{w}: duplicate variant names {names}")
            axes.append((column, points))
        else:
            raise SweepError(f"{w}: an axis is a dict {{key: [values]}} or a list of variants, "
                             f"got {type(axis).__name__}")
    return axes


def expand(definition: Mapping, workdir_root: str, where: str = "sweep") -> list[Run]:
    """The runs of a sweep definition (cartesian product of the grid axes and the seeds), in order."""
    known = {"config", "base_overrides", "grid", "seeds", "workdir_root", "runner", "report", "name"}
    unknown = set(definition) - known
    if unknown:
        raise SweepError(f"{where}: unknown field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    if not isinstance(definition.get("config"), str) or not definition["config"]:
        raise SweepError(f"{where}: 'config' must be a config file spec like 'configs/gsm8k.py:remix'")
    base = dict(definition.get("base_overrides") or {})
    seeds = list(definition.get("seeds", [0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: 'seeds' must be a non-empty list of distinct seeds, got {seeds!r}")
    axes = _axes(definition.get("grid", []), where)
    runs, names = [], set()
    for combo in itertools.product(*(points for _, points in axes)):
        config, overrides, params, parts = definition["config"], dict(base), {}, []
        for (column, _), (part, point) in zip(axes, combo, strict=True):
            parts.append(part)
            if "variant" in point:
                var = point["variant"]
                config = _with_variant(config, var.get("config"))
                overrides.update(var.get("overrides", {}))
                params[column] = var["name"]
                params.update(var.get("labels", {}))
            else:
                overrides[point["key"]] = point["value"]
                params[point["key"]] = point["value"]
        for seed in seeds:
            name = "__".join([*parts, f"seed={_short_value(seed)}"])
            if name in names:
                raise SweepError(f"{where}: two runs are both named {name!r}")
            names.add(name)
            runs.append(Run(name=name, workdir=os.path.join(workdir_root, name), config=config,
                            overrides={**overrides, KEYS.seed: seed}, params={**params, "seed": seed}))
    return runs


def load_sweep(path: str | os.PathLike, workdir_root: str | None = None, out_dir: str | None = None) -> Sweep:
    """Import ``path``, call its ``get_sweep()`` and expand it. Relative paths in the definition and the
    arguments are taken relative to the current directory."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # sweep files may import siblings (experiments/common.py)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax or import error in the sweep file: name the file
        raise SweepError(f"{path}: could not be imported: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path}: defines no get_sweep()")
    definition = module.get_sweep()
    if not isinstance(definition, Mapping):
        raise SweepError(f"{path}: get_sweep() must return a dict, got {type(definition).__name__}")
    out = pathlib.Path(out_dir) if out_dir else results_dir(path)
    root = workdir_root or definition.get("workdir_root") or str(out / "runs")
    runner = definition.get("runner") or DEFAULT_RUNNER
    if isinstance(runner, str):
        runner = shlex.split(runner)
    runs = expand(definition, str(root), where=str(path))
    return Sweep(name=definition.get("name", path.stem), path=str(path), out_dir=str(out),
                 workdir_root=str(root), config=definition["config"], runner=tuple(runner), runs=tuple(runs),
                 report=dict(definition.get("report") or {}))


def results_dir(sweep_file: str | os.PathLike) -> pathlib.Path:
    """Where a sweep's outputs go by default: results/NAME beside the sweep file NAME.py."""
    path = pathlib.Path(sweep_file)
    return path.parent / "results" / path.stem


def is_complete(workdir: str | os.PathLike) -> bool:
    return (pathlib.Path(workdir) / RUN_COMPLETE).is_file()


def run_one(run: Run, runner: Sequence[str], echo: bool = True,
            env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Run one training subprocess, streaming its output to WORKDIR/log.txt. Returns (ok, reason).
    ``env``: variables set for the subprocess on top of this process's environment."""
    wd = pathlib.Path(run.workdir)
    argv = run.command(runner)
    if argv[0] == "python":  # run with this interpreter (the active environment)
        argv = [sys.executable, *argv[1:]]
    try:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "command.txt").write_text(shlex.join(argv) + "\n")
        log = open(wd / "log.txt", "a", encoding="utf-8")
    except OSError as e:  # a read-only or full disk: this run fails, the others still get their turn
        return False, f"cannot write {e.filename or wd}: {e.strerror}"
    with log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", bufsize=1, env={**os.environ, **(env or {})})
        except OSError as e:
            log.write(f"could not start: {e}\n")
            return False, f"could not start: {e}"
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(f"[{run.name}] {line}")
                sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        return False, f"exit status {rc} (see {wd / 'log.txt'})"
    if not is_complete(wd):
        return False, f"exited 0 but wrote no {RUN_COMPLETE} (see {wd / 'log.txt'})"
    return True, ""


def device_envs(parallel: int, devices: Sequence[str] | None) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` run slots: with ``devices`` (GPU ids), slot i sees only
    devices[i % len(devices)] and a 0.9 / (slots on that GPU) share of its memory; else no change."""
    if parallel < 1:
        raise SweepError(f"--parallel must be >= 1, got {parallel}")
    if not devices:
        return [{} for _ in range(parallel)]
    per_device = [sum(1 for i in range(parallel) if i % len(devices) == d) for d in range(len(devices))]
    envs = []
    for i in range(parallel):
        d = i % len(devices)
        env = {"CUDA_VISIBLE_DEVICES": str(devices[d])}
        if per_device[d] > 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / per_device[d]:.3f}"
        envs.append(env)
    return envs


def run_local(sweep: Sweep | None, runs: Sequence[Run], echo: bool = True, parallel: int = 1,
              devices: Sequence[str] | None = None, runners: Mapping[str, Sequence[str]] | None = None,
              ) -> dict[str, str]:
    """Run every unfinished run, ``parallel`` at a time (in order when 1); returns {name: reason} of the
    runs that failed. ``runners`` maps a run's workdir to its argv prefix (several sweeps in one queue);
    otherwise ``sweep.runner`` is used for all."""
    todo = []
    for i, run in enumerate(runs):
        if is_complete(run.workdir):
            print(f"[{i + 1}/{len(runs)}] {run.name}: finished already, skipped", flush=True)
        else:
            todo.append((i, run))
    failed: dict[str, str] = {}
    work: queue.Queue = queue.Queue()
    for item in todo:
        work.put(item)
    lock = threading.Lock()

    def worker(env: dict[str, str]) -> None:
        while True:
            try:
                i, run = work.get_nowait()
            except queue.Empty:
                return
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            print(f"[{i + 1}/{len(runs)}] {run.name}: running{where}", flush=True)
            t0 = time.time()
            runner = (runners or {}).get(run.workdir) or sweep.runner
            ok, reason = run_one(run, runner, echo=echo, env=env)
            status = f"done in {time.time() - t0:.1f} s" if ok else f"FAILED: {reason}"
            print(f"[{i + 1}/{len(runs)}] {run.name}: {status}", flush=True)
            if not ok:
                with lock:
                    failed[run.name] = reason

    threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in device_envs(parallel, devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed


def _load_config(spec: str):
    """The ConfigDict of ``path.py[:arg]`` (``get_config(arg)``), as the entry point's --config reads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@functools.cache
def _base_config_json(spec: str) -> str:
    return _load_config(spec).to_json_best_effort(sort_keys=True)


def fingerprint(run: Run) -> str:
    """A hash of the run's resolved config (its config file and variant with every override applied).
    Two runs with equal fingerprints train the same thing. Falls back to the spec and the overrides as
    written when the config cannot be resolved here (then only literally equal runs match)."""
    try:
        import ml_collections

        cfg = ml_collections.ConfigDict(json.loads(_base_config_json(run.config)))
        for key, value in run.overrides.items():
            *parents, leaf = key.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise KeyError(key)
            node[leaf] = list(value) if isinstance(value, tuple) else value
        text = cfg.to_json_best_effort(sort_keys=True)
    except Exception:  # unresolvable here (a config needing files, a key the schema lacks): literal identity
        text = json.dumps([run.config, sorted((k, repr(v)) for k, v in run.overrides.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def link_duplicates(runs: Sequence[Run], create: bool = True) -> tuple[list[Run], dict[str, Run]]:
    """Split ``runs`` into (primaries, {workdir of a duplicate: its primary}). With ``create``, a duplicate
    whose workdir does not exist yet becomes a relative symbolic link to its primary's workdir (so
    finished-run checks and reports read the primary's outputs); one that already holds its own files is
    left alone and kept as a primary."""
    first: dict[str, Run] = {}
    primaries, aliases = [], {}
    for run in runs:
        fp = fingerprint(run)
        if fp not in first:
            first[fp] = run
            primaries.append(run)
            continue
        primary = first[fp]
        wd = pathlib.Path(run.workdir)
        if os.path.realpath(wd) == os.path.realpath(primary.workdir):
            continue
        if wd.exists() and not wd.is_symlink():
            primaries.append(run)  # trained on its own before; keep it
            continue
        aliases[run.workdir] = primary
        if create and not wd.is_symlink():
            wd.parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(primary.workdir).mkdir(parents=True, exist_ok=True)
            wd.symlink_to(os.path.relpath(primary.workdir, wd.parent), target_is_directory=True)
    return primaries, aliases


def write_commands(sweep: Sweep, runs: Sequence[Run]) -> pathlib.Path:
    """Write <out_dir>/commands.sh: one command per unfinished run (finished ones as comments)."""
    out = pathlib.Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "#!/usr/bin/env bash",
        f"# Runs of sweep {sweep.name} ({sweep.path}); one command per line, for a scheduler.",
        "# Multi-host (TPU pod / multi-node): run the same line on every worker, e.g.",
        '#   gcloud compute tpus tpu-vm ssh POD --worker=all --command="cd remix-jax && LINE"',
        "# Aggregate afterwards: python -m remix_jax.sweep --sweep=" + sweep.path + " --report_only",
    ]
    for run in runs:
        cmd = shlex.join(run.command(sweep.runner))
        lines.append(f"# finished: {cmd}" if is_complete(run.workdir) else cmd)
    path = out / "commands.sh"
    path.write_text("\n".join(lines) + "\n")
    return path


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    if not only:
        return list(runs)
    pattern = re.compile(only)
    return [r for r in runs if pattern.search(r.name)]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; expected failures (a bad sweep file, a folder that cannot be written) end in a short
    message and exit status 2 (remix_jax/cli.py; --debug shows the traceback)."""
    from remix_jax import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.guard(lambda: _main(argv), argv)


def _main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m remix_jax.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--sweep", required=True, action="append",
                   help="a sweep definition file (experiments/NAME.py); repeat (or comma-separate) for several")
    p.add_argument("--mode", choices=("local", "commands"), default="local")
    p.add_argument("--dry_run", action="store_true", help="print the runs and their commands; run nothing")
    p.add_argument("--only", default=None, help="only runs whose name matches this regular expression")
    p.add_argument("--report_only", action="store_true", help="only aggregate the runs' outputs")
    p.add_argument("--workdir_root", default=None, help="override the sweep's workdir_root (one sweep only)")
    p.add_argument("--out_dir", default=None,
                   help="where results and plots go (default: results/NAME beside the sweep file; one sweep "
                        "only)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once in local mode")
    p.add_argument("--devices", default="",
                   help="comma-separated GPU ids the concurrent runs are spread over (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--no_dedup", action="store_true", help="train identical runs of several sweeps separately")
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
        raise SweepError("--workdir_root / --out_dir apply to a single --sweep")
    sweeps = [load_sweep(f, workdir_root=args.workdir_root, out_dir=args.out_dir) for f in files]
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
            failed = run_local(None, queue_runs, echo=not args.quiet, parallel=len(envs),
                               devices=[d for d in args.devices.split(",") if d], runners=runners)
    from remix_jax import reporting  # matplotlib only when aggregating

    for sw in sweeps:
        for path in reporting.write_report(sw, runs=sw.runs):
            print(f"wrote {path}")
    if failed:
        print(f"{len(failed)} run(s) failed:", file=sys.stderr)
        for name, reason in failed.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
