"""Run untrusted generated programs (HumanEval completions) in isolated, resource-limited processes.

Each program runs as ``python -I program.py`` in its own process, started in a new session (process group)
with an empty environment except ``PATH``, ``LANG``, and ``HOME`` = ``TMPDIR`` = cwd = a fresh temporary
directory. stdout/stderr go to files (bounded by the file-size limit), never to pipes held in memory.

Limits, always applied (``SandboxLimits``):
  - wall clock ``timeout_s``: on expiry the whole process group is killed with SIGKILL;
  - CPU time ``cpu_s`` (RLIMIT_CPU, SIGXCPU/SIGKILL), address space ``memory_bytes`` (RLIMIT_AS, so large
    allocations raise MemoryError), written file size ``file_size_bytes`` (RLIMIT_FSIZE), open files
    (RLIMIT_NOFILE), no core dumps (RLIMIT_CORE = 0).

Isolation when the evaluator runs as root with namespaces available ("namespaces" mode, the normal case in
containers; ``sandbox_capabilities()`` reports what is active). A small launcher process, still root:
  - enters new mount, network, PID, IPC and UTS namespaces (``unshare(2)``);
  - network: the new network namespace has only a loopback device that is down, so no connection can be
    made to anything, including services of the host on 127.0.0.1;
  - filesystem: the root mount is remounted read-only (in the private mount namespace only), and the
    world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock) are covered by small private tmpfs
    mounts, so the host's temporary files are invisible; the sample's directory is bind-mounted at
    ``/tmp/sandbox`` as its only persistent writable place;
  - processes: the program is PID 1 of its PID namespace with a fresh /proc, so it sees no other process
    of the host, and when it exits or is killed every process it started dies with it (also after setsid);
    it gets SIGKILL if the launcher dies (PR_SET_PDEATHSIG);
  - privileges: it drops to an unprivileged uid/gid of its own (``uid_base + slot``, one per parallel
    worker, no supplementary groups, no capabilities) before exec; RLIMIT_NPROC is therefore enforced
    (it is not for root) and counts only this sample's processes, so a fork bomb stops at
    ``max_processes`` and cannot starve the other samples or the evaluator.
Without root or namespaces ("rlimits" mode) the program runs as the evaluator's user: rlimits and the
process group still apply, RLIMIT_NPROC is set to the user's current process count plus
``max_processes``, but the network and writes outside the directory are only stopped by the Python guard.

The Python guard (``python_guard=True``, extra, never the only barrier in namespaces mode) prepends an audit
hook that refuses sockets, process creation, signals, ctypes, and writes/deletes outside the working
directory. An audit hook can be bypassed by a determined program; the OS barriers above cannot be from
inside the sandbox without a kernel exploit.

Not isolated: reading world-readable files of the host (the program can read, for example, the Python
installation and other world-readable files, but not files readable only by root, nor other processes'
environments); kernel attack surface (no seccomp filter); CPU contention between parallel samples.
A crash, hang, fork bomb, huge allocation, deletion attempt, socket or environment probe costs that sample
a failure (a ``SandboxResult`` with ``passed == False``) and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

INNER_DIR = "/tmp/sandbox"  # where the sample's directory appears inside the mount namespace
SETUP_FAILED_EXIT = 125  # launcher exit status when the sandbox itself could not be set up
_OUTPUT_TAIL = 4096
_KILL_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits."""

    timeout_s: float = 10.0  # wall clock, whole process group killed after this
    cpu_s: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    max_processes: int = 16  # RLIMIT_NPROC (tasks incl. threads) of the sample's uid
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE, also bounds captured stdout/stderr
    max_open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_bytes: int = 32 << 20  # size of each private tmpfs covering a world-writable directory


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program. status: passed | failed | timeout | setup_error."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Python guard: an audit hook installed before the program runs (extra to the OS barriers).
_GUARD = r'''
def __remix_sandbox_guard():
    import os, sys
    root = os.path.realpath(os.getcwd())
    blocked = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "os.fork",
               "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "os.spawn", "subprocess.Popen",
               "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.putenv",
               "os.unsetenv", "os.chroot", "os.setuid", "resource.setrlimit", "sys.addaudithook"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move"}
    realpath, fspath, isinstance_, str_, bytes_ = os.path.realpath, os.fspath, isinstance, str, bytes

    def inside(p):
        if isinstance_(p, int):
            return True
        p = fspath(p)
        if isinstance_(p, bytes_):
            p = p.decode("utf-8", "surrogateescape")
        p = realpath(p)
        return p == root or p.startswith(root + "/")

    def hook(event, args):
        if event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args and args[0] is not None:
            mode, flags = args[1], args[2]
            writing = (isinstance_(mode, str_) and any(c in mode for c in "wax+")) or (flags & 3) != 0
            if writing and not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} is not allowed")
        elif event in path_events:
            for a in args[:2]:
                if isinstance_(a, (str_, bytes_, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} on {a!r} is not allowed")

    sys.addaudithook(hook)


__remix_sandbox_guard()
del __remix_sandbox_guard
'''

