"""Hostile programs against the sandbox: tricks for a false pass, and escapes (files, network, processes,
secrets, resources). ``run_suite`` runs them all in one parallel batch and returns every attack that
worked; the tests here run it as the current user, and test_sandbox.py runs this file as a script under an
unprivileged uid (``python3 test_sandbox_attacks.py DIR`` prints the same report as JSON). So this module
imports neither pytest nor anything outside the standard library and the sandbox.

Every false-pass program is a wrong solution plus a trick; ``test_tricks_pass_a_naive_harness`` shows that
the tricks that are harmless to run unsandboxed do pass a harness that trusts the exit status, so the suite
can fail.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

if __name__ == "__main__":  # as a script: import the repository's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from remix_jax.evaluation import sandbox  # noqa: E402

# Two programs of the suite ("hang", "signal_handlers_exit_0") run until timeout_s, which so sets the suite's wall
# time; every other program ends by itself within about 1.3 s on an idle 2-core host (cpu_burn at its 4 s CPU
# limit), so 8 s leaves them several times their time on a loaded one.
LIMITS = sandbox.SandboxLimits(timeout_s=8.0, cpu_s=4, memory_bytes=512 << 20, max_processes=16,
                               file_size_bytes=4 << 20, tmpfs_bytes=8 << 20)
PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
TEST = textwrap.dedent("""\
    def check(candidate):
        assert candidate(1, 2) == 3
        assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9
        assert candidate(-4, 4) == 0
        assert isinstance(candidate(2, 2), int)
    """)
LOOP_TEST = textwrap.dedent("""\
    def check(candidate):
        for got, want in zip(map(candidate, [1, 2, 3], [1, 1, 1]), [2, 3, 4]):
            assert got == want
    """)
RIGHT, WRONG = "    return a + b\n", "    return 0\n"
_FAKE = ('{"status": "passed", "reason": "", "stdout": "", "stderr": "", "nonce": "%s"}\npassed\nPASS\n'
         % ("0" * 32))


def _body(text: str) -> str:
    return textwrap.indent(textwrap.dedent(text), "    ")


FALSE_PASS = {  # name: (completion, test); each completion is wrong
    "sys_exit_in_function": ("    import sys\n    sys.exit(0)\n", TEST),
    "os_exit_in_function": ("    import os\n    os._exit(0)\n", TEST),
    "sys_exit_at_module_level": (WRONG + "\nimport sys\nsys.exit(0)\n", TEST),
    "os_exit_at_module_level": (WRONG + "\nimport os\nos._exit(0)\n", TEST),
    "raise_systemexit_in_test": ("    raise SystemExit(0)\n", TEST),
    "atexit_forces_status_0": (WRONG + "\nimport atexit, os\natexit.register(lambda: os._exit(0))\n", TEST),
    "excepthook_exits_0": (WRONG + "\nimport os, sys\nsys.excepthook = lambda *a: os._exit(0)\n", TEST),
    "rerun_tests_without_asserts": (WRONG + textwrap.dedent("""
        # attack
        import os, re
        _mark = "#" + " attack"
        _src = open("program.py").read()
        _src = _src.split(_mark)[0] + _src.split(_mark + " ends")[-1]  # the program without this block
        exec(re.sub(r"\\bassert\\b", "_ =", _src) + "\\ncheck(add)\\n" * ("def check" in _src), {})
        os._exit(0)
        # attack ends
        """), TEST),
    "override_builtins": ("    return int(a + b)\n" + textwrap.dedent("""
        import builtins
        builtins.abs = lambda x: 0
        builtins.all = lambda x: True
        builtins.AssertionError = type("Never", (Exception,), {})
        """), TEST),
    "always_equal_object": (_body("""
        class Anything:
            __eq__ = lambda self, other: True
            __abs__ = lambda self: 0
            __sub__ = lambda self, other: self
            __class__ = property(lambda self: int)  # isinstance(x, int) believes it
        return Anything()
        """), TEST),
    "int_subclass_equal_to_all": (_body("""
        class Int(int):
            __eq__ = lambda self, other: True
            __sub__ = lambda self, other: Int(0)
            __hash__ = int.__hash__
        return Int(0)
        """), TEST),
    "patch_check": (WRONG + textwrap.dedent("""
        import builtins, sys
        check = lambda candidate: None
        builtins.check = check
        sys.modules["__main__"].check = check
        """), TEST),
    "exit_0_from_del": (_body("""
        class Bomb:
            def __del__(self):
                import os
                os._exit(0)
        Bomb()
        return 0
        """), TEST),
    "systemexit_from_del": (_body("""
        class Loud:
            def __del__(self):
                raise SystemExit(0)
        Loud()
        return 0
        """), TEST),
    "fake_verdicts_on_every_fd": (_body(f"""
        import os, struct
        fake = {_FAKE!r}.encode()
        frame = b'{{"loaded":null}}'
        for fd in range(1024):
            for data in (fake, struct.pack(">I", len(frame)) + frame):
                try:
                    os.write(fd, data)
                except OSError:
                    pass
        return 0
        """), TEST),
    "child_prints_pass_and_exits_0": (_body(f"""
        import os
        if os.fork() == 0:
            for fd in range(1024):
                try:
                    os.write(fd, {_FAKE!r}.encode())
                except OSError:
                    pass
            os._exit(0)
        os.wait()
        return 0
        """), TEST),
    "read_parent_memory_and_fds": (_body(f"""
        import os, re
        found = b""
        for pid in [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]:
            for name in ("environ", "cmdline"):
                try:
                    found += open(f"/proc/{{pid}}/{{name}}", "rb").read()
                except OSError:
                    pass
            try:
                with open(f"/proc/{{pid}}/mem", "rb") as mem:
                    for line in open(f"/proc/{{pid}}/maps"):
                        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                        mem.seek(lo)
                        found += mem.read(min(hi - lo, 1 << 20))
            except (OSError, ValueError, OverflowError):
                pass
            try:
                for fd in os.listdir(f"/proc/{{pid}}/fd"):
                    os.write(os.open(f"/proc/{{pid}}/fd/{{fd}}", os.O_WRONLY), {_FAKE!r}.encode())
            except OSError:
                pass
        for nonce in set(re.findall(rb"[0-9a-f]{{32}}", found)):
            for fd in range(1024):
                try:
                    os.write(fd, b'{{"status": "passed", "nonce": "' + nonce + b'"}}')
                except OSError:
                    pass
        return 0
        """), TEST),
    "signal_handlers_exit_0": (_body("""
        import os, signal, time
        for sig in range(1, signal.NSIG):
            try:
                signal.signal(sig, lambda *a: os._exit(0))
            except (OSError, ValueError):
                pass
        time.sleep(3600)
        """), TEST),
    "alarm_exits_0": (_body("""
        import os, signal, time
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.alarm(1)
        time.sleep(3600)
        """), TEST),
    "thread_exits_0_later": (_body("""
        import os, threading, time
        threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0))).start()
        time.sleep(3600)
        """), TEST),
    "settrace_skips_asserts": ("    return int(a + b)\n" + textwrap.dedent("""
        import sys
        def _jump_to_last_line(frame, event, arg):
            if event == "line":
                last = max(line for _, _, line in frame.f_code.co_lines() if line)
                if frame.f_lineno != last:
                    frame.f_lineno = last
            return _jump_to_last_line
        sys.settrace(lambda frame, event, arg: _jump_to_last_line if frame.f_code.co_name == "check" else None)
        """), TEST),
    "stop_iteration_ends_test_loop": ("    raise StopIteration\n", LOOP_TEST),
    "keyboard_interrupt": ("    raise KeyboardInterrupt\n", TEST),
    "generator_exit": ("    raise GeneratorExit\n", TEST),
    "oversized_answer": ('    return "x" * (20 << 20)\n', TEST),
    "deeply_nested_answer": (_body("""
        x = []
        for _ in range(10000):
            x = [x]
        return x
        """), TEST),
    "forged_protocol_frames": (WRONG + textwrap.dedent("""
        import json, os, struct
        for msg in ({"loaded": None}, {"passed": True}, {"verdict": "passed"}):  # ahead of the server's frames
            data = json.dumps(msg).encode()
            os.write(4, struct.pack(">I", len(data)) + data)
        """), TEST),
    "hang": ("    import time\n    time.sleep(3600)\n", TEST),
}
EXPECTED = {  # name: what the failure reason says (the trick ran and was seen through)
    "sys_exit_in_function": "the program raised SystemExit",
    "os_exit_in_function": "exited with status 0 before the tests finished",
    "sys_exit_at_module_level": "failed to load: SystemExit",
    "os_exit_at_module_level": "exited with status 0 before the tests started",
    "raise_systemexit_in_test": "the program raised SystemExit",
    "atexit_forces_status_0": "AssertionError (test.py:2:",
    "excepthook_exits_0": "AssertionError (test.py:2:",
    "rerun_tests_without_asserts": "exited with status 0 before the tests started",
    "override_builtins": "AssertionError (test.py:3:",
    "always_equal_object": "TypeError raised by the program",
    "int_subclass_equal_to_all": "AssertionError (test.py:2:",
    "patch_check": "AssertionError (test.py:2:",
    "exit_0_from_del": "exited with status 0 before the tests finished",
    "systemexit_from_del": "AssertionError (test.py:2:",
    "fake_verdicts_on_every_fd": "malformed answer from the program: frame of",
    "child_prints_pass_and_exits_0": "malformed answer from the program: frame of",
    "read_parent_memory_and_fds": "AssertionError (test.py:2:",
    "signal_handlers_exit_0": "the test did not finish within ",
    "alarm_exits_0": "exited with status 0 before the tests finished",
    "thread_exits_0_later": "exited with status 0 before the tests finished",
    "settrace_skips_asserts": "AssertionError (test.py:3:",
    "stop_iteration_ends_test_loop": "the program raised StopIteration",
    "keyboard_interrupt": "the program raised KeyboardInterrupt",
    "generator_exit": "the program raised GeneratorExit",
    "oversized_answer": "ValueError raised by the program: message of",
    "deeply_nested_answer": "ValueError raised by the program: value nested deeper than 100",
    "forged_protocol_frames": "malformed answer from the program: expected 'return' or 'raise'",
    "hang": "the test did not finish within ",
}
NAIVE_PASSES = ("sys_exit_in_function", "os_exit_in_function", "sys_exit_at_module_level", "os_exit_at_module_level",
                "raise_systemexit_in_test", "atexit_forces_status_0", "excepthook_exits_0",
                "rerun_tests_without_asserts", "override_builtins", "always_equal_object",
                "int_subclass_equal_to_all", "exit_0_from_del", "stop_iteration_ends_test_loop", "alarm_exits_0",
                "thread_exits_0_later", "settrace_skips_asserts")

REPORT_TEST = 'import json\n\ndef check(candidate):\n    raise AssertionError("REPORT:" + json.dumps(candidate()))\n'


def isolation_programs(canary_dir: str, port: int, abstract: str, marker: str) -> dict[str, str]:
    """name -> program whose ``f()`` tries an escape and returns what worked (the test raises it as REPORT)."""
    canary = os.path.join(canary_dir, "canary.txt")
    c = {"canary": canary, "canary_dir": canary_dir, "port": port, "abstract": abstract, "marker": marker,
         "evaluator": os.getpid()}
    return {k: textwrap.dedent(v).format(**c) for k, v in {
        "files": """\
            import ctypes, os, shutil, sys
            def f():
                libc = ctypes.CDLL(None, use_errno=True)
                def raw(ret):
                    if ret != 0:
                        raise OSError(ctypes.get_errno(), "libc")
                tries = {{
                    "remove": lambda: os.remove("{canary}"),
                    "rmtree": lambda: shutil.rmtree("{canary_dir}"),
                    "write_beside": lambda: open("{canary_dir}/intruder", "w").write("x"),
                    "write_etc": lambda: open("/etc/remix_sandbox_intruder", "w").write("x"),
                    "write_usr": lambda: open("/usr/remix_sandbox_intruder", "w").write("x"),
                    "remove_usr_bin_env": lambda: os.remove("/usr/bin/env"),
                    "dir_fd_unlink": lambda: os.unlink("{canary}"[1:], dir_fd=os.open("/", os.O_RDONLY)),
                    "dir_fd_create": lambda: os.open("usr/intruder", os.O_CREAT | os.O_WRONLY,
                                                     dir_fd=os.open("/", os.O_RDONLY)),
                    "libc_unlink": lambda: raw(libc.unlink(b"{canary}")),
                    "unlinkat_syscall": lambda: raw(libc.syscall(263, -100, b"/usr/bin/env", 0)),
                    "append_interpreter": lambda: open(sys.executable, "ab").write(b"#"),
                    "chmod_usr_bin": lambda: os.chmod("/usr/bin", 0o777),
                    "write_root_dir": lambda: open("/intruder", "w").write("x"),
                }}
                worked = []
                for name, attempt in tries.items():
                    try:
                        attempt()
                        worked.append(name)
                    except Exception:
                        pass
                open("/tmp/own_file", "w").write("the sandbox's own directory is writable")
                return worked
            """,
        "network": """\
            import socket
            def f():
                worked = []
                for name, family, kind, addr in (
                        ("tcp_loopback", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", {port})),
                        ("tcp_localhost", socket.AF_INET, socket.SOCK_STREAM, ("localhost", {port})),
                        ("tcp6_loopback", socket.AF_INET6, socket.SOCK_STREAM, ("::1", {port})),
                        ("abstract_unix", socket.AF_UNIX, socket.SOCK_STREAM, "\\0{abstract}"),
                        ("udp_loopback", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", {port}))):
                    try:
                        s = socket.socket(family, kind)
                        s.settimeout(2)
                        if kind == socket.SOCK_DGRAM:
                            s.sendto(b"x", addr)
                        else:
                            s.connect(addr)
                            s.sendall(b"x")
                        worked.append(name)
                    except OSError:
                        pass
                return worked
            """,
        "processes": """\
            import os, sys, time
            def f():
                started = 0
                for _ in range(3):
                    if os.fork() == 0:  # detached: own session, parent gone, exec'd with a marker
                        os.setsid()
                        if os.fork() == 0:
                            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)",
                                                      "{marker}"])
                        os._exit(0)
                    started += 1
                time.sleep(1)
                return []
            """,
        "kill_scorer": """\
            import os, signal
            def f():
                worked = []
                for name, pid in (("evaluator", {evaluator}), ("parent", os.getppid()), ("init", 1), ("all", -1)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        if name in ("evaluator", "all"):
                            worked.append(name)
                    except OSError:
                        pass
                return worked
            """,
        "fork_bomb": """\
            import os, time
            def f():
                n = 0
                for _ in range(1000):
                    try:
                        pid = os.fork()
                    except OSError:
                        break
                    if pid == 0:
                        time.sleep(3600)
                        os._exit(0)
                    n += 1
                return ["forked %d" % n]
            """,
        "fill_disk": """\
            import os
            def f():
                total, err = 0, None
                chunk = b"x" * (1 << 20)
                try:
                    for i in range(10000):
                        with open("/tmp/fill%d" % i, "wb") as out:
                            for _ in range(3):
                                out.write(chunk)
                                total += len(chunk)
                except OSError as e:
                    err = e.errno
                return ["wrote %d errno %s" % (total, err)]
            """,
        "big_file": """\
            def f():
                try:
                    with open("big", "wb") as out:
                        out.write(b"x" * (64 << 20))
                except OSError as e:
                    return ["errno %d" % e.errno]
                return ["wrote 64 MiB"]
            """,
        "memory": """\
            def f():
                try:
                    x = bytearray(8 << 30)
                    x[-1] = 1
                except MemoryError:
                    return ["MemoryError"]
                return ["allocated 8 GiB"]
            """,
        "secrets": """\
            import glob, os, sys
            def f():
                seen = [repr(dict(os.environ))]
                for path in ["{canary}"] + glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
                    try:
                        seen.append(open(path, "rb").read().decode("latin-1"))
                    except OSError:
                        pass
                for root in ("/tmp", "/home", "/etc", "/run", "/var", "/srv", "/opt"):
                    for d, _, files in os.walk(root):
                        for name in files:
                            try:
                                with open(os.path.join(d, name), "rb") as fh:
                                    seen.append(fh.read(1 << 16).decode("latin-1"))
                            except OSError:
                                pass
                text = "\\n".join(seen)
                print(text[-3000:])
                sys.stderr.write(text[-3000:])
                token = "s3" + "cr3t-"  # not in this program's own text
                return [line[:200] for line in text.splitlines() if token in line]
            """,
        "privileges": """\
            import ctypes, os
            def f():
                libc = ctypes.CDLL(None, use_errno=True)
                status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
                              if ":\\t" in line)
                worked = [k for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[k], 16)]
                if status["NoNewPrivs"].strip() != "1":
                    worked.append("no NoNewPrivs")
                for name, ret in (("ptrace_init", lambda: libc.ptrace(16, 1, 0, 0)),
                                  ("unshare_user", lambda: libc.unshare(0x10000000)),
                                  ("mount_tmpfs", lambda: libc.mount(b"x", b"/tmp", b"tmpfs", 0, None)),
                                  ("setuid_0", lambda: libc.setuid(0) if os.getuid() != 0 else -1)):
                    if ret() == 0:
                        worked.append(name)
                return worked
            """,
        "cpu_burn": """\
            def f():
                while True:
                    pass
            """,
    }.items()}


def marker_pids(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def spawning_program(marker: str, detached: int = 2) -> str:
    """``marker()`` starts ``detached`` sleepers that escape its session and process tree, then sleeps."""
    return textwrap.dedent(f"""\
        import os, sys, time
        def {marker}():
            for _ in range({detached}):
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", "{marker}"])
                    os._exit(0)
            time.sleep(3600)
        """)


_EVALUATOR = textwrap.dedent("""\
    import os
    from remix_jax.evaluation import sandbox, sandbox_seccomp
    marker, mode, program = (os.environ["REMIX_TEST_" + k] for k in ("MARKER", "MODE", "PROGRAM"))
    if mode == "unisolated":
        sandbox_seccomp.install()  # no namespaces for this evaluator
    job = sandbox.SandboxJob(program, marker, "def check(candidate):\\n    candidate()\\n")
    print(sandbox.run_tests([job, job], sandbox.SandboxLimits(timeout_s=600), workers=2,
                            allow_unisolated=mode == "unisolated"))
    """)


def start_evaluator(marker: str, mode: str, program: str, tmp_dir: str) -> subprocess.Popen:
    """An evaluator process running two copies of ``program`` (marker and program are passed in its
    environment, so that it is not a marked process itself)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "TMPDIR": tmp_dir, "REMIX_TEST_MARKER": marker,
           "REMIX_TEST_MODE": mode, "REMIX_TEST_PROGRAM": program}
    # SIGINT back to its default in the child: an ignored SIGINT is inherited across exec, and Python then never
    # installs its KeyboardInterrupt handler (the Ctrl-C test would hang instead of testing the evaluator).
    return subprocess.Popen([sys.executable, "-c", _EVALUATOR], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until(predicate, limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def kill_marked(marker: str) -> list[int]:
    pids = marker_pids(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def sigkill_scenario(tmp_dir: str) -> list[str]:
    """SIGKILL an evaluator while two programs and their detached sleepers run: what survives."""
    marker = "remix_marker_" + secrets.token_hex(6)
    ev = start_evaluator(marker, "isolated", spawning_program(marker), tmp_dir)
    started = wait_until(lambda: len(marker_pids(marker)) >= 6, 120)
    ev.kill()
    _, err = ev.communicate()
    if not started:
        return [f"the programs did not start ({kill_marked(marker)}): {err[-2000:]}"]
    if not wait_until(lambda: marker_pids(marker) == [], 30):
        return [f"processes survived the evaluator's SIGKILL: {kill_marked(marker)}"]
    return [f"left on the host: {os.listdir(tmp_dir)}"] if os.listdir(tmp_dir) else []


def _report(res) -> list | None:
    if "REPORT:" not in res.reason:
        return None
    return json.loads(res.reason.split("REPORT:", 1)[1].rsplit(" (test.py:", 1)[0])


def run_suite(workdir: str, **kwargs) -> dict:
    """Every attack in one batch. Returns {"problems": [what worked], "isolation": ..., "uid": ...}."""
    problems = []
    canary_dir = os.path.join(workdir, "canaries")
    os.mkdir(canary_dir)
    with open(os.path.join(canary_dir, "canary.txt"), "w") as f:
        f.write("s3cr3t-file-" + secrets.token_hex(8))
    secret = "s3cr3t-env-" + secrets.token_hex(8)
    os.environ["REMIX_SANDBOX_CANARY"] = secret
    marker = "remix-marker-" + secrets.token_hex(8)
    abstract = "remix-canary-" + secrets.token_hex(8)
    server, unix_server = socket.socket(), socket.socket(socket.AF_UNIX)
    server.bind(("127.0.0.1", 0))
    unix_server.bind("\0" + abstract)
    for s in (server, unix_server):
        s.listen(8)
        s.setblocking(False)
    iso = isolation_programs(canary_dir, server.getsockname()[1], abstract, marker)
    jobs = [sandbox.SandboxJob(PROMPT + comp, "add", test, PROMPT) for comp, test in FALSE_PASS.values()]
    jobs += [sandbox.SandboxJob(PROMPT + RIGHT, "add", TEST, PROMPT), sandbox.SandboxJob(PROMPT + WRONG, "add", TEST,
                                                                                          PROMPT)]
    jobs += [sandbox.SandboxJob(src, "f", REPORT_TEST) for src in iso.values()]
    try:
        results = sandbox.run_tests(jobs, LIMITS, workers=8, **kwargs)
        for s in (server, unix_server):
            try:
                s.accept()
                problems.append(f"a program connected to the host's {s.family.name} server")
            except BlockingIOError:
                pass
    finally:
        server.close()
        unix_server.close()
        del os.environ["REMIX_SANDBOX_CANARY"]
    names = list(FALSE_PASS) + ["right", "wrong"] + list(iso)
    n = len(FALSE_PASS)
    fp, (right, wrong), rest = results[:n], results[n:n + 2], dict(zip(iso, results[n + 2:], strict=True))
    for name, res in zip(FALSE_PASS, fp, strict=True):
        want = "timeout" if name in ("signal_handlers_exit_0", "hang") else "failed"
        if res.status != want or EXPECTED[name] not in res.reason:
            problems.append(f"false pass trick {name}: {res.status} ({res.reason[:300]}), expected {want} "
                            f"({EXPECTED[name]})")
    if not right.passed or wrong.status != "failed" or "test.py:2" not in wrong.reason:
        problems.append(f"controls: right {right.status} ({right.reason}), wrong {wrong.status} ({wrong.reason})")
    expect = {"processes": [], "files": [], "network": [], "kill_scorer": [], "secrets": [], "privileges": [],
              "memory": ["MemoryError"], "big_file": ["errno 27"]}  # EFBIG
    for name, want in expect.items():
        got = _report(rest[name])
        if got != want:
            problems.append(f"{name}: expected report {want}, got {got} ({rest[name].status}: {rest[name].reason})")
    forked = _report(rest["fork_bomb"])
    if not forked or not int(forked[0].split()[1]) < LIMITS.max_processes:
        problems.append(f"fork bomb not bounded: {rest['fork_bomb'].reason[:300]}")
    filled = _report(rest["fill_disk"])
    if not filled or int(filled[0].split()[1]) > LIMITS.tmpfs_bytes or filled[0].split()[3] not in ("27", "28"):
        problems.append(f"disk not bounded: {rest['fill_disk'].reason[:300]}")
    if rest["cpu_burn"].status not in ("timeout", "failed"):
        problems.append(f"cpu burn: {rest['cpu_burn']}")
    for name, res in zip(names, results, strict=True):
        if secret in res.stdout + res.stderr + res.reason or "s3cr3t-file" in res.stdout + res.stderr + res.reason:
            problems.append(f"{name}: a secret reached the evaluator")
    with open(os.path.join(canary_dir, "canary.txt")) as f:
        if not f.read().startswith("s3cr3t-file-"):
            problems.append("canary file changed")
    if os.listdir(canary_dir) != ["canary.txt"]:
        problems.append(f"files appeared beside the canary: {os.listdir(canary_dir)}")
    for path in ("/etc/remix_sandbox_intruder", "/usr/remix_sandbox_intruder", "/intruder", "/usr/intruder"):
        if os.path.exists(path):
            problems.append(f"{path} was created")
    if not os.path.exists("/usr/bin/env"):
        problems.append("/usr/bin/env was removed")
    if marker_pids(marker):
        problems.append(f"processes of a program survived: {marker_pids(marker)}")
    return {"problems": problems, "isolation": sorted({r.isolation for r in results}), "uid": os.getuid(),
            "statuses": {name: r.status for name, r in zip(names, results, strict=True)}}


def naive_exit_status(completion: str, test: str) -> int:
    """Exit status of the program under a harness that trusts it (the old one), run unsandboxed."""
    source = PROMPT + completion + "\n" + test + "\ncheck(add)\n"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "program.py"), "w") as f:
            f.write(source)
        return subprocess.run([sys.executable, "-I", "program.py"], cwd=d, capture_output=True, timeout=30).returncode


def test_tricks_pass_a_naive_harness():
    """The attacks are real: under exit-status scoring each of these wrong solutions counts as correct."""
    passed = {name: naive_exit_status(*FALSE_PASS[name]) == 0 for name in NAIVE_PASSES}
    assert passed == dict.fromkeys(NAIVE_PASSES, True)
    assert naive_exit_status(WRONG, TEST) != 0 and naive_exit_status(RIGHT, TEST) == 0


def test_attack_suite(tmp_path):
    report = run_suite(str(tmp_path))
    assert report["problems"] == [], report
    caps = sandbox.sandbox_capabilities()
    assert report["isolation"] == [caps["isolation"]] and caps["isolation"].startswith("namespaces")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as empty:
        result = run_suite(d)
        result["problems"] += sigkill_scenario(empty)
        print(json.dumps(result))
