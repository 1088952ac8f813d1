"""Score untrusted generated programs (HumanEval completions) against trusted tests, isolated from the host.

Threat model. A program is model-generated code: assume it is hostile and, worse, that it is optimised to be
scored correct. It may exit early with status 0, raise SystemExit, register atexit or signal handlers, patch
builtins or the test's helpers, return objects whose ``__eq__`` is always True, trace and skip the test's lines
(sys.settrace), write fake verdicts to any stream, fork helpers, read /proc, use ctypes or raw system calls,
fill the disk, fork-bomb, or try to outlive or kill the evaluator. The test code (HumanEval's ``test`` and
``prompt``) and this package are trusted; the kernel is trusted (a kernel exploit is out of scope).

Verdict. A test that runs in the same interpreter as the program cannot be trusted: the program can rewrite
anything there, and any token the harness writes after ``check()`` returns can be written by the program
first. So the program and the test never share an interpreter. The program runs alone in the sandbox behind
a tiny server (``sandbox_wire.serve``): it executes ``prompt + completion`` and answers calls of the entry
point. The test runs in the judge (``sandbox_launcher.py``), a separate process outside the program's PID
namespace, where ``candidate`` forwards each call's arguments and rebuilds the answer as plain data (exact
built-in types only: no program object, no ``__eq__`` of its choosing, no exception type of its choosing that
steers control flow). The judge records "passed" only when ``check(candidate)`` returns normally within the
deadline. Every other ending is a failure with its reason: an assertion, an exception in the test or the
program, the program exiting (any status) or being killed, a load error, a malformed or oversized answer, a
timeout, a harness or setup error. The judge sends its verdict, with a per-run random nonce, on a pipe that
only the judge holds (not inherited by init or the program); the nonce reaches the judge on stdin after
init was forked, so no process of the sandbox ever held it, and the evaluator accepts only a well-formed
verdict carrying it.

Isolation (``sandbox_launcher.py`` has the details), the same as root or as any user, via unprivileged user
namespaces: new user, mount, network, PID, IPC, UTS and cgroup namespaces; an empty network namespace
(loopback down: no host service on 127.0.0.1 is reachable); a mount view with a read-only, size-limited
tmpfs root holding read-only binds of /usr, /bin, /lib* and the Python installation (site-/dist-packages and
``hide_paths`` covered), null/zero/full/random/urandom, a private /proc, and a size-limited tmpfs ``/tmp`` as
the program's only writable place (its cwd, HOME and TMPDIR); no capabilities (bounding set empty, securebits
locked, no_new_privs); rlimits on CPU, address space, processes (counted per namespace), file size and open
files; a seccomp deny list (``sandbox_seccomp.py``) where supported. As root the sandbox runs as an
unprivileged uid (``sandbox_uid``) without supplementary groups. Lifetime: the launcher dies with the
evaluator (PR_SET_PDEATHSIG, parent checked), init (PID 1 of the program's namespace) dies with the launcher,
and when init dies the kernel kills every process of the namespace; on timeout or Ctrl-C the evaluator kills
the launchers. Nothing is written to the host's filesystem.

Without user namespaces ``run_tests`` refuses (``SandboxUnavailableError`` says why and how to fix it) unless
``allow_unisolated=True``: then the same judge and verdict protocol run, the program gets rlimits, seccomp, an
audit-hook guard and a host temporary directory, but it can read what the evaluator's user can read, reach
the network, and leave processes behind if the evaluator is SIGKILLed. Such directories carry the owner's
pid and start time in their name; ``cleanup_stale`` (run by every ``run_tests``) removes those of dead owners.

Not defended: kernel vulnerabilities; reading world-readable files under /usr and the Python installation;
CPU/memory contention between parallel programs; side channels; tests whose own checks are weak.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from remix_jax.evaluation import sandbox_wire

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
DEFAULT_SANDBOX_UID = 3_000_000_000  # the unprivileged uid programs run as when the evaluator is root
STATUSES = ("passed", "failed", "timeout", "error", "setup_error")
_STALE_PREFIX = "remix-sandbox-"
_STALE_RE = re.compile(r"^remix-sandbox-(\d+)-(\d+)-")
_VERDICT_LIMIT = 1 << 20
log = logging.getLogger(__name__)


class SandboxUnavailableError(RuntimeError):
    """No isolation on this machine and unisolated runs were not allowed."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits."""

    timeout_s: float = 10.0  # wall clock from the program's start to the end of the test
    cpu_s: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    max_processes: int = 16  # tasks (processes and threads) of the program, RLIMIT_NPROC in its namespace
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE, also bounds captured stdout/stderr
    max_open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_bytes: int = 32 << 20  # size of the program's writable /tmp
    tmpfs_inodes: int = 4096  # files in it
    max_frame_bytes: int = 16 << 20  # largest answer of one call
    setup_timeout_s: float = 30.0  # building the sandbox (slow only on an overloaded host)


