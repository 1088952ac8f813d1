"""Launcher and judge of one sandboxed test run (standard library only; see sandbox.py for the threat model).

Run by sandbox.py as ``python -I -S sandbox_launcher.py EVALUATOR_PID VERDICT_FD``, with env {} and two frames
on stdin: the setup (program, limits, mounts) and then the secret part (nonce, trusted setup code, test).

Isolated (default): the launcher enters new namespaces (``sandbox_isolation.enter_namespaces``) and forks an
init (PID 1 of the new PID namespace) that builds the mount view (``sandbox_isolation.build_root``), pivots
into it and forks the program. The program drops every capability, gets rlimits, no_new_privs and the
seccomp filter, and execs ``python -I -S -u -c <sandbox_wire.py> ENTRY_POINT``. The launcher stays outside
the PID namespace (invisible to the program) and is the judge: it reads the secret frame only after init
was forked, runs the setup code and the test with ``candidate`` calls forwarded to the program as plain
data, kills init (so every process of the namespace) and writes the verdict with the nonce to VERDICT_FD,
which no other process holds.
Unisolated (explicit opt-in only): the same judge and program, without namespaces; the program runs in a host
directory with rlimits, seccomp and the Python guard, and the judge, a child subreaper, kills what it leaves.

Longer than 400 lines on purpose: the judge is one standalone script (run by path, standard library only), read and
audited as one; the namespaces and mounts, the seccomp filter and the wire format are apart (sandbox_isolation.py,
sandbox_seccomp.py, sandbox_wire.py).
"""

from __future__ import annotations

import builtins
import fcntl
import json
import linecache
import os
import resource
import select
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    """A sibling module by path (this script runs outside the package, with -I)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seccomp, wire, iso = _load("sandbox_seccomp"), _load("sandbox_wire"), _load("sandbox_isolation")
SetupError, check, libc, prctl, die_with_parent = iso.SetupError, iso.check, iso.libc, iso.prctl, iso.die_with_parent
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 4, 24, 28
PR_SET_CHILD_SUBREAPER, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 47, 4
SECURE_ALL = 0xEF  # NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE set, KEEP_CAPS clear, all locked
TAIL = 4096
with open(os.path.join(HERE, "sandbox_wire.py"), encoding="utf-8") as _f:
    SERVER = _f.read()  # the program's server: run with -c inside the sandbox


def init_main(cfg: dict, fds: dict, plan: tuple, pipes: dict) -> None:
    """PID 1 of the program's PID namespace: builds the mount view, forks the program, exits with its status."""
    status_w = pipes["status_w"]
    try:
        prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([pipes["life_r"]], [], [], 0)[0]:  # the launcher already died (EOF)
            os._exit(1)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):  # the launcher's pipes to the evaluator (stdin still holds the secret frame)
            os.dup2(null, fd)
        for key in ("life_r", "req_w", "resp_r"):  # the judge's ends
            os.close(pipes.pop(key))
        for sig in range(1, signal.NSIG):  # PID 1 with default handlers ignores signals from inside
            if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        check(libc.sethostname(b"sandbox", 7), "sethostname")  # in the new UTS namespace: the host's name hidden
        info = iso.build_root(cfg, *plan, fds)
        for fd in fds.values():
            os.close(fd)
        write_program(cfg, "/tmp")
        info["seccomp"] = seccomp.supported()
        child = os.fork()
        if child == 0:
            exec_program(cfg, pipes, "/tmp", isolated=True, parent=1)
        os.write(status_w, json.dumps(info).encode())
        os.close(status_w)
        for key in ("req_r", "resp_w", "out", "err"):
            os.close(pipes[key])
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)
    except BaseException as e:
        try:
            os.write(status_w, f"error: {e}".encode()[:2000])
        finally:
            os._exit(125)