# Launcher: runs (as the evaluator's user) before the program; sets up namespaces, limits, uid; then exec.
_LAUNCHER = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000)


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def fail(msg):
    os.write(2, f"sandbox setup failed: {msg}\n".encode())
    os._exit(125)


work = cfg["work"]
try:
    if cfg["namespaces"]:
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        check(libc.unshare(flags), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        for d in cfg["hide"]:
            if os.path.isdir(d) and not os.path.islink(d):
                mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_bytes']},mode=1777")
        os.makedirs(cfg["inner"], mode=0o700)
        mount(f"/proc/self/fd/{fd}", cfg["inner"], None, MS_BIND)
        mount(None, cfg["inner"], None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        os.close(fd)
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)  # only this namespace's root mount
        work = cfg["inner"]
except OSError as e:
    fail(e)

pid = 0
signal.signal(signal.SIGTERM, lambda *_: pid and os.kill(pid, signal.SIGKILL))  # installed before the fork
pid = os.fork()
if pid == 0:
    try:
        if cfg["namespaces"]:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chdir(work)
        for name, value in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # after setuid (cleared)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work}
        os.execve(cfg["python"], [cfg["python"], "-I", "program.py"], env)
    except BaseException as e:
        fail(f"{e!r} (python {cfg['python']}, work {work})")
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
'''

_HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _rlimits(limits: SandboxLimits, namespaces: bool) -> dict[str, int]:
    nproc = limits.max_processes
    if not namespaces:  # shared uid: the limit counts all of the user's processes
        nproc += _count_user_processes(os.getuid())
    return {
        "RLIMIT_CPU": int(limits.cpu_s),
        "RLIMIT_AS": int(limits.memory_bytes),
        "RLIMIT_NPROC": int(nproc),
        "RLIMIT_FSIZE": int(limits.file_size_bytes),
        "RLIMIT_NOFILE": int(limits.max_open_files),
        "RLIMIT_CORE": 0,
    }


def _count_user_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                for task in os.listdir(f"/proc/{entry}/task"):
                    if os.stat(f"/proc/{entry}/task/{task}").st_uid == uid:
                        count += 1
            except OSError:
                continue
    return count


def _world_runnable(path: str) -> bool:
    """Whether a user with no privileges can reach and execute ``path`` (o+x on every directory)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def default_python(privileged: bool) -> str:
    """The interpreter for sandboxed programs: this one, unless an unprivileged uid cannot run it (then the
    first ``python3`` on the system PATH that it can). Programs should need only the standard library."""
    if not privileged or _world_runnable(sys.executable):
        return sys.executable
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        cand = os.path.join(d, "python3")
        if os.path.exists(cand) and _world_runnable(cand):
            return cand
    return sys.executable


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _OUTPUT_TAIL))
        return f.read().decode("utf-8", "replace")


def _run_one(source: str, limits: SandboxLimits, python_guard: bool, python: str, namespaces: bool,
             uid: int | None) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="remix-sandbox-")
    try:
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write((_GUARD if python_guard else "") + source)
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "program.py"), uid, uid)
            if not namespaces:
                os.chmod(root, 0o711)
        cfg = {
            "work": work, "inner": INNER_DIR, "namespaces": namespaces, "hide": list(_HIDDEN_DIRS),
            "tmpfs_bytes": int(limits.tmpfs_bytes), "rlimits": _rlimits(limits, namespaces), "uid": uid,
            "python": python,
        }
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        start = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)], cwd=work, env={},
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True, start_new_session=True)
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                # SIGTERM: the launcher SIGKILLs the program and reaps it, which (PID namespace) waits until
                # every process of the sample is gone; SIGKILL of the whole group if it does not answer.
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=_KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group: launcher and everything not setsid'd
                except ProcessLookupError:
                    pass
                proc.wait()
        wall = time.monotonic() - start
        code = proc.returncode
        if timed_out:
            status = "timeout"
        elif code == 0:
            status = "passed"
        elif code == SETUP_FAILED_EXIT and "sandbox setup failed" in _tail(err_path):
            status = "setup_error"
        else:
            status = "failed"
        return SandboxResult(status, None if timed_out else code, _tail(out_path), _tail(err_path), wall)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@functools.cache
def sandbox_capabilities(python: str | None = None, uid_base: int = 3_000_000_000) -> dict[str, object]:
    """Probe once which isolation this machine supports.

    Returns {"mode": "namespaces" | "rlimits", "root": bool, "network_namespace": bool,
    "filesystem_barrier": bool, "unprivileged_uid": bool, "note": str}.
    """
    root = os.geteuid() == 0
    python = python or default_python(root)
    note = ""
    ok = False
    if root:
        probe = _run_one("import os\nassert os.getuid() != 0\n", SandboxLimits(timeout_s=30), False, python,
                         True, uid_base)
        ok = probe.passed
        if not ok:
            note = f"namespaces unavailable ({probe.status}): {probe.stderr.strip()[-300:]}"
    else:
        note = "not running as root: no network namespace, no uid drop; the Python guard is the only barrier"
    return {"mode": "namespaces" if ok else "rlimits", "root": root, "network_namespace": ok,
            "filesystem_barrier": ok, "unprivileged_uid": ok, "note": note}


def run_programs(sources: Sequence[str], limits: SandboxLimits = SandboxLimits(), *,
                 workers: int | None = None, python_guard: bool = True, python: str | None = None,
                 uid_base: int = 3_000_000_000) -> list[SandboxResult]:
    """Run each source as its own sandboxed program, ``workers`` at a time; results in input order.

    Each parallel worker slot has its own uid (``uid_base + slot``) in namespaces mode, so process-count
    limits of different samples never interact. ``python`` (default: ``default_python``) runs the programs;
    the launcher runs on this interpreter.
    """
    python = python or default_python(os.geteuid() == 0)
    caps = sandbox_capabilities(python, uid_base)
    namespaces = caps["mode"] == "namespaces"
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources) or 1))
    slots: queue.Queue[int] = queue.Queue()
    for s in range(workers):
        slots.put(s)

    def job(source: str) -> SandboxResult:
        slot = slots.get()
        try:
            return _run_one(source, limits, python_guard, python, namespaces,
                            uid_base + 1 + slot if namespaces else None)
        finally:
            slots.put(slot)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(job, sources))


def run_program(source: str, limits: SandboxLimits = SandboxLimits(), **kwargs) -> SandboxResult:
    """Run one program in the sandbox (see ``run_programs``)."""
    return run_programs([source], limits, workers=1, **kwargs)[0]
