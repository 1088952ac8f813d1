"""glibc malloc settings for training on the CPU backend: the train step's freed buffers are kept for its next call.

XLA's CPU runtime allocates a compiled program's temporary buffer (the quickstart's train step: 2.3 GiB) afresh at
every execution and frees it after. glibc serves an allocation that large with a new ``mmap`` and unmaps it on
``free``, so every step touches 600,000 fresh pages: each a page fault and a zeroed page (on a 2-core CPU about
1.5 s of system time a step, against 9 to 10 s of CPU time for the step's own work: the quickstart's run spent 96 s
in the kernel, 44 s with the settings below). Two calls change that, for a training run started by
``python -m remix_jax.main`` with ``REMIX_CPU_MALLOC=1`` only (tests and library users are left alone):

- ``single_arena`` (the entry point, before jax is imported, when the process will run on the CPU): M_ARENA_MAX 1,
  every thread allocates from the main heap (a thread's own arena maps a block this large separately whatever the
  settings). It must come before any thread allocates.
- ``keep_freed_memory`` (the training loop, before its first step, once the model is loaded and the step
  compiled): M_MMAP_MAX 0 (no allocation gets its own mapping) and M_TRIM_THRESHOLD -1 (the heap is never shrunk),
  so the step's buffers stay mapped once freed and the next step gets the same pages back. Only after
  single_arena; the loading of the model and the step-0 evaluation keep glibc's defaults (their freed buffers go
  back to the system), so the process's peak memory is what the steps need.

"Runs on the CPU": ``JAX_PLATFORMS`` names cpu first, or (unset) the host has no GPU or TPU device file. Linux with
glibc only, and only when ``REMIX_CPU_MALLOC=1`` is set: the kept pages stay resident, so the quickstart's peak
memory is 8.9 GB with it against 4.3 GB without (for about 7% less CPU time), too much for a small machine to be
the default.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
ACCELERATOR_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio")
_STATE = {"single_arena": False, "kept": False}


def cpu_only() -> bool:
    """Whether jax will run on its CPU backend: JAX_PLATFORMS names cpu first, or (unset) this host has no GPU or
    TPU device file."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(os.path.exists(p) for p in ACCELERATOR_DEVICES)


def _mallopt():
    if os.environ.get("REMIX_CPU_MALLOC", "0") != "1" or not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def single_arena() -> bool:
    """M_ARENA_MAX 1 when the process will run on the CPU and jax is not imported yet; whether it was set."""
    if "jax" in sys.modules or not cpu_only() or (mallopt := _mallopt()) is None:
        return False
    _STATE["single_arena"] = mallopt(M_ARENA_MAX, 1) == 1
    return _STATE["single_arena"]


def keep_freed_memory() -> bool:
    """M_MMAP_MAX 0 and M_TRIM_THRESHOLD -1 after ``single_arena`` (else nothing); whether they are set."""
    if _STATE["kept"] or not _STATE["single_arena"] or (mallopt := _mallopt()) is None:
        return _STATE["kept"]
    _STATE["kept"] = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _STATE["kept"]