@dataclasses.dataclass(frozen=True)
class SandboxJob:
    """One program and its test. ``program`` is untrusted and runs in the sandbox; ``setup``, ``test`` and
    ``call`` are trusted and run in the judge, where ``entry_point`` names the program's function (calls
    are forwarded to the program). ``call`` defaults to ``check(<entry_point>)``."""

    program: str
    entry_point: str
    test: str
    setup: str = ""
    call: str = ""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one job. status: passed | failed | timeout | error | setup_error; reason says why."""

    status: str
    returncode: int | None  # the program's exit status if it ended by itself (128 + n: signal n), else None
    stdout: str  # tails of the program's output
    stderr: str
    wall_s: float
    reason: str = ""
    isolation: str = ""  # "namespaces+proc+seccomp", "none+seccomp", ...

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def default_python() -> str:
    """The base interpreter of this one (outside any venv): programs get its standard library only."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _runnable_by_others(path: str, mode: int = 0o005) -> bool:
    """Whether a user without privileges can reach ``path`` (o+x on every directory above) with ``mode``."""
    parts = os.path.realpath(path).split("/")
    try:
        return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts))) and (
            os.stat(path).st_mode & mode == mode)
    except OSError:
        return False


def _program_python(python: str, isolated: bool) -> str:
    """The interpreter of the programs: ``python``, except unisolated as root, where the programs run as
    ``sandbox_uid`` on the host's tree and need one they can reach (then a system python3)."""
    if isolated or os.geteuid() != 0 or _runnable_by_others(python):
        return python
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3", "/bin/python3"):
        if os.path.exists(cand) and _runnable_by_others(cand):
            return os.path.realpath(cand)
    raise SandboxUnavailableError(f"no Python interpreter that the sandbox uid can run ({python} is not "
                                  "reachable by other users); pass python=... ")


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def cleanup_stale(tmp_dir: str | None = None) -> list[str]:
    """Remove sandbox directories left by evaluators that died (owner pid gone or reused). Returns them."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    removed = []
    for name in os.listdir(tmp_dir):
        m = _STALE_RE.match(name)
        if m and _start_time(int(m.group(1))) != int(m.group(2)):
            shutil.rmtree(os.path.join(tmp_dir, name), ignore_errors=True)  # another user's: left alone
            if not os.path.lexists(os.path.join(tmp_dir, name)):
                removed.append(name)
    return removed


@dataclasses.dataclass(frozen=True)
class _Plan:
    python: str  # runs the launcher (and, isolated, the programs)
    program_python: str
    isolated: bool
    sandbox_uid: int
    hide_paths: tuple[str, ...]


class _Live:
    """Launchers running now, so that an interrupt kills them all."""

    def __init__(self):
        self.lock, self.procs, self.stopped = threading.Lock(), set(), False

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.add(proc)
            stopped = self.stopped
        if stopped:
            _kill(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            procs = list(self.procs)
        for proc in procs:
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's session; its init dies with it (PDEATHSIG)
    except (ProcessLookupError, PermissionError):
        pass


def _read_verdict(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks, n = [], 0
    while n < _VERDICT_LIMIT:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


def _parse_verdict(raw: bytes, nonce: str) -> dict | str:
    """The launcher's verdict, or why it is not one."""
    try:
        v = json.loads(raw)
    except ValueError:
        return f"malformed verdict ({len(raw)} bytes)"
    if type(v) is not dict:
        return "malformed verdict (not an object)"
    if not hmac.compare_digest(str(v.get("nonce", "")).encode(), nonce.encode()):
        return "verdict without this run's nonce"
    if v.get("status") not in STATUSES or not all(type(v.get(k)) is str for k in ("reason", "stdout", "stderr")):
        return f"malformed verdict (status {str(v.get('status'))[:40]!r})"
    return v


