"""Progress bars for long waits outside the training loop (model loading, evaluation, generation).

A bar (tqdm: count / total, rate, ETA) is drawn only where someone watches: when the caller asks for it
(``train.progress`` of the run's config; the CLIs), stderr is a terminal, ``REMIX_PROGRESS`` is not "0", and this
is process 0 of a multi-host job. Otherwise ``bar`` returns a no-op object, so nothing reaches log files.
Imports nothing of the package (models and evaluation use it).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled(requested: bool = True) -> bool:
    """Whether to draw bars (see the module docstring)."""
    if not requested or os.environ.get("REMIX_PROGRESS", "1").lower() in ("0", "false", "no"):
        return False
    try:
        if not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


class _NoBar:
    def update(self, n: float = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: float | None, desc: str, unit: str, requested: bool = True) -> Any:
    """A tqdm bar on stderr (``update(n)`` adds n, which may be fractional), or a no-op one."""
    if not enabled(requested):
        return _NoBar()
    from tqdm import tqdm

    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr,
                bar_format=fmt if total else None)


def note(message: str, requested: bool = True) -> None:
    """One status line on stderr, under the same conditions as a bar."""
    if enabled(requested):
        print(message, file=sys.stderr, flush=True)
