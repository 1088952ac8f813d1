"""How many seconds this process has spent compiling: the part of a phase's wall time that went to building
programs rather than running them.

JAX reports each program it builds through ``jax.monitoring``: the lowering to StableHLO
(``/jax/core/compile/jaxpr_to_mlir_module_duration``) and XLA's compilation
(``/jax/core/compile/backend_compile_duration``; a persistent-cache hit counts as the time it took to read the
executable). ``install`` registers one listener that adds both up (tracing is left out: its events nest when one
jitted function calls another). ``seconds()`` is the running total and ``programs()`` the number of XLA
compilations; the difference of two readings is what was compiled between them, on any thread of the process.

    c0 = compile_clock.seconds()
    ...  # work
    compiling = compile_clock.seconds() - c0
"""

from __future__ import annotations

import threading

import jax

EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")
_BACKEND = EVENTS[1]

_lock = threading.Lock()
_state = {"seconds": 0.0, "programs": 0, "installed": False}


def _listener(event: str, duration_secs: float, **_) -> None:
    if event in EVENTS:
        with _lock:
            _state["seconds"] += float(duration_secs)
            _state["programs"] += event == _BACKEND


def install() -> None:
    """Start counting (once per process; later calls do nothing)."""
    with _lock:
        if _state["installed"]:
            return
        _state["installed"] = True
    jax.monitoring.register_event_duration_secs_listener(_listener)


def seconds() -> float:
    """Seconds spent lowering and compiling since ``install`` (0.0 before it)."""
    install()
    return _state["seconds"]


def programs() -> int:
    """XLA compilations (persistent-cache hits included) since ``install``."""
    install()
    return _state["programs"]