def _isolation_name(info) -> str:
    if not isinstance(info, dict):
        return ""
    return "+".join([str(info.get("mode", "?"))] + [k for k in ("proc", "seccomp") if info.get(k) is True])


def _run_job(job: SandboxJob, limits: SandboxLimits, plan: _Plan, live: _Live, run_dir: str | None,
             index: int) -> SandboxResult:
    start = time.monotonic()
    work = None
    if not plan.isolated:
        work = os.path.join(run_dir, str(index))
        os.mkdir(work, 0o700)
        if os.geteuid() == 0:
            os.chown(work, plan.sandbox_uid, plan.sandbox_uid)
    nonce = secrets.token_hex(16)
    lim = dataclasses.asdict(limits)
    lim["max_frame"] = lim.pop("max_frame_bytes")
    setup = {"isolated": plan.isolated, "program": job.program, "entry_point": job.entry_point, "limits": lim,
             "sandbox_uid": plan.sandbox_uid, "hide_paths": list(plan.hide_paths), "work": work,
             "program_python": plan.program_python,
             "setup_timeout_s": limits.setup_timeout_s}
    secret = {"nonce": nonce, "setup": job.setup, "test": job.test, "entry_point": job.entry_point,
              "call": job.call or f"check({job.entry_point})"}
    data = sandbox_wire.dumps({"setup": setup}) + sandbox_wire.dumps({"secret": secret})
    hard = limits.timeout_s + limits.setup_timeout_s + 5.0
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([plan.python, "-I", "-S", LAUNCHER, str(os.getpid()), str(w)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w,), env={}, cwd="/",
                                start_new_session=True)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    live.add(proc)
    timed_out = False
    try:
        try:
            _, err = proc.communicate(data, timeout=hard)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            _, err = proc.communicate()
    finally:
        live.discard(proc)
        raw = _read_verdict(r)
        os.close(r)
        if work:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - start
    err_text = err.decode("utf-8", "replace")[-2000:]
    if timed_out:
        return SandboxResult("timeout", None, "", "", wall, f"no verdict within {hard:.0f} s; the launcher and "
                             "every process of the program were killed")
    if proc.returncode != 0:
        return SandboxResult("error", None, "", "", wall, f"launcher exited with status {proc.returncode}: "
                             f"{err_text.strip()[-1500:]}")
    v = _parse_verdict(raw, nonce)
    if isinstance(v, str):
        return SandboxResult("error", None, "", "", wall, f"{v}; launcher stderr: {err_text.strip()[-1000:]}")
    code = v.get("returncode")
    return SandboxResult(v["status"], code if type(code) is int else None, v["stdout"], v["stderr"], wall,
                         v["reason"], _isolation_name(v.get("isolation")))


_PROBE = SandboxJob("def probe():\n    return 7\n", "probe", "def check(candidate):\n    assert candidate() == 7\n")


_CAPABILITIES: dict[tuple, dict] = {}


