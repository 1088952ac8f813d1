"""remix_jax/cpu_memory.py: the opt-in glibc settings under which a freed large buffer stays mapped for reuse.
Each case runs in a fresh interpreter (malloc settings are per process and cannot be undone)."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")

PROBE = textwrap.dedent("""
    import ctypes, os, sys
    from remix_jax import cpu_memory
    {before}
    arena = cpu_memory.single_arena()
    kept = cpu_memory.keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
    start = rss()
    n = 256 << 20
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)  # touch every page
    libc.free(p)
    print(arena, kept, (rss() - start) >> 20)
""")


def _probe(env: dict, before: str = "") -> tuple[bool, bool, int]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


def test_off_by_default_and_a_freed_block_goes_back_to_the_system():
    arena, kept, resident_mib = _probe({})
    assert (arena, kept) == (False, False)
    assert resident_mib < 64  # glibc served the 256 MiB block with its own mapping and unmapped it on free


def test_opt_in_keeps_a_freed_block_mapped():
    arena, kept, resident_mib = _probe({"REMIX_CPU_MALLOC": "1"})
    assert (arena, kept) == (True, True)
    assert resident_mib >= 200  # the block came from the heap, which is never trimmed: its pages stay for reuse


def test_not_applied_after_jax_is_imported_or_off_the_cpu():
    assert _probe({"REMIX_CPU_MALLOC": "1"}, before="import jax")[:2] == (False, False)
    assert _probe({"REMIX_CPU_MALLOC": "1", "JAX_PLATFORMS": "cuda,cpu"})[:2] == (False, False)
