"""JAX's persistent compilation cache for the entry points: a program compiled once (the train step, the
evaluation's scoring and generation programs) is read back from disk by every later process that builds the same
program (the next seed of a sweep, a resumed run, an evaluation of a finished run), instead of compiling it again.

JAX keys each entry by the program, the compile options, the devices, the XLA flags and the jax/jaxlib versions,
so a hit returns the executable a fresh compilation would build; a changed config that changes the program (shapes,
method, remat, layer-loop unroll) misses and compiles. Where the cache goes, in this order:

- ``$JAX_COMPILATION_CACHE_DIR`` set: JAX's own setting, used as it is (this module changes nothing);
- ``$REMIX_COMPILATION_CACHE``: a folder, or ``0`` / ``off`` / empty to compile every program afresh;
- otherwise ``$XDG_CACHE_HOME/remix_jax/jax`` (``~/.cache/remix_jax/jax``).

Only programs that took at least ``jax_persistent_cache_min_compile_time_secs`` (JAX's default, 1 s) are written,
so the folder holds the programs whose compilation is worth skipping. It is capped at
``$REMIX_COMPILATION_CACHE_MAX_GB`` (default 8; JAX evicts the least recently used entries beyond it; -1 for no
cap). Deleting the folder is always safe.
"""

from __future__ import annotations

import os

DEFAULT_MAX_GB = 8.0
_OFF = ("0", "off", "false", "no", "")


def cache_dir(environ=os.environ) -> str | None:
    """The folder this process should cache compiled programs in, or None (JAX's own setting is in force, or the
    cache is off)."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if "REMIX_COMPILATION_CACHE" in environ:
        value = environ["REMIX_COMPILATION_CACHE"].strip()
        return None if value.lower() in _OFF else os.path.expanduser(value)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "remix_jax", "jax")


def max_bytes(environ=os.environ) -> int:
    """The cache's size cap in bytes from $REMIX_COMPILATION_CACHE_MAX_GB (-1: no cap)."""
    raw = environ.get("REMIX_COMPILATION_CACHE_MAX_GB", "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        raise ValueError(f"$REMIX_COMPILATION_CACHE_MAX_GB={raw!r}: expected a number of GiB (-1 for no cap)") from None
    return -1 if gb < 0 else int(gb * 2**30)


def enable(environ=os.environ) -> str | None:
    """Point JAX's persistent compilation cache at ``cache_dir()`` (before the first compilation; later calls
    change nothing once a folder is set). Returns the folder, or None when JAX's own setting or the off switch
    applies. A folder that cannot be created, or a size cap that is not a number, leaves the cache off with a
    one-line warning: compiling is never blocked by the cache."""
    import jax

    path = cache_dir(environ)
    if path is None:
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    try:
        cap = max_bytes(environ)
        os.makedirs(path, exist_ok=True)
    except ValueError as e:
        print(f"warning: compilation cache off: {e}", flush=True)
        return None
    except OSError as e:
        print(f"warning: compilation cache off: cannot create {path} ({e.strerror or e}); "
              "set REMIX_COMPILATION_CACHE to another folder, or to 0", flush=True)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", cap)
    return path