def sandbox_capabilities(python: str | None = None, sandbox_uid: int = DEFAULT_SANDBOX_UID) -> dict[str, object]:
    """Probe whether programs can be isolated here (a success is remembered for the process, a failure not).

    Returns {"isolated": bool, "isolation": str (e.g. "namespaces+proc+seccomp"), "root": bool, "note": str}.
    """
    python = python or default_python()
    key = (python, sandbox_uid, os.geteuid())
    if key in _CAPABILITIES:
        return dict(_CAPABILITIES[key])
    res = _run_job(_PROBE, SandboxLimits(timeout_s=30.0), _Plan(python, python, True, sandbox_uid, ()), _Live(),
                   None, 0)
    caps = {"isolated": res.passed, "isolation": res.isolation if res.passed else "none", "root": os.geteuid() == 0,
            "note": "" if res.passed else f"{res.status}: {res.reason}"}
    if res.passed:
        _CAPABILITIES[key] = caps
    return dict(caps)


def _unavailable_message(note: str) -> str:
    return (
        "remix_jax sandbox: cannot isolate generated programs on this machine, so it will not run them "
        f"({note.strip()[:600]}). Fix: allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
        "and user.max_user_namespaces > 0; on Ubuntu 23.10+ also kernel.apparmor_restrict_unprivileged_userns=0; "
        "in a container: a seccomp/AppArmor profile that permits unshare, or root with CAP_SYS_ADMIN). Or accept "
        "running model-generated code without isolation: eval.sandbox.allow_unisolated=True "
        "(sandbox.run_tests(..., allow_unisolated=True))."
    )


def run_tests(jobs: Sequence[SandboxJob], limits: SandboxLimits = SandboxLimits(), *, workers: int | None = None,
              allow_unisolated: bool = False, python: str | None = None, sandbox_uid: int = DEFAULT_SANDBOX_UID,
              hide_paths: Sequence[str] = ()) -> list[SandboxResult]:
    """Run each job's test against its sandboxed program, ``workers`` at a time; results in input order.

    Raises SandboxUnavailableError when isolation is unavailable and ``allow_unisolated`` is False.
    ``hide_paths``: more host paths (files or directories) to hide from programs, e.g. the dataset file when
    it lies under /usr or the Python installation (other locations are not visible to programs anyway).
    """
    python = python or default_python()
    cleanup_stale()
    caps = sandbox_capabilities(python, sandbox_uid)
    if not caps["isolated"]:
        if not allow_unisolated:
            raise SandboxUnavailableError(_unavailable_message(str(caps["note"])))
        log.warning("sandbox: running generated programs WITHOUT isolation (allow_unisolated): %s", caps["note"])
    isolated = bool(caps["isolated"])
    plan = _Plan(python, _program_python(python, isolated), isolated, sandbox_uid,
                 tuple(os.path.realpath(p) for p in hide_paths))
    run_dir = None
    if not plan.isolated:
        me = os.getpid()
        run_dir = tempfile.mkdtemp(prefix=f"{_STALE_PREFIX}{me}-{_start_time(me)}-")
        os.chmod(run_dir, 0o711)  # the programs' uid (root evaluator) must reach its own directory
        if os.geteuid() == 0 and not _runnable_by_others(run_dir, 0o001):
            shutil.rmtree(run_dir)
            raise SandboxUnavailableError(f"unisolated programs run as uid {sandbox_uid}, which cannot reach the "
                                          f"temporary directory {os.path.dirname(run_dir)}; set TMPDIR to a "
                                          "directory that other users can traverse")
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    live, futures = _Live(), []
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            try:
                for i, job in enumerate(jobs):
                    futures.append(pool.submit(_run_job, job, limits, plan, live, run_dir, i))
                return [f.result() for f in futures]
            except BaseException:  # Ctrl-C or an error: kill every running program before leaving
                live.stop()
                for f in futures:
                    f.cancel()
                raise
    finally:
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def run_test(job: SandboxJob, limits: SandboxLimits = SandboxLimits(), **kwargs) -> SandboxResult:
    """Run one job (see ``run_tests``)."""
    return run_tests([job], limits, workers=1, **kwargs)[0]
