"""Every process of a program dies with its run: on timeout, on Ctrl-C and on SIGKILL of the evaluator; the
isolated sandbox writes nothing to the host, and the directories of unisolated runs that a killed evaluator
left behind are removed by the next run's cleanup. Processes are found by a unique marker in their command
line (the program's entry point name, and the argv of the detached processes it starts)."""

import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from remix_jax.evaluation import sandbox, sandbox_seccomp
from tests.evaluation.test_sandbox_attacks import (
    kill_marked,
    marker_pids,
    sigkill_scenario,
    spawning_program,
    start_evaluator,
    wait_until,
)

CALL_TEST = "def check(candidate):\n    candidate()\n"


def wait_for(predicate, what: str, limit_s: float = 120.0):
    if not wait_until(predicate, limit_s):
        pytest.fail(f"gave up waiting for {what}")


@pytest.fixture
def marker():
    m = "remix_marker_" + secrets.token_hex(6)
    yield m
    assert kill_marked(m) == [], "processes of a program were still alive at the end of the test"


@pytest.fixture(scope="module")
def caps():
    c = sandbox.sandbox_capabilities()
    if not c["isolated"]:
        pytest.skip(f"UNAVAILABLE: programs cannot be isolated on this machine: {c['note']}")
    return c


def test_timeout_kills_detached_processes(caps, marker):
    res = sandbox.run_test(sandbox.SandboxJob(spawning_program(marker), marker, CALL_TEST),
                           sandbox.SandboxLimits(timeout_s=3.0))
    assert res.status == "timeout" and res.reason.startswith("the test did not finish within ")
    assert marker_pids(marker) == []  # the verdict is written only after the namespace's init was reaped


def test_sigkill_of_the_evaluator_kills_every_program_process(caps, tmp_path):
    assert sigkill_scenario(str(tmp_path)) == []  # no marked process survives; nothing left in TMPDIR


def test_ctrl_c_stops_every_program(caps, marker, tmp_path):
    ev = start_evaluator(marker, "isolated", spawning_program(marker), str(tmp_path))
    wait_for(lambda: len(marker_pids(marker)) >= 6, "both programs and their 4 detached sleepers")
    masks = {k: int(v, 16) for k, v in (line.split(":") for line in open(f"/proc/{ev.pid}/status")
                                        if line.startswith(("SigIgn", "SigCgt")))}
    assert masks["SigCgt"] & (1 << (signal.SIGINT - 1)), f"the evaluator does not catch SIGINT: {masks}"
    ev.send_signal(signal.SIGINT)
    _, err = ev.communicate(timeout=120)
    assert ev.returncode != 0 and "KeyboardInterrupt" in err
    wait_for(lambda: marker_pids(marker) == [], "every marked process to die after Ctrl-C", 30)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def open_tmp():
    """A temporary directory that other users can traverse (unisolated programs run as another uid as root)."""
    d = tempfile.mkdtemp(prefix="remix-lifecycle-")
    os.chmod(d, 0o711)
    yield pathlib.Path(d)
    shutil.rmtree(d)


@pytest.mark.skipif(not sandbox_seccomp.supported(), reason="needs the seccomp filter to take namespaces away")
def test_directories_of_a_killed_unisolated_run_are_cleaned_up(marker, open_tmp):
    tmp_path = open_tmp
    program = f"import time\n\ndef {marker}():\n    time.sleep(3600)\n"  # the guard forbids fork there anyway
    ev = start_evaluator(marker, "unisolated", program, str(tmp_path))
    wait_for(lambda: len(marker_pids(marker)) >= 2, "both unisolated programs")
    left = [d for d in os.listdir(tmp_path) if d.startswith(f"remix-sandbox-{ev.pid}-")]
    assert len(left) == 1 and sorted(os.listdir(tmp_path / left[0])) == ["0", "1"]
    ev.kill()
    ev.wait()
    wait_for(lambda: marker_pids(marker) == [], "the unisolated programs to die with their launchers", 30)
    assert os.listdir(tmp_path) == left  # a SIGKILLed evaluator cannot clean up ...
    assert sandbox.cleanup_stale(str(tmp_path)) == left and os.listdir(tmp_path) == []  # ... the next run does


def test_cleanup_stale_removes_only_dead_owners(tmp_path):
    me = os.getpid()
    start = sandbox._start_time(me)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    names = {
        f"remix-sandbox-{me}-{start}-live": True,
        f"remix-sandbox-{me}-{start + 1}-reused": False,  # same pid, another process (start time differs)
        f"remix-sandbox-{dead}-{start}-dead": sandbox._start_time(dead) == start,
        "remix-sandbox-notapid-x": True,
        "unrelated": True,
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    removed = sandbox.cleanup_stale(str(tmp_path))
    assert sorted(removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, keep in names.items() if keep)