def write_program(cfg: dict, work: str) -> None:
    fd = os.open(os.path.join(work, "program.py"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        os.write(fd, cfg["program"].encode())
    finally:
        os.close(fd)


def exec_program(cfg: dict, pipes: dict, work: str, isolated: bool, parent: int) -> None:
    """The program's process: fds 0-4, limits, no capabilities, seccomp, then exec (never returns)."""
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        srcs = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in
                (null, pipes["out"], pipes["err"], pipes["req_r"], pipes["resp_w"])]  # above 0-4 first
        for dst, src in enumerate(srcs):
            os.dup2(src, dst)
        os.closerange(5, 1 << 16)
        if not isolated and os.geteuid() == 0:  # never run a program as root
            uid = cfg["sandbox_uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        die_with_parent(parent)  # after the uid change, which clears it
        os.chdir(work)
        lim = cfg["limits"]
        nproc = int(lim["max_processes"]) + cfg["nproc_base"]  # the launcher and init, or the uid's other tasks
        for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_bytes"]),
                            ("RLIMIT_NPROC", nproc), ("RLIMIT_FSIZE", lim["file_size_bytes"]),
                            ("RLIMIT_NOFILE", lim["max_open_files"]), ("RLIMIT_CORE", 0)):
            resource.setrlimit(getattr(resource, name), (int(value), int(value)))
        if isolated:  # the namespace's root: lose every capability, for good (exec cannot give them back)
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
            for cap in range(64):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    break
            prctl(PR_SET_SECUREBITS, SECURE_ALL)
        if seccomp.supported():
            seccomp.install()  # also sets no_new_privs
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work}
        exe = os.path.realpath(sys.executable if isolated else cfg["program_python"])
        argv = [exe, "-I", "-S", "-u", "-c", SERVER, cfg["entry_point"]] + ([] if isolated else ["--guard"])
        os.execve(exe, argv, env)
    except BaseException as e:
        os.write(2, f"sandbox: starting the program failed: {e!r}\n".encode())
    os._exit(127)


