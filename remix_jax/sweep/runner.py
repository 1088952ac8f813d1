"""Running a sweep's runs: one training subprocess per run (``run_one``, its output in WORKDIR/log.txt), several at
once over GPUs (``run_local``, ``device_envs``), a run trained once for several sweeps (``link_duplicates``), or a
commands.sh for a scheduler (``write_commands``). A run is finished when WORKDIR/run_complete.json exists; a
finished run whose recorded config (WORKDIR/config.json) disagrees with one of the sweep's settings for it is
reported as a conflict, never taken as this sweep's result (``recorded_conflicts``). A run that ran out of device
memory while sharing a device with other runs is run again once the others are done, with fewer runs beside it
round by round until it runs alone (``run_local``).
"""

from __future__ import annotations

import json
import math
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

from remix_jax.sweep.definition import Run, Sweep, SweepError, fingerprint

RUN_COMPLETE = "run_complete.json"
# What a failed run printed when the device's memory ran out (XLA's allocator, the CUDA driver).
_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED.*out of memory|CUDA_ERROR_OUT_OF_MEMORY", re.IGNORECASE)
OUT_OF_MEMORY = "ran out of device memory"


def is_complete(workdir: str | os.PathLike) -> bool:
    return (pathlib.Path(workdir) / RUN_COMPLETE).is_file()


def _same(recorded, wanted) -> bool:
    if isinstance(wanted, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return len(recorded) == len(wanted) and all(_same(r, w) for r, w in zip(recorded, wanted, strict=True))
    if isinstance(wanted, bool) or isinstance(recorded, bool):
        return recorded is wanted or str(recorded).lower() == str(wanted).lower()
    if isinstance(wanted, (int, float)) and isinstance(recorded, (int, float)):
        return math.isclose(float(recorded), float(wanted), rel_tol=1e-9, abs_tol=0.0)
    return str(recorded) == str(wanted)


def recorded_conflicts(run: Run) -> list[str]:
    """The run's settings (its overrides) that WORKDIR/config.json, the config the finished run trained under,
    records with another value: ``key: recorded -> wanted``. Empty when the folder has no config.json or agrees
    (an override of "auto" is resolved by the trainer and not compared)."""
    path = pathlib.Path(run.workdir) / "config.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for key, wanted in run.overrides.items():
        if wanted == "auto":
            continue
        node = recorded
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            continue
        if not _same(node, wanted):
            out.append(f"{key}: {node!r} -> {wanted!r}")
    return out


def run_one(run: Run, runner: Sequence[str], echo: bool = True,
            env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Run one training subprocess, streaming its output to WORKDIR/log.txt. Returns (ok, reason); the reason of
    a failed run that printed an out-of-device-memory error starts with ``OUT_OF_MEMORY``.
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
        out_of_memory = False
        for line in proc.stdout:
            out_of_memory = out_of_memory or bool(_OUT_OF_MEMORY.search(line))
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(f"[{run.name}] {line}")
                sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        return False, (f"{OUT_OF_MEMORY}: " if out_of_memory else "") + f"exit status {rc} (see {wd / 'log.txt'})"
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
    otherwise ``sweep.runner`` is used for all. When runs share a device, a run that fails with an
    out-of-device-memory error (other runs held the memory it needed) is run again after the queue is done, in
    rounds with half as many runs on each device as the round before (6, 3, then alone), each with that share of
    the device's memory; alone, running out of memory is final. A rerun resumes from its workdir as any does."""
    todo = []
    failed: dict[str, str] = {}
    for i, run in enumerate(runs):
        if is_complete(run.workdir):
            conflicts = recorded_conflicts(run)
            if conflicts:  # another experiment's run in this folder: neither reuse it nor train over it
                failed[run.name] = (f"{run.workdir} holds a finished run of another config "
                                    f"({'; '.join(conflicts)}); give this sweep its own --out_dir / "
                                    f"--workdir_root, or move that folder")
                print(f"[{i + 1}/{len(runs)}] {run.name}: FAILED: {failed[run.name]}", flush=True)
            else:
                print(f"[{i + 1}/{len(runs)}] {run.name}: finished already, skipped", flush=True)
        else:
            todo.append((i, run))
    lock = threading.Lock()
    devices = list(devices or [])
    n_devices = len(devices) or 1  # without devices, the runs share the one host

    def per_device(slots: int) -> int:
        return -(-slots // n_devices)

    def next_slots(slots: int) -> int:
        """The slots of the next retry round: half as many runs per device, at least one."""
        return max(1, per_device(slots) // 2) * n_devices

    def attempt(i: int, run: Run, env: dict[str, str], shared: bool, retry_alone: bool) -> None:
        """One try of a run; a shared-device try that ran out of memory is queued for the next round."""
        t0 = time.time()
        ok, reason = run_one(run, (runners or {}).get(run.workdir) or sweep.runner, echo=echo, env=env)
        with lock:
            if not ok and shared and reason.startswith(OUT_OF_MEMORY):
                then = "alone" if retry_alone else "with fewer runs beside it"
                print(f"[{i + 1}/{len(runs)}] {run.name}: {reason}; it runs again {then} when the queue is done",
                      flush=True)
                retry.append((i, run))
                return
            print(f"[{i + 1}/{len(runs)}] {run.name}: " + (f"done in {time.time() - t0:.1f} s" if ok
                                                            else f"FAILED: {reason}"), flush=True)
            if not ok:
                failed[run.name] = reason

    def round_of(items: list, slots: int, again: bool) -> None:
        """Run ``items`` over ``slots`` slots (device_envs); a retry round says how many share each device."""
        work: queue.Queue = queue.Queue()
        for item in items:
            work.put(item)
        shared = per_device(slots) > 1
        retry_alone = per_device(next_slots(slots)) == 1
        how = f"{per_device(slots)} at a time on each device" if shared else "alone"

        def worker(env: dict[str, str]) -> None:
            while True:
                try:
                    i, run = work.get_nowait()
                except queue.Empty:
                    return
                if again:
                    print(f"[{i + 1}/{len(runs)}] {run.name}: running again, {how}", flush=True)
                else:
                    where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
                    print(f"[{i + 1}/{len(runs)}] {run.name}: running{where}", flush=True)
                attempt(i, run, env, shared, retry_alone)

        threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in device_envs(slots, devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # A run that ran out of memory beside others runs again once the queue is done, with half as many runs on
    # each device (6 -> 3 -> 1), until it runs alone, where running out of memory is final.
    retry: list = []
    round_of(todo, parallel, again=False)
    slots = parallel
    while retry:
        items, retry = sorted(retry, key=lambda item: item[0]), []
        slots = min(next_slots(slots), len(items))  # no slot left empty: fewer runs share each device
        round_of(items, slots, again=True)
    return failed


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
        if not is_complete(run.workdir):
            lines.append(cmd)
            continue
        conflicts = recorded_conflicts(run)
        lines.append(f"# finished under another config ({'; '.join(conflicts)}), not this run: {cmd}" if conflicts
                     else f"# finished: {cmd}")
    path = out / "commands.sh"
    path.write_text("\n".join(lines) + "\n")
    return path
