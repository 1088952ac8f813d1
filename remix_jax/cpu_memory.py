"""glibc malloc settings for runs on the CPU backend: keep freed memory for reuse instead of returning it.

XLA's CPU runtime allocates a compiled program's temporary buffer (the quickstart's train step: 2.3 GiB) afresh at
every execution and frees it after. glibc serves an allocation that large with a new ``mmap`` and unmaps it on
``free``, so every step touches 600,000 fresh pages: each a page fault and a zeroed page (about a sixth of the
quickstart's step time on a 2-core CPU, most of it system time). ``reuse_freed_memory`` sets three malloc
parameters (``mallopt``) so that such blocks come from the main heap and stay there once freed: the next
execution gets the same, already mapped pages back.

    M_ARENA_MAX 1          every thread allocates from the main arena (a thread's own arena would map a block this
                           large separately whatever the other settings)
    M_MMAP_MAX 0           no allocation is served by its own mmap
    M_TRIM_THRESHOLD -1    the heap is never shrunk

The process's resident memory then stays at its peak instead of falling between executions. Only for processes
that run on the CPU (``JAX_PLATFORMS`` names cpu first, or no accelerator device is present), on Linux with glibc,
called before any thread allocates (M_ARENA_MAX applies to threads that have not allocated yet), i.e. before jax is
imported; ``REMIX_CPU_MALLOC=0`` leaves malloc as it is. The entry points call it (``remix_jax.main``,
``remix_jax.evaluate``).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
ACCELERATOR_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio")
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))


def cpu_only() -> bool:
    """Whether jax will run on its CPU backend: JAX_PLATFORMS names cpu first, or (unset) this host has no GPU or
    TPU device file."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(os.path.exists(p) for p in ACCELERATOR_DEVICES)


def reuse_freed_memory() -> bool:
    """Apply the settings above when the process runs on the CPU (see the module docstring); whether they were."""
    if (os.environ.get("REMIX_CPU_MALLOC", "1") == "0" or not sys.platform.startswith("linux")
            or "jax" in sys.modules or not cpu_only()):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