def count_user_tasks(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += sum(os.stat(f"/proc/{pid}/task/{t}").st_uid == uid for t in os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


class Box:
    """The running program: start() returns when it is forked; stop() kills every process of it."""

    def __init__(self, cfg: dict, evaluator_pid: int):
        self.cfg, self.evaluator_pid = cfg, evaluator_pid
        self.isolated = cfg["isolated"]
        self.pid = None  # init (isolated) or the program (unisolated)
        self.info: dict = {"mode": "namespaces" if self.isolated else "none"}
        self.exit_code: int | None = None

    def _pipes(self) -> dict:
        p = {}
        p["req_r"], p["req_w"] = os.pipe()
        p["resp_r"], p["resp_w"] = os.pipe()
        p["out"], p["err"] = os.memfd_create("stdout"), os.memfd_create("stderr")
        for fd in p.values():
            os.set_inheritable(fd, False)
        return p

    def start(self) -> None:
        self.pipes = p = self._pipes()
        outer = self.cfg["sandbox_uid"] if os.geteuid() == 0 else os.getuid()
        per_ns = self.isolated and iso.nproc_counted_per_namespace()
        self.cfg["nproc_base"] = 2 if per_ns else count_user_tasks(outer) + 2  # counted on the host's /proc
        if self.isolated:
            self._start_isolated(p)
        else:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            prctl(PR_SET_DUMPABLE, 0)  # the program runs as our uid: keep it out of our memory (/proc/PID/mem)
            work = self.cfg["work"]
            write_program(self.cfg, work)
            if os.geteuid() == 0:  # the program runs as sandbox_uid (exec_program)
                os.chown(os.path.join(work, "program.py"), self.cfg["sandbox_uid"], self.cfg["sandbox_uid"])
            me = os.getpid()
            self.pid = os.fork()
            if self.pid == 0:
                exec_program(self.cfg, p, work, isolated=False, parent=me)
            self.info["seccomp"] = seccomp.supported()
        for key in ("req_r", "resp_w"):
            os.close(p.pop(key))
        os.set_blocking(p["req_w"], False)
        os.set_blocking(p["resp_r"], False)

    def _start_isolated(self, p: dict) -> None:
        cfg = self.cfg
        plan, fds = iso.enter_namespaces(cfg, self.evaluator_pid)
        prctl(PR_SET_DUMPABLE, 0)  # nothing in the sandbox may read this process's memory or fds
        p["status_r"], p["status_w"] = os.pipe()
        p["life_r"], life_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(p["status_r"])
            os.close(life_w)
            os.close(self.cfg["verdict_fd"])
            init_main(cfg, fds, plan, p)
        self.lifeline = life_w
        for fd in fds.values():
            os.close(fd)
        for key in ("status_w", "life_r"):
            os.close(p.pop(key))
        status = read_all(p.pop("status_r"), time.monotonic() + float(cfg["setup_timeout_s"]))
        if not status.startswith(b"{"):
            raise SetupError(status.decode(errors="replace") or "init exited without a word")
        self.info.update(json.loads(status))

    def stop(self) -> None:
        if self.pid is None:
            return
        if self.wait(0) is None:  # still running: killed now, so no exit status of its own
            try:
                os.kill(self.pid if self.isolated else -self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(None)
            self.exit_code = None
        if not self.isolated:  # orphans of the program were re-parented to us (subreaper): kill until none
            for _ in range(1000):
                kids = children(os.getpid())
                if not kids:
                    break
                for k in kids:
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                while True:
                    try:
                        if os.waitpid(-1, os.WNOHANG)[0] == 0:
                            break
                    except ChildProcessError:
                        break

    def wait(self, timeout: float | None) -> int | None:
        """Exit status of init/the program (None while it runs past ``timeout``)."""
        if self.exit_code is not None:
            return self.exit_code
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, 0 if end is None else os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                self.exit_code = code if code >= 0 else 128 - code
                return self.exit_code
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)

    def tails(self) -> tuple[str, str]:
        return tuple(tail(self.pipes[k]) for k in ("out", "err"))


def children(ppid: int) -> list[int]:
    kids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == ppid:
                        kids.append(int(pid))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def read_all(fd: int, deadline: float) -> bytes:
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SetupError("the sandbox was not ready in time")
        chunk = os.read(fd, 65536)
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


def tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, TAIL, max(0, size - TAIL)).decode("utf-8", "replace")


# ---------------------------------------------------------------- the judge


class ProgramLoadError(BaseException):
    pass


_NOT_MAPPED = ("StopIteration", "StopAsyncIteration")  # control flow in the test: never re-raised as such


class Judge:
    """Runs the trusted test; ``candidate`` calls go to the program as plain data."""

    def __init__(self, box: Box, deadline: float):
        self.box, self.deadline = box, deadline
        self.calls = 0

    def _ended(self, what: str) -> wire.ProgramEnded:
        code = self.box.wait(1.0)
        how = "closed its answer channel" if code is None else f"exited with status {code}"
        if code is not None and code > 128:
            how = f"was killed by signal {code - 128} ({signal.Signals(code - 128).name})"
        return wire.ProgramEnded(f"the program {how} {what}")

    def receive(self, what: str) -> dict:
        try:
            return wire.read_frame(self.box.pipes["resp_r"], self.deadline, int(self.box.cfg["limits"]["max_frame"]))
        except wire.ProgramEnded:
            raise self._ended(what) from None

    def loaded(self) -> None:
        message = self.receive("before the tests started")
        if "load_error" in message:
            raise ProgramLoadError(str(message["load_error"])[-1500:])
        if "loaded" not in message:
            raise wire.ProtocolError(f"expected 'loaded', got {sorted(message)}")

    def call(self, *args, **kwargs):
        self.calls += 1
        try:
            wire.write_frame(self.box.pipes["req_w"], {"call": [wire.encode(list(args)), wire.encode(kwargs)]},
                             self.deadline)
        except wire.ProgramEnded:
            raise self._ended("before the tests finished") from None
        message = self.receive("before the tests finished")
        if "return" in message:
            return wire.decode(message["return"])
        if "raise" in message and type(message["raise"]) is list and len(message["raise"]) == 2:
            name, text = (str(x)[:2000] for x in message["raise"])
            cls, exc = getattr(builtins, name, None), None
            if isinstance(cls, type) and issubclass(cls, Exception) and name not in _NOT_MAPPED:
                try:
                    exc = cls(text)
                    exc.add_note("raised by the program")
                except Exception:  # exception types with other constructor arguments
                    exc = None
            raise exc or RuntimeError(f"the program raised {name}" + (f": {text}" if text else ""))
        raise wire.ProtocolError(f"expected 'return' or 'raise', got {str(message)[:80]}")


def _on_alarm(signum, frame):
    raise wire.ProgramTimeout("deadline reached in the test")


def describe(e: BaseException) -> str:
    """'Type: message (test.py:LINE: source)' for the innermost line of the test."""
    where = ""
    for frame, lineno in traceback.walk_tb(e.__traceback__):
        if frame.f_code.co_filename in ("test.py", "setup.py"):
            src = linecache.getline(frame.f_code.co_filename, lineno).strip()
            where = f" ({frame.f_code.co_filename}:{lineno}: {src[:200]})"
    text = str(e)[:1500]
    origin = " raised by the program" if "raised by the program" in getattr(e, "__notes__", ()) else ""
    return f"{type(e).__name__}{origin}{': ' + text if text else ''}{where}"


def compile_cached(source: str, name: str):
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    return compile(source, name, "exec")


def judge(box: Box, secret: dict, deadline: float) -> tuple[str, str]:
    """(status, reason): "passed" only when the test's call returned normally."""
    j = Judge(box, deadline)
    entry = secret["entry_point"]
    ns: dict = {"__name__": "__test__"}
    try:
        exec(compile_cached(secret["setup"], "setup.py"), ns)
        ns[entry] = j.call
        exec(compile_cached(secret["test"], "test.py"), ns)
        call = compile_cached(secret["call"], "call.py")
        missing = [n for n in call.co_names if n not in ns and not hasattr(builtins, n)]
        if missing:
            raise NameError(f"{secret['call']!r} needs {missing}, which the test does not define")
    except BaseException as e:
        return "error", f"the test code failed to load: {describe(e)}"
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))
    try:
        j.loaded()
        exec(call, ns)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return "passed", f"the test returned normally after {j.calls} call(s)"
    except wire.ProgramTimeout as e:  # the alarm or a wait for the program, whichever came first
        return "timeout", f"the test did not finish within {box.cfg['limits']['timeout_s']} s ({e}; {j.calls} call(s))"
    except ProgramLoadError as e:
        return "failed", f"the program failed to load: {str(e).strip().splitlines()[-1][:500]}"
    except wire.ProgramEnded as e:
        return "failed", f"{e} ({j.calls} call(s) made)"
    except wire.ProtocolError as e:
        return "failed", f"malformed answer from the program: {e}"
    except BaseException as e:
        return "failed", describe(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    evaluator_pid, verdict_fd = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(evaluator_pid)
    os.set_inheritable(verdict_fd, False)
    verdict: dict = {"status": "error", "reason": "", "stdout": "", "stderr": "", "returncode": None}
    secret: dict = {}
    box = None
    try:
        cfg = wire.read_frame(0)["setup"]
        cfg["verdict_fd"] = verdict_fd
        box = Box(cfg, evaluator_pid)
        try:
            box.start()
        finally:
            secret = wire.read_frame(0)["secret"]  # read only now: init and the program never held it
        deadline = time.monotonic() + float(cfg["limits"]["timeout_s"])
        verdict["status"], verdict["reason"] = judge(box, secret, deadline)
    except SetupError as e:
        verdict["status"], verdict["reason"] = "setup_error", f"sandbox setup failed: {e}"
    except BaseException as e:
        verdict["status"], verdict["reason"] = "error", f"harness error: {e!r}"[:2000]
    finally:
        if box is not None:
            box.stop()
            verdict["returncode"] = box.exit_code
            if getattr(box, "pipes", None):
                verdict["stdout"], verdict["stderr"] = box.tails()
            verdict["isolation"] = box.info
    verdict["nonce"] = secret.get("nonce", "")
    os.write(verdict_fd, json.dumps(verdict).encode()[:60000])
    os._exit(0)


if __name__ == "__main__":
    main()
